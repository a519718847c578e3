"""A port's own tensors against a reference's probe file (``refgen compare``): the porter's loop.

The port writes a safetensors file (any float dtype, no metadata needed) holding any subset of
the reference's tensors, under refgen's names or its own through a name map
(:mod:`refgen.compare.namemap`). Each tensor is widened to float64 and measured against the
reference (:mod:`refgen.compare.metrics`), as a whole and per position; it is judged against
the reference's own rounding error when the probe file records one, else against a per-dtype
NMSE band (:mod:`refgen.compare.verdict`). Per prompt, the tensors are walked in the model's
order (embedding, then each decoder layer's modules and output, the final norm, the logits),
and the verdict names the first one beyond tolerance: where the port departs from transformers,
not merely the first bit that differs.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from refgen import probes
from refgen.compare import metrics as m
from refgen.compare import namemap
from refgen.compare.probefiles import integers
from refgen.compare.report import json_safe
from refgen.compare.verdict import (
    DTYPE_NAMES,
    FLOOR_FACTOR,
    Allowance,
    allowance,
    dtype_code,
)
from refgen.errors import CompareError, ExitCode
from refgen.text import shorten

_HIDDEN = re.compile(r"^hidden_states\.layer(\d+)$")
_LAYER_MODULE = re.compile(r"^module\.(?P<stack>(?:.+\.)?layers)\.(?P<k>\d+)(?:\.(?P<sub>.+))?$")
_SUB_ORDER = {"input_layernorm": 10, "self_attn": 20, "post_attention_layernorm": 30, "mlp": 40}
_FINAL_NORMS = ("module.model.norm", "module.norm")
IDS = "input_ids"


@dataclass(frozen=True)
class TensorVerdict:
    """One port tensor measured against the reference tensor it stands for."""

    prompt: int
    name: str  # refgen's name without the prompt prefix (what the port tensor stands for)
    where: str  # for people: "hidden_states.layer3 (output of model.layers.2)"
    port_name: str
    reference_name: str  # the reference tensor compared (an alias of *name* when it lacks it)
    port_dtype: str
    within: bool
    problem: str | None = None  # why the tensor could not be compared (then not within)
    metrics: m.Metrics | None = None
    allowance: Allowance | None = None
    ratio: float = math.nan
    positions: tuple[m.Metrics, ...] = ()
    positions_ratio: tuple[float, ...] = ()
    positions_within: tuple[bool, ...] = ()
    logits: m.LogitMetrics | None = None
    note: str | None = None

    def headline(self) -> str:
        """``hidden_states.layer3 (output of model.layers.2): 4.2e+05x the float32 rounding,
        NMSE 1.2e-02 (-19.2 dB), cosine 0.565``."""
        if self.problem is not None or self.metrics is None or self.allowance is None:
            return f"{self.where}: {self.problem}"
        mt = self.metrics
        return (
            f"{self.where}: {self.allowance.describe(self.ratio)}, NMSE {mt.nmse:.2g} "
            f"({mt.nmse_db:.1f} dB), cosine {mt.cosine:.8f}, max abs {mt.max_abs:.3g}"
        )


@dataclass(frozen=True)
class PromptVerdict:
    """One prompt: its tensors in the model's order and the first beyond tolerance."""

    prompt: int
    text: str | None
    tensors: tuple[TensorVerdict, ...]
    first: TensorVerdict | None  # the first tensor beyond tolerance, None: all within
    input_ids: str | None  # None: not compared; "identical"; or what differs

    @property
    def diverged(self) -> bool:
        return self.first is not None or self.input_ids not in (None, "identical")


