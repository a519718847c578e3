"""Probes: what a run captures beyond the JSON, and how each tensor is named.

A spec's ``[probes]`` table asks for hidden states of chosen layers, for the outputs of modules
named by path pattern, for the full logits (at the last position or at every position), and
optionally for the reference's own rounding floor against a float64 run. They go into
``X.safetensors`` beside ``X.json``, one tensor per prompt and probe, in the run's dtype exactly
as the forward returned them (no conversion: a bfloat16 run's tensors are bfloat16 in the file).
Every probe file also holds each prompt's token ids, so that a port reads its inputs from the
same file.

Layer numbering is transformers' ``output_hidden_states`` tuple of a model with N decoder
layers (N = ``config.num_hidden_layers``), N + 1 entries:

* layer ``0``: the embedding output, as the model feeds it to decoder layer 0 (after any scaling
  the model applies to its embeddings);
* layer ``j`` for ``1 <= j < N``: the residual stream after decoder layer ``j`` (counting from
  1), which is decoder layer ``j + 1``'s input: the same tensor as module ``model.layers.{j-1}``
  (counting from 0, as ``named_modules()`` does);
* layer ``N``: the final norm's output, the LM head's input (transformers records it in place of
  the last decoder layer's raw output, which is module ``model.layers.{N-1}``, before the final
  norm; ``last_residual_f32`` in the JSON is layer ``N``'s last position).

Modules: ``modules = ["model.layers.*.self_attn", ...]`` names modules by their path in
``model.named_modules()``; ``*`` matches one whole part of the path (``model.layers.*`` is every
decoder layer, not their children). Each module's output is recorded by a forward hook: the
tensor itself, or the first tensor of a tuple output (an attention module returns its output and
its weights). For a Llama-style pre-norm layer: ``input_layernorm`` is the norm before attention,
``self_attn`` the attention's output after ``o_proj`` and before the residual add,
``post_attention_layernorm`` the norm before the MLP, ``mlp`` the MLP's output before the
residual add, and ``model.layers.{k}`` the layer's output, the residual stream after both adds;
``model.norm`` is the final norm (hidden state N).

Tensor names (``i`` is the prompt's index in ``run.prompts``, from 0):

* ``prompt{i}.input_ids``: the token ids, int64, shape ``[positions]`` (always written);
* ``prompt{i}.hidden_states.layer{j}``: ``hidden_states[j][0]``, shape ``[positions, hidden]``
  (every position, or ``[1, hidden]`` for ``positions = "last"``);
* ``prompt{i}.module.{path}``: module ``path``'s output without its batch dimension,
  ``[positions, ...]`` (or ``[1, ...]`` for ``positions = "last"``);
* ``prompt{i}.logits.last``: ``logits[0, -1]``, shape ``[vocab]`` (``logits = "last"``);
* ``prompt{i}.logits.all``: ``logits[0]``, shape ``[positions, vocab]`` (``logits = "all"``).

The file's only metadata key, ``refgen.probes``, holds canonical JSON (sorted keys) naming the
schema, model, dtype, layers, modules, positions and prompts, and with ``rounding_floor = true``
the floor (see :func:`rounding_floor`). One key, because safetensors writes its metadata map in
hash order: with several keys the header bytes changed from process to process (measured: three
runs, three SHA-256s), with one they do not. safetensors lays the tensors out by dtype, then
name, so the same tensors give the same bytes.

Reading (:func:`read`) needs no torch: the comparison in :mod:`refgen.compare` runs in auditors'
processes that never import it.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import re
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refgen import jsonio
from refgen.errors import ProbeFileError as ProbeFileError  # raised here; compare catches it here
from refgen.errors import SpecError
from refgen.modelinfo import positions

if TYPE_CHECKING:
    import numpy as np

    from refgen.spec import Spec

SUFFIX = ".safetensors"
METADATA_KEY = "refgen.probes"
# 2: token ids in every file, module outputs, logits at every position, the rounding floor
SCHEMA = "refgen.probes/2"
LAYER_NUMBERING = (
    "hidden_states[j] of transformers' output_hidden_states: 0 = embedding output, "
    "j = output of decoder layer j (1-based) = module model.layers.{j-1}, "
    "num_layers = final norm output (the last decoder layer's raw output is its module's)"
)
MAX_HEADER = 100 * 1024 * 1024
# A probe file is read whole; the bound only keeps a reader from going on forever (a regular file
# has the size it has): 1 TiB.
MAX_PROBE_FILE = 1 << 40
_NAME = re.compile(
    r"^prompt(\d+)\.(?:hidden_states\.layer(?P<layer>\d+)|logits\.(?P<logits>last|all)"
    r"|(?P<ids>input_ids)|module\.(?P<module>.+))$"
)
# the decoder layer a module path belongs to: its first all-digit part
_LAYER_PART = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
# safetensors dtype -> numpy dtype of the raw words (BF16: widened below)
_NUMERIC_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def probe_path(reference: Path) -> Path:
    """``X.json`` -> ``X.safetensors``, beside it (the artifact's ``probes`` sibling)."""
    return reference.with_name(reference.name.removesuffix(".json") + SUFFIX)


def hidden_name(prompt: int, layer: int) -> str:
    return f"prompt{prompt}.hidden_states.layer{layer}"


def logits_name(prompt: int, positions: str = "last") -> str:
    return f"prompt{prompt}.logits.{positions}"


def ids_name(prompt: int) -> str:
    return f"prompt{prompt}.input_ids"


def module_name(prompt: int, path: str) -> str:
    return f"prompt{prompt}.module.{path}"


@dataclass(frozen=True)
class TensorName:
    """A parsed tensor name. ``kind``: ``hidden_states`` (with ``layer``), ``logits.last``,
    ``logits.all``, ``input_ids`` or ``module`` (with ``module``, its path); ``layer`` is None
    but for hidden states."""

    prompt: int
    layer: int | None
    kind: str = "hidden_states"
    module: str | None = None

    def describe(self) -> str:
        """Where a porter looks: "layer 7 of prompt 2", "module model.layers.3.mlp of ..."."""
        where = {
            "hidden_states": f"layer {self.layer}",
            "logits.last": "the last-position logits",
            "logits.all": "the logits at every position",
            "input_ids": "the token ids",
            "module": f"module {self.module}",
        }[self.kind]
        return f"{where} of prompt {self.prompt}"


def parse_name(name: str) -> TensorName | None:
    match = _NAME.match(name)
    if match is None:
        return None
    prompt = int(match.group(1))
    if match["layer"] is not None:
        return TensorName(prompt, int(match["layer"]))
    if match["logits"] is not None:
        return TensorName(prompt, None, "logits." + match["logits"])
    if match["ids"] is not None:
        return TensorName(prompt, None, "input_ids")
    return TensorName(prompt, None, "module", match["module"])


def sort_key(name: str) -> tuple[int, int, int, int, str]:
    """The order of the forward, as far as a name tells it: per prompt, the token ids, then
    layers upwards, each decoder layer's modules (a layer's own output after its children)
    before the hidden state that follows it, modules outside the layers after them, then the
    logits; unknown names last, by name."""
    parsed = parse_name(name)
    if parsed is None:
        return (1 << 62, 9, 0, 0, name)
    if parsed.kind == "input_ids":
        return (parsed.prompt, 0, 0, 0, name)
    if parsed.layer is not None:
        return (parsed.prompt, 1, 2 * parsed.layer, 0, name)
    if parsed.module is not None:
        found = _LAYER_PART.search(parsed.module)
        if found is None:
            return (parsed.prompt, 2, 0, 0, name)
        own = found.end() == len(parsed.module)  # the layer itself, after its children
        return (parsed.prompt, 1, 2 * int(found.group(1)) + 1, int(own), name)
    return (parsed.prompt, 3, 0, 0, name)


def field_name(name: str) -> str:
    """The name without its prompt (``hidden_states.layer7``): statistics are kept per field."""
    return name.split(".", 1)[1] if parse_name(name) is not None else name


def module_pattern_matches(pattern: str, path: str) -> bool:
    """``*`` (and the other globs) within one part of a dotted path: ``model.layers.*`` matches
    ``model.layers.3`` but not ``model.layers.3.mlp``."""
    parts, names = pattern.split("."), path.split(".")
    return len(parts) == len(names) and all(
        fnmatch.fnmatchcase(n, p) for p, n in zip(parts, names, strict=True)
    )


def module_names(model: Any) -> list[str]:
    """The paths of *model*'s modules that can have an output: containers without a forward of
    their own (a ModuleList, a ModuleDict) are left out, since a hook on them never fires."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if type(module).forward is not torch.nn.Module.forward
    ]


def resolve_modules(spec: Spec, names: Sequence[str]) -> tuple[str, ...]:
    """The module paths the spec's patterns match among *names* (``named_modules()`` order);
    a pattern matching none is a SpecError naming the closest paths."""
    probes = spec.probes
    if probes is None or not probes.modules:
        return ()
    names = [n for n in names if n]  # "" is the model itself
    matched: set[str] = set()
    for pattern in probes.modules:
        found = {n for n in names if module_pattern_matches(pattern, n)}
        if not found:
            # the generic forms too, so that "layers.*.attn" suggests "model.layers.*.self_attn"
            generic = sorted({re.sub(r"(?<=\.)\d+(?=\.|$)", "*", n) for n in names})
            close = difflib.get_close_matches(pattern, generic, n=3, cutoff=0.5)
            close += difflib.get_close_matches(pattern, names, n=5 - len(close), cutoff=0.5)
            hint = f" Close: {', '.join(close)}." if close else ""
            raise SpecError(
                f"{spec.path.name}: 'probes.modules' pattern {pattern!r} matches no module of "
                f"the model.{hint} Patterns name paths of model.named_modules(); * stands for "
                "one whole part (a layer index); a container without a forward (a ModuleList "
                "such as model.layers) has no output."
            )
        matched |= found
    return tuple(n for n in names if n in matched)


# --- capture (in the generator's process) --------------------------------------------------------


def _first_tensor(output: Any) -> Any:
    """The module output's tensor: itself, or the first tensor of a tuple/ModelOutput."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "to_tuple"):  # transformers' ModelOutput
        output = output.to_tuple()
    if isinstance(output, Mapping):
        output = tuple(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


class _Recorder:
    """Forward hooks that keep the chosen modules' outputs, per prompt.

    The prompt a forward belongs to is found by its ``input_ids`` tensor (a pre-hook on the
    model, kept per thread): a streamed model runs the prompts of a wave at once, each forward on
    a thread of a pool (refgen.load.stream), and the hooks fire on that thread.
    """

    def __init__(self, paths: Sequence[str], inputs: Sequence[Any], positions: str) -> None:
        self.paths = tuple(paths)
        self.prompt_of = {id(ids): number for number, ids in enumerate(inputs)}
        self.lengths = [int(ids.shape[-1]) for ids in inputs]
        self.last = positions == "last"
        self.local = threading.local()
        self.outputs: dict[int, dict[str, list[Any]]] = {}
        self.lock = threading.Lock()

    def _started(self, module: Any, args: Any, kwargs: Mapping[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.local.prompt = self.prompt_of.get(id(ids))

    def _record(self, path: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            prompt = getattr(self.local, "prompt", None)
            if prompt is None:  # a forward of no prompt of this run
                return
            tensor = _first_tensor(output)
            length = self.lengths[prompt]
            if tensor is None or tensor.dim() < 2 or tensor.shape[0] != 1:
                raise SpecError(
                    f"module {path} returned {type(output).__name__}, not a tensor of shape "
                    "[1, positions, ...]: its output cannot be a probe. Name another module "
                    "in 'probes.modules'."
                )
            if tensor.shape[1] != length:
                raise SpecError(
                    f"module {path}'s output has shape {list(tensor.shape)}, not "
                    f"[1, {length} positions, ...]: it is not per position. Name another "
                    "module in 'probes.modules'."
                )
            # clone: only these rows, in the run's dtype, before any later in-place change
            kept = (tensor[0, -1:] if self.last else tensor[0]).clone()
            with self.lock:
                self.outputs.setdefault(prompt, {}).setdefault(path, []).append(kept)

        return hook

    @contextmanager
    def installed(self, model: Any) -> Iterator[None]:
        modules = dict(model.named_modules())
        handles = [model.register_forward_pre_hook(self._started, with_kwargs=True)]
        handles += [modules[p].register_forward_hook(self._record(p)) for p in self.paths]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def take(self, prompt: int) -> dict[str, Any]:
        """This prompt's module outputs, each module having run exactly once."""
        recorded = self.outputs.pop(prompt, {})
        tensors = {}
        for path in self.paths:
            calls = recorded.get(path, [])
            if len(calls) != 1:
                raise SpecError(
                    f"module {path} ran {len(calls)} times in the forward of prompt {prompt}, "
                    "so it has no single output to keep. Name a module that runs once per "
                    "forward in 'probes.modules'."
                )
            tensors[module_name(prompt, path)] = calls[0]
        return tensors


class Capture:
    """Collects the probe tensors of one run, prompt by prompt, straight from the forward."""

    def __init__(self, spec: Spec) -> None:
        if spec.probes is None:
            raise ValueError("the spec declares no probes")
        self.spec = spec
        self.probes = spec.probes
        self.layers: tuple[int, ...] = ()
        self.modules: tuple[str, ...] = ()
        self.num_layers = -1
        self.tensors: dict[str, Any] = {}
        self.floor: dict[str, Any] | None = None
        self._recorder: _Recorder | None = None

    def start(self, num_layers: int, module_names: Sequence[str] = ()) -> None:
        """Check the requested layers and module patterns against the model; called before
        the first forward."""
        self.num_layers = num_layers
        self.layers = resolve_layers(self.spec, num_layers)
        self.modules = resolve_modules(self.spec, module_names)

    @contextmanager
    def recording(self, model: Any, inputs: Sequence[Any]) -> Iterator[None]:
        """Hooks on the chosen modules while the forwards of *inputs* run (in memory or
        streamed); :meth:`add` takes each prompt's outputs."""
        if not self.modules:
            yield
            return
        self._recorder = _Recorder(self.modules, inputs, self.probes.positions)
        try:
            with self._recorder.installed(model):
                yield
        finally:
            self._recorder = None

    def add(self, prompt: int, input_ids: Any, out: Any) -> None:
        """Keep this prompt's tensors: its token ids, and from the forward's outputs
        (``output_hidden_states=True``) and the module hooks, the probes asked for."""
        import torch

        self.tensors[ids_name(prompt)] = input_ids.reshape(-1).to(torch.int64).clone()
        if self.probes.hidden_states is not None:
            hidden = out.hidden_states
            if hidden is None or len(hidden) != self.num_layers + 1:
                got = "none" if hidden is None else str(len(hidden))
                raise ProbeFileError(
                    f"the model returned {got} hidden states for {self.num_layers} layers "
                    f"(expected {self.num_layers + 1}); it does not number its hidden states as "
                    "transformers' decoder models do, so [probes] hidden_states cannot be taken. "
                    "Remove hidden_states from the spec's [probes]."
                )
            rows = slice(-1, None) if self.probes.positions == "last" else slice(None)
            for layer in self.layers:
                # clone: keep only these rows, in the run's dtype (no conversion)
                # in the model's own layout (several AltUp streams for Gemma 3n: [4, rows, hidden])
                self.tensors[hidden_name(prompt, layer)] = positions(hidden[layer], rows).clone()
        if self.probes.logits == "last":
            self.tensors[logits_name(prompt)] = out.logits[0, -1].clone()
        elif self.probes.logits == "all":
            self.tensors[logits_name(prompt, "all")] = out.logits[0].clone()
        if self._recorder is not None:
            self.tensors.update(self._recorder.take(prompt))

    def set_floor(self, float64_tensors: Mapping[str, Any], dtype: str) -> None:
        """Record the floor against the same probes of a float64 run (:func:`rounding_floor`)."""
        self.floor = rounding_floor(self.tensors, float64_tensors, dtype)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "schema": SCHEMA,
            "model_repo": self.spec.repo,
            "model_revision": self.spec.revision,
            "dtype": self.spec.dtype,
            "num_layers": self.num_layers,
            "layer_numbering": LAYER_NUMBERING,
            "hidden_states": list(self.layers),
            "modules": list(self.modules),
            "module_patterns": list(self.probes.modules),
            "positions": self.probes.positions if self.probes.per_position else None,
            "logits": self.probes.logits,
            "prompts": list(self.spec.prompts),
        }
        if self.floor is not None:
            meta["rounding_floor"] = self.floor
        return meta

    def dump(self) -> bytes:
        if self.probes.rounding_floor and self.floor is None:
            raise ValueError("the spec asks for the rounding floor, and none was recorded")
        return dump(self.tensors, self.metadata())


def resolve_layers(spec: Spec, num_layers: int) -> tuple[int, ...]:
    """The hidden-state indices to keep, 0..num_layers; SpecError naming the key otherwise."""
    probes = spec.probes
    if probes is None or probes.hidden_states is None:
        return ()
    if isinstance(probes.hidden_states, str):  # "all", the only string the spec accepts
        return tuple(range(num_layers + 1))
    beyond = [j for j in probes.hidden_states if j > num_layers]
    if beyond:
        raise SpecError(
            f"{spec.path.name}: 'probes.hidden_states' asks for layer(s) {beyond}, but the model "
            f"has {num_layers} decoder layers: valid indices are 0 (embedding output) to "
            f"{num_layers} (final norm output)."
        )
    return tuple(probes.hidden_states)


def _rms(squares: Any) -> float | None:
    """sqrt(mean) of float64 squares, summed exactly (math.fsum), so that the figure does not
    depend on a summation order; None when not finite (JSON has no inf or NaN)."""
    count = squares.size
    value = math.sqrt(math.fsum(squares.ravel().tolist()) / count) if count else 0.0
    return value if math.isfinite(value) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def rounding_floor(
    tensors: Mapping[str, Any], float64_tensors: Mapping[str, Any], dtype: str
) -> dict[str, Any]:
    """The reference's own error against a float64 run of the same checkpoint, per tensor.

    ``err = reference (its run dtype, widened to float64 exactly) - float64 run's tensor``;
    ``err_rms`` and ``ref_rms`` (of the reference tensor) are RMS over all elements,
    ``err_max_abs`` the largest ``|err|``, and ``positions_*`` the RMS over each position's
    row (the first dimension; a vector is one row). Every float tensor has an entry; the token
    ids none. Sums are exact (:func:`math.fsum`) and the floats are written as ``repr`` writes
    them, so the record's bytes are the same run to run.
    """
    import torch

    entries: dict[str, Any] = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        if not tensor.dtype.is_floating_point:
            continue
        other = float64_tensors.get(name)
        if other is None or tuple(other.shape) != tuple(tensor.shape):
            raise ProbeFileError(
                f"the float64 run has no tensor {name} of shape {list(tensor.shape)}: the "
                "rounding floor needs the same probes from both runs"
            )
        ref = tensor.to(torch.float64).numpy()
        err = ref - other.to(torch.float64).numpy()
        rows_ref = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
        rows_err = err.reshape(rows_ref.shape)
        entries[name] = {
            "err_rms": _rms(err * err),
            "ref_rms": _rms(ref * ref),
            "err_max_abs": _finite(float(abs(err).max())) if err.size else 0.0,
            "positions_err_rms": [_rms(r * r) for r in rows_err],
            "positions_ref_rms": [_rms(r * r) for r in rows_ref],
        }
    return {"against": "float64", "dtype": dtype, "tensors": entries}


def dump(tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes:
    """The safetensors bytes: tensors in name order, one metadata key (see the module doc)."""
    from safetensors.torch import save

    ordered = {name: tensors[name].contiguous() for name in sorted(tensors)}
    canonical = json.dumps(
        metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    # safetensors readers (ours, the Python and Rust libraries) refuse a header over 100 MB; a
    # floor of many modules at every position of long prompts could pass it: refused here.
    if len(canonical.encode()) > MAX_HEADER // 2:
        raise ProbeFileError(
            f"the probe file's metadata would be {len(canonical.encode()) / 1e6:.0f} MB (the "
            f"rounding floor of {len(tensors)} tensors, per position), past what safetensors "
            "readers accept. Ask for fewer modules or positions, or for rounding_floor in a "
            "separate spec with shorter prompts."
        )
    data: bytes = save(ordered, metadata={METADATA_KEY: canonical})
    return data


# --- reading (torch-free, for comparisons) -------------------------------------------------------


@dataclass(frozen=True)
class ProbeTensor:
    """One tensor as stored: safetensors dtype name, shape and raw little-endian bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def values(self) -> np.ndarray[Any, Any]:
        """The values as float64, exactly (every BF16/F16/F32 value is a float64 value, and
        so is every token id below 2**53)."""
        import numpy as np

        kind = _NUMERIC_DTYPES.get(self.dtype)
        if kind is None:
            raise ProbeFileError(f"tensor {self.name} has dtype {self.dtype}, not a number type")
        raw = np.frombuffer(self.data, dtype=kind)
        if self.dtype == "BF16":  # the upper half of a float32: shift it back into place
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float64).reshape(self.shape)


@dataclass(frozen=True)
class ProbeFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, ProbeTensor]
    raw: bytes


def read(path: Path) -> ProbeFile:
    """Parse a probe file; :class:`ProbeFileError` says what is wrong with a damaged one."""
    try:
        # a regular file only, never a FIFO or a device; as large as the file is
        raw = jsonio.read_bytes(path, limit=MAX_PROBE_FILE)
    except OSError as exc:
        raise ProbeFileError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(raw) < 8:
        raise ProbeFileError(f"{path.name} is too short to be a safetensors file")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(MAX_HEADER, len(raw) - 8):
        raise ProbeFileError(f"{path.name}: header size {size} does not fit the file")
    try:
        header = jsonio.loads(raw[8 : 8 + size])  # nesting bounded: a ValueError
        if not isinstance(header, dict):
            raise TypeError("header is not an object")
        meta = header.pop("__metadata__", None) or {}
        metadata = jsonio.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
        body = raw[8 + size :]
        tensors = {}
        for name, info in header.items():
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
            if any(d < 0 for d in shape):
                raise ValueError(f"tensor {name} has a negative dimension: shape {list(shape)}")
            if not 0 <= start <= end <= len(body):
                raise ValueError(f"tensor {name} lies outside the file")
            width = _ITEMSIZE.get(str(info["dtype"]))
            if width is not None and math.prod(shape) * width != end - start:
                raise ValueError(f"tensor {name}: {end - start} bytes for shape {list(shape)}")
            tensors[name] = ProbeTensor(name, str(info["dtype"]), shape, body[start:end])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ProbeFileError(f"{path.name} is not a readable safetensors file ({exc})") from None
    return ProbeFile(path, metadata if isinstance(metadata, dict) else {}, tensors, raw)
