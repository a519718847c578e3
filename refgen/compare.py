"""Numeric comparison of two references of the same kind, with a verdict an auditor can act on.

Two honest rebuilds on different CPUs can differ in the last bit of a float; "different" is not
enough. This module says *how much* and *where*: bit for bit, within a tolerance far tighter than
the consumer's 1e-3 (with the largest absolute and relative difference per field and per test
case), or not reproduced (every difference by path, e.g. ``test_cases[1].top_10[3].index``, with
swapped top-k entries named). When both references have probe files beside them
(``X.safetensors``, see :mod:`refgen.probes`), those are compared tensor by tensor too, and the
report names, per prompt, the first layer that differs ("first difference at layer 7 of prompt
2"): where a port first diverges.

Exit codes (also used by ``refgen verify``):

====  ======================================================================
 0    REPRODUCED BIT FOR BIT: same SHA-256 (and no NaN: NaN never counts as reproduced)
 10   REPRODUCED WITHIN TOLERANCE: same structure and indices, floats within tolerance
 11   NOT REPRODUCED: a structural, exact-value, index or out-of-tolerance difference
 2    could not compare (unreadable file, not JSON): a usage error
====  ======================================================================
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refgen import jsonio, probes
from refgen.errors import CompareError

DEFAULT_TOLERANCE = 1e-6
"""Default for both the absolute and the relative part; the consumer's own bar is 1e-3."""

EXIT_ERROR = 2

# Keys kept for humans: they name the software that ran, so they differ between honest runs on
# other versions. A difference there is reported as a note, never as a failed reproduction.
INFO_KEYS = frozenset({"methodology", "torch_version", "transformers_version", "platform"})
REQUIRED_KEYS = (
    "model_repo",
    "hidden_size",
    "num_layers",
    "vocab_size",
    "head_dim",
    "use_qk_norm",
    "test_cases",
)
_TOP_K = re.compile(r"^top_\d+$")
MAX_REPORTED_DIFFERENCES = 200
"""Cap on the differences kept in a report (the total is always counted)."""


class Verdict(enum.Enum):
    """The outcome of a comparison; ``exit_code`` is the process exit status for it."""

    IDENTICAL = "reproduced bit for bit"
    WITHIN_TOLERANCE = "reproduced within tolerance"
    NOT_REPRODUCED = "not reproduced"
    # verify only: this CPU cannot run the determinism profile (no AVX2), so no rebuild here
    # can confirm or refute the reference
    NOT_COMPARABLE = "not comparable"

    @property
    def exit_code(self) -> int:
        codes = {"IDENTICAL": 0, "WITHIN_TOLERANCE": 10, "NOT_REPRODUCED": 11, "NOT_COMPARABLE": 12}
        return codes[self.name]


@dataclass(frozen=True)
class Tolerance:
    """A float pair ``(a, b)`` matches when ``|a - b| <= atol + rtol * |a|`` (numpy's isclose).

    The relative part matters: a logit near 30 has a float32 spacing of about 2e-6, so a pure
    1e-6 absolute bar would reject a one-ulp difference there.
    """

    atol: float = DEFAULT_TOLERANCE
    rtol: float = DEFAULT_TOLERANCE

    def accepts(self, a: float, b: float) -> bool:
        # NaN is never a reproduced value, not even against NaN: a reference holding one is broken
        # (identical bytes are still the bit-for-bit verdict, decided before any value is looked at)
        if math.isnan(a) or math.isnan(b):
            return False
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= self.atol + self.rtol * abs(a)


@dataclass(frozen=True)
class Difference:
    """One place where B does not match A. ``kind`` is a short machine-readable tag."""

    path: str
    kind: str  # missing | extra | type | value | length | shape | index | swap | float | unreadable
    a: Any
    b: Any
    detail: str


@dataclass(frozen=True)
class FieldStats:
    """Largest float differences of one field (e.g. ``top_10.logit``) over the values compared."""

    field: str
    count: int
    max_abs: float
    max_abs_path: str
    max_rel: float
    max_rel_path: str


