"""Per-layer probes: what a run captures beyond the JSON, and how each tensor is named.

A spec's ``[probes]`` table asks for hidden states of chosen layers (at the last position or at
every position) and for the full last-position logits. They go into ``X.safetensors`` beside
``X.json``, one tensor per prompt and layer, in the run's dtype exactly as the forward returned
them (no conversion: a bfloat16 run's tensors are bfloat16 in the file).

Layer numbering is transformers' ``output_hidden_states`` tuple of a model with N decoder
layers (N = ``config.num_hidden_layers``), N + 1 entries:

* layer ``0``: the embedding output, as the model feeds it to decoder layer 0 (after any scaling
  the model applies to its embeddings);
* layer ``j`` for ``1 <= j < N``: the residual stream after decoder layer ``j`` (its output,
  which is decoder layer ``j + 1``'s input, counting decoder layers from 1);
* layer ``N``: the final norm's output, the LM head's input (transformers records it in place of
  the last decoder layer's raw output; ``last_residual_f32`` in the JSON is its last position).

Tensor names (``i`` is the prompt's index in ``run.prompts``, from 0):

* ``prompt{i}.hidden_states.layer{j}``: ``hidden_states[j][0]``, shape ``[positions, hidden]``
  (every position, or ``[1, hidden]`` for ``positions = "last"``);
* ``prompt{i}.logits.last``: ``logits[0, -1]``, shape ``[vocab]``.

The file's only metadata key, ``refgen.probes``, holds canonical JSON (sorted keys) naming the
schema, model, dtype, layers, positions and prompts. One key, because safetensors writes its
metadata map in hash order: with several keys the header bytes changed from process to process
(measured: three runs, three SHA-256s), with one they do not. safetensors lays the tensors out
by dtype, then name, so the same tensors give the same bytes.

Reading (:func:`read`) needs no torch: the comparison in :mod:`refgen.compare` runs in auditors'
processes that never import it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refgen.errors import RefgenError, SpecError
from refgen.modelinfo import positions

if TYPE_CHECKING:
    import numpy as np

    from refgen.spec import Spec

SUFFIX = ".safetensors"
METADATA_KEY = "refgen.probes"
SCHEMA = "refgen.probes/1"
LAYER_NUMBERING = (
    "hidden_states[j] of transformers' output_hidden_states: 0 = embedding output, "
    "j = output of decoder layer j (1-based), num_layers = final norm output"
)
MAX_HEADER = 100 * 1024 * 1024
_NAME = re.compile(r"^prompt(\d+)\.(?:hidden_states\.layer(\d+)|logits\.last)$")
# safetensors dtype -> (numpy dtype of the raw words, how to widen them to float64 exactly)
_FLOAT_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


class ProbeFileError(RefgenError):
    """A probe file is not a readable safetensors file."""


def probe_path(reference: Path) -> Path:
    """``X.json`` -> ``X.safetensors``, beside it (the artifact's ``probes`` sibling)."""
    return reference.with_name(reference.name.removesuffix(".json") + SUFFIX)


def hidden_name(prompt: int, layer: int) -> str:
    return f"prompt{prompt}.hidden_states.layer{layer}"


def logits_name(prompt: int) -> str:
    return f"prompt{prompt}.logits.last"


@dataclass(frozen=True)
class TensorName:
    """A parsed tensor name: ``layer`` is None for the logits."""

    prompt: int
    layer: int | None

    def describe(self) -> str:
        """Where a porter looks: "layer 7 of prompt 2" or "the last-position logits of ..."."""
        where = f"layer {self.layer}" if self.layer is not None else "the last-position logits"
        return f"{where} of prompt {self.prompt}"


def parse_name(name: str) -> TensorName | None:
    match = _NAME.match(name)
    if match is None:
        return None
    return TensorName(int(match.group(1)), int(match.group(2)) if match.group(2) else None)


def sort_key(name: str) -> tuple[int, int, int, str]:
    """Prompt order, then layers upwards, then the logits; unknown names last, by name."""
    parsed = parse_name(name)
    if parsed is None:
        return (1 << 62, 2, 0, name)
    if parsed.layer is None:
        return (parsed.prompt, 1, 0, name)
    return (parsed.prompt, 0, parsed.layer, name)


def field_name(name: str) -> str:
    """The name without its prompt (``hidden_states.layer7``): statistics are kept per field."""
    return name.split(".", 1)[1] if parse_name(name) is not None else name


# --- capture (in the generator's process) --------------------------------------------------------


class Capture:
    """Collects the probe tensors of one run, prompt by prompt, straight from the forward."""

    def __init__(self, spec: Spec) -> None:
        if spec.probes is None:
            raise ValueError("the spec declares no probes")
        self.spec = spec
        self.probes = spec.probes
        self.layers: tuple[int, ...] = ()
        self.num_layers = -1
        self.tensors: dict[str, Any] = {}

    def start(self, num_layers: int) -> None:
        """Check the requested layers against the model; called before the first forward."""
        self.num_layers = num_layers
        self.layers = resolve_layers(self.spec, num_layers)

    def add(self, prompt: int, out: Any) -> None:
        """Keep this prompt's tensors from the forward's outputs (``output_hidden_states=True``)."""
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

    def metadata(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model_repo": self.spec.repo,
            "model_revision": self.spec.revision,
            "dtype": self.spec.dtype,
            "num_layers": self.num_layers,
            "layer_numbering": LAYER_NUMBERING,
            "hidden_states": list(self.layers),
            "positions": self.probes.positions if self.probes.hidden_states is not None else None,
            "logits": self.probes.logits,
            "prompts": list(self.spec.prompts),
        }

    def dump(self) -> bytes:
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


def dump(tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes:
    """The safetensors bytes: tensors in name order, one metadata key (see the module doc)."""
    from safetensors.torch import save

    ordered = {name: tensors[name].contiguous() for name in sorted(tensors)}
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
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
        """The values as float64, exactly (every BF16/F16/F32 value is a float64 value)."""
        import numpy as np

        kind = _FLOAT_DTYPES.get(self.dtype)
        if kind is None:
            raise ProbeFileError(f"tensor {self.name} has dtype {self.dtype}, not a float type")
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
        raw = path.read_bytes()
    except OSError as exc:
        raise ProbeFileError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(raw) < 8:
        raise ProbeFileError(f"{path.name} is too short to be a safetensors file")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(MAX_HEADER, len(raw) - 8):
        raise ProbeFileError(f"{path.name}: header size {size} does not fit the file")
    try:
        header = json.loads(raw[8 : 8 + size])
        if not isinstance(header, dict):
            raise TypeError("header is not an object")
        meta = header.pop("__metadata__", None) or {}
        metadata = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
        body = raw[8 + size :]
        tensors = {}
        for name, info in header.items():
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
            if not 0 <= start <= end <= len(body):
                raise ValueError(f"tensor {name} lies outside the file")
            width = _ITEMSIZE.get(str(info["dtype"]))
            if width is not None and math.prod(shape) * width != end - start:
                raise ValueError(f"tensor {name}: {end - start} bytes for shape {list(shape)}")
            tensors[name] = ProbeTensor(name, str(info["dtype"]), shape, body[start:end])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ProbeFileError(f"{path.name} is not a readable safetensors file ({exc})") from None
    return ProbeFile(path, metadata if isinstance(metadata, dict) else {}, tensors, raw)