@dataclass(frozen=True)
class PortComparison:
    """The result of ``refgen compare``."""

    reference: str
    port: str
    name_map: str
    reference_dtype: str
    floor: str | None  # "float32 against float64" when the reference records its rounding
    prompts: tuple[PromptVerdict, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def diverged(self) -> bool:
        return any(p.diverged for p in self.prompts)

    @property
    def exit_code(self) -> int:
        return int(ExitCode.DIVERGED if self.diverged else ExitCode.OK)

    @property
    def compared(self) -> int:
        return sum(len(p.tensors) for p in self.prompts)

    def summary(self) -> str:
        """The one line printed first: the first divergence of the earliest prompt, or within."""
        if not self.diverged:
            notes = f"; {len(self.notes)} note(s) below" if self.notes else ""
            return (
                f"WITHIN TOLERANCE: {self.compared} tensor(s) of {len(self.prompts)} prompt(s) "
                f"compared, every one within ({self.rule()}){notes}"
            )
        for p in self.prompts:
            if p.input_ids not in (None, "identical"):
                return f"DIVERGED: prompt {p.prompt}: the port's input ids differ ({p.input_ids})"
            if p.first is not None:
                before = p.tensors.index(p.first)  # all within: it is the first that is not
                within = f"; the {before} tensor(s) before it within" if before else ""
                return f"DIVERGED: prompt {p.prompt} first at {p.first.headline()}{within}"
        raise AssertionError("diverged without a first divergence")

    def rule(self) -> str:
        for p in self.prompts:
            for t in p.tensors:
                if t.allowance is not None:
                    return t.allowance.rule()
        return "no tensor compared"

    def render(self, positions: int = 12) -> str:
        """The human report: summary, then per prompt every tensor in order."""
        lines = [self.summary(), ""]
        lines.append(f"reference: {self.reference} ({DTYPE_NAMES.get(self.reference_dtype)})")
        lines.append(f"port:      {self.port} (names: {self.name_map})")
        floor = f"recorded, {self.floor}" if self.floor else "none recorded: per-dtype defaults"
        lines.append(f"tolerance: {self.rule()}; rounding floor {floor}")
        header = f"  {'tensor':<48} {'vs tolerance':>30} {'NMSE':>9} {'dB':>7} {'cosine':>11}"
        for p in self.prompts:
            first = f"first divergence at {p.first.where}" if p.first else "all within"
            lines += ["", f"prompt {p.prompt} ({shorten(p.text)}): {first}"]
            if p.input_ids is not None:
                lines.append(f"  input ids: {p.input_ids}")
            lines.append(header + "  verdict")
            for t in p.tensors:
                lines.append(_row(t, t is p.first))
                if t.logits is not None:
                    lines.append("      " + _logit_line(t.logits))
            if p.first is not None and p.first.positions:
                lines.append(f"  per position of {p.first.where} (ratio, * beyond):")
                shown = [
                    f"{i}:{_ratio(r)}{'' if ok else '*'}"
                    for i, (r, ok) in enumerate(
                        zip(p.first.positions_ratio, p.first.positions_within, strict=True)
                    )
                ]
                for start in range(0, len(shown), positions):
                    lines.append("    " + "  ".join(shown[start : start + positions]))
        if self.notes:
            lines += ["", "Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["diverged"] = self.diverged
        data["exit_code"] = self.exit_code
        data["summary"] = self.summary()
        data["tolerance"] = self.rule()
        for p, pj in zip(self.prompts, data["prompts"], strict=True):
            pj["first_divergence"] = p.first.name if p.first is not None else None
            for t, tj in zip(p.tensors, pj["tensors"], strict=True):
                if t.metrics is not None:
                    tj["metrics"]["nmse_db"] = t.metrics.nmse_db
        safe: dict[str, Any] = json_safe(data)
        return safe


def _ratio(r: float) -> str:
    return "-" if math.isnan(r) else f"{r:.2g}" if r < 100 else f"{r:.0e}"


def _row(t: TensorVerdict, first: bool) -> str:
    mark = "BEYOND" if not t.within else "within"
    if first:
        mark += "  <- first divergence"
    if t.metrics is None or t.allowance is None:
        return f"  {t.where:<48} {t.problem or '':>30}  {mark}"
    mt = t.metrics
    return (
        f"  {t.where:<48} {t.allowance.describe(t.ratio):>30} {mt.nmse:>9.2g} "
        f"{mt.nmse_db:>7.1f} {mt.cosine:>11.8f}  {mark}"
    )


def _logit_line(lg: m.LogitMetrics) -> str:
    rows = len(lg.top1_agree)
    top1 = sum(lg.top1_agree)
    overlap = min(lg.topk_overlap)
    candle = sum(lg.candle_mi)
    return (
        f"top-1 agrees at {top1}/{rows} position(s); top-{m.TOP_K} overlap >= {overlap:.0%}; "
        f"candle-mi criterion (top-{m.TOP_K} identical, |dlogit| <= "
        f"{m.CANDLE_MI_LOGIT_TOLERANCE:g}) holds at {candle}/{rows}"
    )


# --- the walk -------------------------------------------------------------------------------------


def _stage(name: str, num_layers: int) -> tuple[int, int, str]:
    """Where a tensor sits in the forward: (residual index, order inside the layer, name)."""
    hidden = _HIDDEN.match(name)
    if hidden is not None:
        j = int(hidden.group(1))
        return (j, 95 if j >= num_layers else 90, "")
    layer = _LAYER_MODULE.match(name)
    if layer is not None:
        k = int(layer.group("k"))
        sub = layer.group("sub")
        if sub is None:
            return (k + 1, 90, "")
        return (k + 1, _SUB_ORDER.get(sub.split(".")[0], 50), sub)
    if name in _FINAL_NORMS:
        return (num_layers, 95, "")
    if name.startswith("module.") and name.endswith("embed_tokens"):
        return (0, 90, "")
    if name.startswith("logits."):
        return (1 << 30, 0, name)
    return ((1 << 30) + 1, 0, name)


def describe(name: str, num_layers: int) -> str:
    """A tensor's place for people, with transformers' numbering spelled out."""
    hidden = _HIDDEN.match(name)
    if hidden is not None:
        j = int(hidden.group(1))
        if j == 0:
            return f"{name} (embedding output)"
        if j >= num_layers:
            return f"{name} (final norm output)"
        return f"{name} (output of model.layers.{j - 1})"
    if name.startswith("module."):
        return name.removeprefix("module.")
    if name == "logits.last":
        return "logits.last (last position)"
    return name


def _aliases(name: str, num_layers: int) -> list[str]:
    """Other reference names holding the same values (transformers' hidden state j is decoder
    layer j-1's raw output, except the last one, which is the final norm's output)."""
    hidden = _HIDDEN.match(name)
    if hidden is not None:
        j = int(hidden.group(1))
        if 1 <= j < num_layers:
            return [f"module.model.layers.{j - 1}"]
        if j == num_layers:
            return list(_FINAL_NORMS)
        return []
    layer = re.fullmatch(r"module\.model\.layers\.(\d+)", name)
    if layer is not None and int(layer.group(1)) + 1 < num_layers:
        return [f"hidden_states.layer{int(layer.group(1)) + 1}"]
    if name in _FINAL_NORMS:
        return [f"hidden_states.layer{num_layers}"]
    if name == "logits.last":
        return ["logits.all"]
    if name == "logits.all":
        return ["logits.last"]
    return []


@dataclass(frozen=True)
class _Reference:
    file: probes.ProbeFile
    num_layers: int
    floor: dict[str, Any]  # tensor name -> its rounding-floor entry ({} without a record)
    floor_dtype: str | None
    prompts: list[str]


def _load_reference(path: Path) -> tuple[Path, _Reference]:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise CompareError(
            f"the reference {path} {what}; pass a reference's X.json (with X.safetensors "
            "beside it) or the X.safetensors itself."
        )
    if path.suffix == ".json":
        tensors = probes.probe_path(path)
        if not tensors.is_file():
            raise CompareError(
                f"{path} has no probe file beside it ({tensors.name}): a port is compared with "
                "a reference's tensors. Add a [probes] table to its spec and generate it again."
            )
        path = tensors
    try:
        file = probes.read(path)
    except probes.ProbeFileError as exc:
        raise CompareError(f"the reference {exc}") from None
    meta = file.metadata
    num_layers = meta.get("num_layers")
    if not isinstance(num_layers, int) or num_layers < 0:
        hidden = re.compile(r"\.hidden_states\.layer(\d+)$")
        found = [int(h.group(1)) for n in file.tensors if (h := hidden.search(n))]
        num_layers = max(found, default=0)
    record = meta.get("rounding_floor")
    floor: dict[str, Any] = {}
    floor_dtype = None
    if isinstance(record, dict) and isinstance(record.get("tensors"), dict):
        floor = record["tensors"]
        floor_dtype = dtype_code(str(record.get("dtype", "")))
    prompts = meta.get("prompts")
    texts = [p for p in prompts if isinstance(p, str)] if isinstance(prompts, list) else []
    return path, _Reference(file, num_layers, floor, floor_dtype, texts)


def _floor_entry(ref: _Reference, ref_name: str) -> dict[str, Any] | None:
    """The rounding-floor entry of a reference tensor; for its last row (``NAME[-1]``), the
    entry's last position."""
    base = ref_name.removesuffix("[-1]")
    entry = ref.floor.get(base)
    if not isinstance(entry, dict) or not _number(entry.get("err_rms")):
        return None  # no entry, or a damaged one (null where the run was not finite)
    if base == ref_name:
        return entry
    rows = entry.get("positions_err_rms")
    if not isinstance(rows, list) or not rows or not _number(rows[-1]):
        return None
    return {"err_rms": float(rows[-1]), "positions_err_rms": [float(rows[-1])]}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def compare_port(
    reference: Path,
    port: Path,
    *,
    names: namemap.NameMap = namemap.IDENTITY,
    prompt: int = 0,
    factor: float = FLOOR_FACTOR,
) -> PortComparison:
    """Compare the port's dump *port* with the reference (``X.json`` or ``X.safetensors``)."""
    ref_path, ref = _load_reference(reference)
    try:
        dump = probes.read(port)
    except probes.ProbeFileError as exc:
        raise CompareError(f"the port's dump {exc}") from None
    prompt_count = _prompt_count(ref)
    if not 0 <= prompt < max(prompt_count, 1):
        raise CompareError(
            f"--prompt {prompt}: the reference has {prompt_count} prompt(s), numbered from 0"
        )
    notes: list[str] = []
    by_prompt: dict[int, list[TensorVerdict]] = {}
    ids: dict[int, str] = {}
    seen: dict[tuple[int, str], str] = {}
    for port_name in sorted(dump.tensors):
        found = namemap.resolve(names, port_name, prompt)
        if found is None:
            notes.append(f"{port_name}: matches no line of the name map; not compared")
            continue
        p, name = found
        if (p, name) in seen:
            notes.append(
                f"{port_name}: stands for prompt{p}.{name} like {seen[p, name]}; not compared twice"
            )
            continue
        seen[p, name] = port_name
        tensor = dump.tensors[port_name]
        if name == IDS:
            outcome = _compare_ids(ref, p, port_name, tensor, notes)
            if outcome is not None:
                ids[p] = outcome
            continue
        verdict = _compare_tensor(ref, p, name, port_name, tensor, factor, notes)
        if verdict is not None:
            by_prompt.setdefault(p, []).append(verdict)
    if not by_prompt and not ids:
        raise CompareError(
            f"nothing to compare: none of the {len(dump.tensors)} tensor(s) of {port.name} "
            f"names a tensor of {ref_path.name} "
            + (
                f"(first: {sorted(dump.tensors)[:3]}). Name them as the reference does "
                "(the README's 'For porters' lists the names), or pass --map."
                if dump.tensors
                else "(the dump is empty)."
            )
        )
    results = []
    for p in sorted(set(by_prompt) | set(ids)):
        tensors = sorted(by_prompt.get(p, []), key=lambda t: _stage(t.name, ref.num_layers))
        first = next((t for t in tensors if not t.within), None)
        text = ref.prompts[p] if p < len(ref.prompts) else None
        results.append(PromptVerdict(p, text, tuple(tensors), first, ids.get(p)))
    ref_dtype = _reference_dtype(ref)
    floor = (
        f"{DTYPE_NAMES.get(ref.floor_dtype, ref.floor_dtype)} against float64"
        if ref.floor_dtype
        else None
    )
    return PortComparison(
        reference=str(ref_path),
        port=str(port),
        name_map=names.source,
        reference_dtype=ref_dtype,
        floor=floor,
        prompts=tuple(results),
        notes=tuple(notes),
    )


def _prompt_count(ref: _Reference) -> int:
    if ref.prompts:
        return len(ref.prompts)
    found = {int(n[6:].split(".")[0]) for n in ref.file.tensors if re.match(r"prompt\d+\.", n)}
    return max(found, default=-1) + 1


def _reference_dtype(ref: _Reference) -> str:
    dtypes = {t.dtype for t in ref.file.tensors.values() if t.dtype in DTYPE_NAMES}
    return dtypes.pop() if len(dtypes) == 1 else "F32"


def _compare_ids(
    ref: _Reference, p: int, port_name: str, tensor: probes.ProbeTensor, notes: list[str]
) -> str | None:
    """ "identical", or how the port's ids differ; None (and a note) when not comparable."""
    expected = ref.file.tensors.get(f"prompt{p}.{IDS}")
    if expected is None:
        notes.append(f"{port_name}: the reference has no prompt{p}.{IDS}; not compared")
        return None
    got = integers(tensor)
    want = integers(expected)
    if got is None:
        return f"{port_name} has dtype {tensor.dtype}, not an integer type"
    if want is None:
        return "the reference's ids are not integers"
    got, want = got.reshape(-1), want.reshape(-1)
    if got.shape == want.shape and np.array_equal(got, want):
        return "identical"
    if got.shape != want.shape:
        return f"{got.size} ids in the port, {want.size} in the reference"
    first = int(np.flatnonzero(got != want)[0])
    return f"first at position {first}: {int(got[first])} in the port, {int(want[first])} expected"


def _compare_tensor(
    ref: _Reference,
    p: int,
    name: str,
    port_name: str,
    tensor: probes.ProbeTensor,
    factor: float,
    notes: list[str],
) -> TensorVerdict | None:
    where = describe(name, ref.num_layers)
    candidates = [name, *_aliases(name, ref.num_layers)]
    ref_name = next(
        (f"prompt{p}.{c}" for c in candidates if f"prompt{p}.{c}" in ref.file.tensors), None
    )
    if ref_name is None:
        notes.append(
            f"{port_name}: the reference has no prompt{p}.{name}"
            + (f" (nor {', '.join(candidates[1:])})" if len(candidates) > 1 else "")
            + "; not compared"
        )
        return None
    expected = ref.file.tensors[ref_name]
    base = TensorVerdict(p, name, where, port_name, ref_name, tensor.dtype, within=False)
    if tensor.dtype not in DTYPE_NAMES:
        notes.append(
            f"{port_name}: dtype {tensor.dtype} is not a float type (F64, F32, F16, BF16); "
            "not compared"
        )
        return None
    if expected.dtype not in DTYPE_NAMES:
        notes.append(f"{ref_name} in the reference has dtype {expected.dtype}; not compared")
        return None
    want = expected.values()
    got = tensor.values()
    note = None
    if got.shape != want.shape and got.ndim == want.ndim + 1 and got.shape[0] == 1:
        got = got[0]  # a batch of one (TransformerLens, most frameworks)
        note = "the port's leading batch dimension of 1 dropped"
    if (
        got.shape != want.shape
        and got.ndim == want.ndim >= 2
        and want.shape[0] == 1
        and got.shape[1:] == want.shape[1:]
    ):  # the reference keeps only the last position (positions = "last")
        got, note = got[-1:], "the port's last position compared (the reference has only it)"
    if got.shape != want.shape and want.ndim == 1 and got.ndim == 2 and got.shape[1:] == want.shape:
        got, note = got[-1], "the port's last position compared with the reference's last one"
    last_row = None
    if got.shape != want.shape and want.ndim == 2 and got.ndim == 1 and want.shape[1:] == got.shape:
        last_row = want[-1]  # the port's last-position logits, the reference's at every one
    if (
        got.shape != want.shape
        and got.ndim == want.ndim >= 2
        and got.shape[0] == 1
        and got.shape[1:] == want.shape[1:]
    ):  # the port kept only its last position (llama.cpp's last layer, its output by default)
        last_row = want[-1:]
    if last_row is not None:
        want, note = last_row, "compared with the reference's last position"
        ref_name += "[-1]"
        base = replace(base, reference_name=ref_name)
    if got.shape != want.shape:
        return replace(
            base,
            problem=f"shape {list(got.shape)} in the port, {list(want.shape)} in the reference",
        )
    if note is not None:
        notes.append(f"{port_name}: {note}")
    whole = m.metrics(want, got)
    record = _floor_entry(ref, ref_name)
    if record is None and ref.floor_dtype is not None:
        notes.append(f"{ref_name}: no rounding-floor entry; judged by the NMSE default")
    ref_dtype = expected.dtype
    allow = allowance(record, whole.ref_rms, ref_dtype, tensor.dtype, ref.floor_dtype, factor)
    ratio = allow.ratio(whole.err_rms, whole.nmse)
    positions = m.per_position(want, got)
    pos_ratio: list[float] = []
    pos_within: list[bool] = []
    pos_floor = record.get("positions_err_rms") if record is not None else None
    for i, pm in enumerate(positions):
        entry = None
        if isinstance(pos_floor, list) and len(pos_floor) == len(positions):
            entry = {"err_rms": float(pos_floor[i])} if _number(pos_floor[i]) else None
        pa = allowance(entry, pm.ref_rms, ref_dtype, tensor.dtype, ref.floor_dtype, factor)
        r = pa.ratio(pm.err_rms, pm.nmse)
        pos_ratio.append(r)
        pos_within.append(pa.within(r))
    logits = m.logit_metrics(want, got) if name.startswith("logits.") else None
    return replace(
        base,
        within=allow.within(ratio),
        metrics=whole,
        allowance=allow,
        ratio=ratio,
        positions=positions,
        positions_ratio=tuple(pos_ratio),
        positions_within=tuple(pos_within),
        logits=logits,
        note=note,
    )