@dataclass(frozen=True)
class CaseStats:
    """Per test case: the prompt and the float statistics of each of its fields."""

    case: int
    prompt: str | None
    fields: tuple[FieldStats, ...]


@dataclass(frozen=True)
class FirstDifference:
    """The first probe tensor of one prompt that is not bit-identical (layers upwards, then the
    logits); ``beyond_tolerance`` says whether it also fails the tolerance."""

    prompt: int
    layer: int | None  # None: the last-position logits
    tensor: str
    max_abs: float | None  # None when the tensor is missing, or differs in dtype or shape
    beyond_tolerance: bool
    text: str  # "first difference at layer 7 of prompt 2"


@dataclass(frozen=True)
class ProbeComparison:
    """The probe files beside A and B (``X.safetensors``), compared tensor by tensor."""

    a_name: str | None  # None: A has no probe file
    b_name: str | None
    a_sha256: str
    b_sha256: str
    tensors: int  # tensors compared (present in both)
    identical: bool  # same bytes
    first_differences: tuple[FirstDifference, ...]  # one per prompt that differs, prompt order

    @property
    def first(self) -> FirstDifference | None:
        """The earliest prompt's first differing layer: what the summary line names."""
        return self.first_differences[0] if self.first_differences else None


@dataclass(frozen=True)
class Comparison:
    """The full result; ``differences`` is in document order, truncated to the cap."""

    verdict: Verdict
    a_name: str
    b_name: str
    a_sha256: str
    b_sha256: str
    tolerance: Tolerance
    fields: tuple[FieldStats, ...]
    cases: tuple[CaseStats, ...]
    differences: tuple[Difference, ...]
    difference_count: int
    notes: tuple[str, ...] = field(default=())
    probes: ProbeComparison | None = None  # when A or B has a probe file beside it

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def first_probe_difference(self) -> str | None:
        """ "first difference at layer 7 of prompt 2", when the probe files differ."""
        first = self.probes.first if self.probes is not None else None
        return first.text if first is not None else None

    def summary(self) -> str:
        """The one-line verdict printed first."""
        head = self.verdict.value.upper()
        layer = f"; {self.first_probe_difference}" if self.first_probe_difference else ""
        if self.verdict is Verdict.IDENTICAL:
            also = (
                f" (probe files too: {self.probes.a_sha256})"
                if self.probes is not None and self.probes.identical
                else ""
            )
            return (
                f"{head}: {self.a_name} and {self.b_name} have the same SHA-256 "
                f"{self.a_sha256}{also}"
            )
        if self.verdict is Verdict.WITHIN_TOLERANCE:
            worst = max(self.fields, key=lambda f: f.max_abs, default=None)
            where = (
                f"max |diff| {worst.max_abs:.3g} at {worst.max_abs_path}"
                if worst and worst.max_abs > 0
                else "values equal, bytes differ (formatting)"
            )
            return (
                f"{head}: {where} (atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g}); "
                f"all top-k indices identical{layer}"
            )
        first = self.differences[0] if self.differences else None
        return (
            f"{head}: {self.difference_count} difference(s)"
            + (f"; first at {first.path}: {first.detail}" if first else "")
            + layer
        )

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (stable key order, plain JSON types)."""
        data = asdict(self)
        data["verdict"] = self.verdict.name
        data["verdict_text"] = self.verdict.value
        data["exit_code"] = self.exit_code
        data["summary"] = self.summary()
        data["first_probe_difference"] = self.first_probe_difference
        safe: dict[str, Any] = _json_safe(data)
        return safe

    def render(self, max_differences: int = 20) -> str:
        """The human report: the one-line summary, then statistics, differences and notes."""
        lines = [self.summary(), ""]
        lines.append(f"A: {self.a_name}  sha256 {self.a_sha256}")
        lines.append(f"B: {self.b_name}  sha256 {self.b_sha256}")
        lines.append(f"tolerance: |a-b| <= {self.tolerance.atol:g} + {self.tolerance.rtol:g}*|a|")
        if self.fields:
            lines += ["", "Largest differences per field (all test cases):"]
            lines += [_stat_line(s) for s in self.fields]
        for case in self.cases:
            lines += ["", f"test_cases[{case.case}] ({shorten(case.prompt)}):"]
            lines += [_stat_line(s) for s in case.fields]
        if self.probes is not None:
            lines += ["", _probe_heading(self.probes)]
            for first in self.probes.first_differences:
                size = "" if first.max_abs is None else f", max |diff| {first.max_abs:.3g}"
                verdict = "beyond tolerance" if first.beyond_tolerance else "within tolerance"
                lines.append(f"  {first.text} ({first.tensor}{size}, {verdict})")
        if self.differences:
            shown = self.differences[:max_differences]
            lines += ["", f"Differences ({self.difference_count}; first {len(shown)} shown):"]
            lines += [f"  {d.path}: {d.detail}" for d in shown]
        if self.notes:
            lines += ["", "Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _probe_heading(p: ProbeComparison) -> str:
    names = f"{p.a_name or '(none)'} (A) vs {p.b_name or '(none)'} (B)"
    if p.identical:
        return f"Probe files {names}: identical, {p.tensors} tensors"
    if not p.first_differences:
        return f"Probe files {names}: {p.tensors} tensors compared, all values equal"
    return f"Probe files {names}: {p.tensors} tensors compared; first difference per prompt:"


def _stat_line(s: FieldStats) -> str:
    return (
        f"  {s.field:<24} n={s.count:<6} max abs {s.max_abs:.3g} ({s.max_abs_path})  "
        f"max rel {s.max_rel:.3g} ({s.max_rel_path})"
    )


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    return value


class _Stats:
    """Mutable accumulator for one field; frozen into :class:`FieldStats` at the end."""

    def __init__(self) -> None:
        self.count = 0
        self.max_abs = 0.0
        self.max_abs_path = "-"
        self.max_rel = 0.0
        self.max_rel_path = "-"

    def add(self, a: float, b: float, path: str) -> None:
        self.count += 1
        if a == b or (math.isnan(a) and math.isnan(b)):
            return
        diff = abs(a - b)
        scale = max(abs(a), abs(b))
        rel = diff / scale if scale else 0.0
        if diff > self.max_abs or math.isnan(diff):
            self.max_abs, self.max_abs_path = diff, path
        if rel > self.max_rel or math.isnan(rel):
            self.max_rel, self.max_rel_path = rel, path

    def add_many(
        self, count: int, max_abs: float, abs_path: str, max_rel: float, rel_path: str
    ) -> None:
        """A whole tensor's contribution, its maxima already found (see ``_walk_tensor``)."""
        self.count += count
        if max_abs > self.max_abs or math.isnan(max_abs):
            self.max_abs, self.max_abs_path = max_abs, abs_path
        if max_rel > self.max_rel or math.isnan(max_rel):
            self.max_rel, self.max_rel_path = max_rel, rel_path

    def freeze(self, name: str) -> FieldStats:
        return FieldStats(
            name, self.count, self.max_abs, self.max_abs_path, self.max_rel, self.max_rel_path
        )


class _Walker:
    """Walks A and B in parallel, in A's document order, collecting everything."""

    def __init__(self, tolerance: Tolerance) -> None:
        self.tol = tolerance
        self.differences: list[Difference] = []
        self.notes: list[str] = []
        self.fields: dict[str, _Stats] = {}
        self.cases: dict[int, dict[str, _Stats]] = {}

    def diff(self, path: str, kind: str, a: Any, b: Any, detail: str) -> None:
        self.differences.append(Difference(path, kind, a, b, detail))

    def walk(self, a: Any, b: Any, path: str, fld: str, case: int | None) -> None:
        ta, tb = _kind(a), _kind(b)
        if ta != tb:
            self.diff(path, "type", _short(a), _short(b), f"type {ta} in A, {tb} in B")
        elif ta == "object":
            self.walk_object(a, b, path, case)
        elif ta == "array":
            self.walk_array(a, b, path, fld, case)
        elif ta == "float":
            self.walk_float(a, b, path, fld, case)
        elif a != b:
            self.diff(path, "value", a, b, f"{shorten(a)} in A, {shorten(b)} in B")

    def walk_object(
        self, a: dict[str, Any], b: dict[str, Any], path: str, case: int | None
    ) -> None:
        # A's own key order (the generator's: prompt, tokens, top-k, residual), then B's extras
        # sorted: deterministic, and the first difference shown is the most telling one.
        for key in [*a, *sorted(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else key
            if key not in b:
                self.diff(sub, "missing", _short(a[key]), None, "present in A, missing in B")
            elif key not in a:
                self.diff(sub, "extra", None, _short(b[key]), "missing in A, present in B")
            elif not path and key in INFO_KEYS:
                if a[key] != b[key]:
                    self.notes.append(f"{key} differs (informational): {a[key]!r} vs {b[key]!r}")
            elif not path and key == "test_cases" and _kind(a[key]) == _kind(b[key]) == "array":
                self.walk_cases(a[key], b[key])
            elif _TOP_K.match(key) and _is_top_k(a[key]) and _is_top_k(b[key]):
                self.walk_top_k(a[key], b[key], sub, key, case)
            else:
                self.walk(a[key], b[key], sub, key, case)

    def walk_cases(self, a: list[Any], b: list[Any]) -> None:
        if len(a) != len(b):
            self.diff(
                "test_cases", "length", len(a), len(b), f"{len(a)} test cases in A, {len(b)} in B"
            )
        for i, (ca, cb) in enumerate(zip(a, b, strict=False)):
            self.cases.setdefault(i, {})
            self.walk(ca, cb, f"test_cases[{i}]", "test_cases", i)
        for i in range(len(b), len(a)):
            prompt = a[i].get("prompt") if isinstance(a[i], dict) else None
            self.diff(
                f"test_cases[{i}]",
                "missing",
                prompt,
                None,
                f"test case {shorten(prompt)} missing in B",
            )
        for i in range(len(a), len(b)):
            prompt = b[i].get("prompt") if isinstance(b[i], dict) else None
            self.diff(
                f"test_cases[{i}]", "extra", None, prompt, f"test case {shorten(prompt)} only in B"
            )

    def walk_array(self, a: list[Any], b: list[Any], path: str, fld: str, case: int | None) -> None:
        if len(a) != len(b):
            self.diff(path, "length", len(a), len(b), f"length {len(a)} in A, {len(b)} in B")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            self.walk(x, y, f"{path}[{i}]", fld, case)

    def walk_top_k(
        self,
        a: list[dict[str, Any]],
        b: list[dict[str, Any]],
        path: str,
        key: str,
        case: int | None,
    ) -> None:
        """Indices must match rank by rank (the consumer's rule); name swaps; compare logits."""
        if len(a) != len(b):
            self.diff(path, "length", len(a), len(b), f"{len(a)} entries in A, {len(b)} in B")
        ia = [e["index"] for e in a]
        ib = [e["index"] for e in b]
        n = min(len(ia), len(ib))
        wrong = [r for r in range(n) if ia[r] != ib[r]]
        swapped: dict[int, int] = {}
        for r in wrong:
            for s in wrong:
                if (
                    s > r
                    and r not in swapped
                    and s not in swapped
                    and ia[r] == ib[s]
                    and ia[s] == ib[r]
                ):
                    swapped[r], swapped[s] = s, r
        for r in range(n):
            entry = f"{path}[{r}]"
            if ia[r] == ib[r]:
                extra = sorted(set(a[r]) ^ set(b[r]))
                if extra:
                    self.diff(entry, "type", sorted(a[r]), sorted(b[r]), f"keys differ: {extra}")
                self.walk(
                    a[r].get("logit"), b[r].get("logit"), f"{entry}.logit", f"{key}.logit", case
                )
                continue
            if r in swapped and r < swapped[r]:
                s = swapped[r]
                self.diff(
                    entry,
                    "swap",
                    [ia[r], ia[s]],
                    [ib[r], ib[s]],
                    f"ranks {r} and {s} swapped: index {ia[r]} and index {ia[s]} exchange places "
                    f"(B has {ib[r]} at rank {r}, {ib[s]} at rank {s})",
                )
            where = f"at rank {ib.index(ia[r])} in B" if ia[r] in ib else "not in B's top-k"
            self.diff(
                f"{entry}.index",
                "index",
                ia[r],
                ib[r],
                f"index {ia[r]} in A, {ib[r]} in B (A's index {ia[r]} is {where})",
            )

    def walk_float(self, a: float, b: float, path: str, fld: str, case: int | None) -> None:
        self.fields.setdefault(fld, _Stats()).add(a, b, path)
        if case is not None:
            self.cases.setdefault(case, {}).setdefault(fld, _Stats()).add(a, b, path)
        if not self.tol.accepts(a, b):
            if math.isnan(a) or math.isnan(b):
                why = "NaN is never within tolerance"
            else:
                why = f"|diff| {abs(a - b):.3g} > tolerance"
            self.diff(path, "float", a, b, f"{a!r} in A, {b!r} in B ({why})")

    # --- probe files (X.safetensors) -----------------------------------------------------------

    def walk_probes(self, a: Path | None, b: Path | None) -> ProbeComparison:
        """Tensor by tensor, in prompt order and layers upwards; each tensor's statistics go
        under its field (``hidden_states.layer7``) and its prompt's test case."""
        if a is None or b is None:
            there = a if a is not None else b
            assert there is not None
            kind, side = ("missing", "B") if b is None else ("extra", "A")
            self.diff(
                there.name,
                kind,
                there.name if a else None,
                there.name if b else None,
                f"probe file {there.name} beside {'A' if a else 'B'}, none beside {side}",
            )
            return ProbeComparison(
                a.name if a else None, b.name if b else None, "", "", 0, False, ()
            )
        files = []
        for path in (a, b):
            try:
                files.append(probes.read(path))
            except probes.ProbeFileError as exc:
                self.diff(path.name, "unreadable", None, None, str(exc))
        sha = [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for p in (a, b)]
        if len(files) < 2:
            return ProbeComparison(a.name, b.name, sha[0], sha[1], 0, False, ())
        fa, fb = files
        for key in sorted(set(fa.metadata) | set(fb.metadata)):
            va, vb = fa.metadata.get(key), fb.metadata.get(key)
            if va != vb:
                self.diff(f"{a.name}:metadata.{key}", "value", va, vb, f"{va!r} in A, {vb!r} in B")
        firsts: dict[int, FirstDifference] = {}
        compared = 0
        for name in sorted(set(fa.tensors) | set(fb.tensors), key=probes.sort_key):
            ta, tb = fa.tensors.get(name), fb.tensors.get(name)
            parsed = probes.parse_name(name)
            max_abs: float | None = None
            if ta is None or tb is None:
                kind = "missing" if tb is None else "extra"
                where = "present in A, missing in B" if tb is None else "missing in A, present in B"
                self.diff(name, kind, None, None, f"tensor {where}")
                differs, beyond = True, True
            elif ta.dtype != tb.dtype:
                self.diff(
                    name, "type", ta.dtype, tb.dtype, f"dtype {ta.dtype} in A, {tb.dtype} in B"
                )
                differs, beyond = True, True
            elif ta.shape != tb.shape:
                self.diff(
                    name,
                    "shape",
                    list(ta.shape),
                    list(tb.shape),
                    f"shape {list(ta.shape)} in A, {list(tb.shape)} in B",
                )
                differs, beyond = True, True
            else:
                compared += 1
                differs = ta.data != tb.data
                max_abs, beyond = self._walk_tensor(name, ta, tb, parsed, differs)
            if differs and parsed is not None and parsed.prompt not in firsts:
                firsts[parsed.prompt] = FirstDifference(
                    parsed.prompt,
                    parsed.layer,
                    name,
                    max_abs,
                    beyond,
                    f"first difference at {parsed.describe()}",
                )
        return ProbeComparison(
            a.name,
            b.name,
            sha[0],
            sha[1],
            compared,
            fa.raw == fb.raw,
            tuple(firsts[k] for k in sorted(firsts)),
        )

    def _walk_tensor(
        self,
        name: str,
        ta: probes.ProbeTensor,
        tb: probes.ProbeTensor,
        parsed: probes.TensorName | None,
        differs: bool,
    ) -> tuple[float, bool]:
        """Statistics and the out-of-tolerance difference of one tensor; (max |diff|, beyond)."""
        import numpy as np  # here: a diff without probe files never needs it

        fld = probes.field_name(name)
        case = parsed.prompt if parsed is not None else None
        targets = [self.fields.setdefault(fld, _Stats())]
        if case is not None:
            targets.append(self.cases.setdefault(case, {}).setdefault(fld, _Stats()))
        count = int(np.prod(ta.shape, dtype=np.int64))
        if not differs:
            for stats in targets:
                stats.add_many(count, 0.0, "-", 0.0, "-")
            return 0.0, False
        va, vb = ta.values(), tb.values()
        with np.errstate(invalid="ignore", over="ignore"):
            both_nan = np.isnan(va) & np.isnan(vb)
            same = (va == vb) | both_nan
            diff = np.where(same, 0.0, np.abs(va - vb))  # NaN where only one side is NaN
            scale = np.maximum(np.abs(va), np.abs(vb))
            rel = np.where(same | (scale == 0), 0.0, diff / np.where(scale == 0, 1.0, scale))
            finite = np.isfinite(va) & np.isfinite(vb)
            ok = same | (finite & (diff <= self.tol.atol + self.tol.rtol * np.abs(va)))

        def at(flat: int) -> str:
            index = np.unravel_index(flat, ta.shape)
            return f"{name}[{', '.join(str(int(i)) for i in index)}]"

        def worst(values: Any) -> int:
            nan = np.flatnonzero(np.isnan(values))
            return int(nan[0]) if nan.size else int(np.argmax(values))

        i_abs, i_rel = worst(diff), worst(rel)
        max_abs, max_rel = float(diff.flat[i_abs]), float(rel.flat[i_rel])
        for stats in targets:
            stats.add_many(count, max_abs, at(i_abs), max_rel, at(i_rel))
        bad = np.flatnonzero(~ok)
        if bad.size:
            first = int(bad[0])
            x, y = float(va.flat[first]), float(vb.flat[first])
            self.diff(
                at(first),
                "float",
                x,
                y,
                f"{x!r} in A, {y!r} in B (|diff| {abs(x - y):.3g} > tolerance; {bad.size} of "
                f"{count} values of the tensor beyond it)",
            )
        return max_abs, bool(bad.size)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> Any:
    """A value small enough to print in a difference (containers are summarised)."""
    if isinstance(value, list):
        return f"<array of {len(value)}>"
    if isinstance(value, dict):
        return f"<object with {len(value)} keys>"
    return value


def _is_top_k(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, dict) and isinstance(e.get("index"), int) and not isinstance(e["index"], bool)
        for e in value
    )


def compare_documents(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    tolerance: Tolerance | None = None,
    a_bytes: bytes | None = None,
    b_bytes: bytes | None = None,
    a_name: str = "A",
    b_name: str = "B",
    a_probes: Path | None = None,
    b_probes: Path | None = None,
) -> Comparison:
    """Compare two parsed references; pass the raw bytes too to allow the bit-for-bit verdict.

    ``a_probes``/``b_probes``: the probe files beside A and B, when either has one; one
    missing is a difference."""
    tol = tolerance or Tolerance()
    walker = _Walker(tol)
    walker.walk(a, b, "", "", None)
    probe_result = None
    if a_probes is not None or b_probes is not None:
        probe_result = walker.walk_probes(a_probes, b_probes)
    a_sha = hashlib.sha256(a_bytes).hexdigest() if a_bytes is not None else ""
    b_sha = hashlib.sha256(b_bytes).hexdigest() if b_bytes is not None else ""
    has_nan = any(d.kind == "float" and _is_nan_pair(d.a, d.b) for d in walker.differences)
    # (refgen never writes NaN, allow_nan=False: a file holding one is no reference, even when a
    # rebuild has the same bytes)
    if (
        a_bytes is not None
        and a_bytes == b_bytes
        and not has_nan
        and (probe_result is None or probe_result.identical)
    ):
        verdict = Verdict.IDENTICAL
    elif walker.differences:
        verdict = Verdict.NOT_REPRODUCED
    else:
        verdict = Verdict.WITHIN_TOLERANCE
    fields = tuple(walker.fields[k].freeze(k) for k in sorted(walker.fields, key=_natural))
    cases = tuple(
        CaseStats(
            i,
            _prompt(a, i),
            tuple(stats[k].freeze(k) for k in sorted(stats, key=_natural)),
        )
        for i, stats in sorted(walker.cases.items())
    )
    return Comparison(
        verdict=verdict,
        a_name=a_name,
        b_name=b_name,
        a_sha256=a_sha,
        b_sha256=b_sha,
        tolerance=tol,
        fields=fields,
        cases=cases,
        differences=tuple(walker.differences[:MAX_REPORTED_DIFFERENCES]),
        difference_count=len(walker.differences),
        notes=tuple(walker.notes),
        probes=probe_result,
    )


def _is_nan_pair(a: Any, b: Any) -> bool:
    return any(isinstance(x, float) and math.isnan(x) for x in (a, b))


def _natural(name: str) -> list[Any]:
    """``hidden_states.layer2`` before ``hidden_states.layer10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _prompt(doc: dict[str, Any], i: int) -> str | None:
    cases = doc.get("test_cases")
    if isinstance(cases, list) and i < len(cases) and isinstance(cases[i], dict):
        prompt = cases[i].get("prompt")
        return prompt if isinstance(prompt, str) else None
    return None


SHOWN_TEXT = 80
"""Characters of a prompt (or other long text) echoed in logs and reports; the length follows."""


def shorten(value: Any, limit: int = SHOWN_TEXT) -> str:
    """``repr`` of a value, cut to ``limit`` characters with the full length named."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def load_reference(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Read a reference JSON; a missing file or a file that is not a reference is a CompareError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CompareError(
            f"cannot read {path}: {exc.strerror}. Pass an existing reference JSON."
        ) from None
    try:
        doc = jsonio.loads(raw)  # too deep is a ValueError, never a RecursionError
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompareError(f"{path} is not valid JSON ({exc}); it cannot be a reference.") from None
    if not isinstance(doc, dict) or not any(k in doc for k in REQUIRED_KEYS):
        raise CompareError(
            f"{path} is not a reference (none of the keys {list(REQUIRED_KEYS)}); compare two "
            "reference JSON files of the same kind."
        )
    return doc, raw


def compare_files(
    a: str | Path,
    b: str | Path,
    tolerance: Tolerance | None = None,
    *,
    a_name: str | None = None,
    b_name: str | None = None,
) -> Comparison:
    """Compare two reference files on disk (bit for bit first, then numerically), with the
    probe files beside them (``X.safetensors``) when either has one."""
    doc_a, raw_a = load_reference(a)
    doc_b, raw_b = load_reference(b)
    pa, pb = probes.probe_path(Path(a)), probes.probe_path(Path(b))
    return compare_documents(
        doc_a,
        doc_b,
        tolerance=tolerance,
        a_bytes=raw_a,
        b_bytes=raw_b,
        a_name=str(a) if a_name is None else a_name,
        b_name=str(b) if b_name is None else b_name,
        a_probes=pa if pa.is_file() else None,
        b_probes=pb if pb.is_file() else None,
    )


def tolerance_from_spec(
    path: str | Path | None, atol: float | None, rtol: float | None
) -> Tolerance:
    """Explicit flags win; else the spec's ``[verify] tolerance`` for both parts; else 1e-6."""
    base = DEFAULT_TOLERANCE
    if path is not None:
        from refgen.spec import load_spec

        base = load_spec(path).tolerance
    return Tolerance(atol=base if atol is None else atol, rtol=base if rtol is None else rtol)
