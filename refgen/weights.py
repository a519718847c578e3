"""Which files of a checkpoint are its weights, by the checkpoint's own word.

A safetensors checkpoint names its weights: ``model.safetensors.index.json``'s ``weight_map``,
else the single ``model.safetensors``. Exactly those are locked and loaded, so an extra
``consolidated.safetensors`` (Mistral repositories ship one beside the shards) is neither hashed
nor read, and a lock that leaves the weights out cannot yield a model with random weights.
Pickle checkpoints are refused: unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from refgen import jsonio
from refgen.errors import CheckpointError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
# Weight files a causal LM loader could read: never locked unless the checkpoint names them.
WEIGHT_PATTERNS = ("*.safetensors", *PICKLE, "*.gguf", "*.h5", "*.msgpack", "*.onnx", "*.npz")
CONVERT_HINT = (
    "Convert it to safetensors once, in an environment you trust with that file, e.g. "
    '`python -c "from transformers import AutoModelForCausalLM as M; '
    "M.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\"` (then copy the "
    "tokenizer files), and point the spec at the converted folder (`[model] path`)."
)


def is_weight_file(name: str) -> bool:
    return any(fnmatch.fnmatch(Path(name).name, p) for p in WEIGHT_PATTERNS)


def named_weights(names: Iterable[str], folder: Path, index: bytes | None = None) -> list[str]:
    """The weight files the checkpoint names (index first when sharded), all present in
    ``names``; CheckpointError otherwise. ``folder`` holds the index, if any; *index*, when
    given, is its content already checked against the lock (refgen.hub.read_verified), so no
    unverified byte is parsed."""
    present = set(names)
    if INDEX in present:
        try:
            raw = index if index is not None else jsonio.read_bytes(folder / INDEX)
            weight_map = jsonio.loads(raw)["weight_map"]
            shards = sorted({str(f) for f in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else repr(exc)
            raise CheckpointError(
                f"{INDEX} is unreadable ({why}). If it is a damaged copy, fetch the model "
                "again; if the checkpoint ships it so, it cannot be loaded."
            ) from None
        lacking = [s for s in shards if s not in present]
        if lacking or not shards:
            raise CheckpointError(
                f"{INDEX} names weight files {lacking or shards} that are not "
                f"{'there' if not shards else 'among the files'}; the checkpoint is incomplete."
            )
        return [INDEX, *shards]
    if SINGLE in present:
        return [SINGLE]
    pickles = sorted(n for n in present if any(fnmatch.fnmatch(n, p) for p in PICKLE))
    if pickles:
        raise CheckpointError(
            f"the checkpoint's weights are pickle files ({', '.join(pickles)}), which refgen "
            f"never loads: unpickling can run arbitrary code. {CONVERT_HINT}"
        )
    raise CheckpointError(
        f"no {SINGLE} or {INDEX} among the model files ({', '.join(sorted(present)) or 'none'}): "
        "there are no weights to load. If a lock lists these files, regenerate it with "
        "`nox -s lock-model` (it locks the weights the checkpoint names)."
    )


def select(names: Iterable[str], folder: Path, index: bytes | None = None) -> list[str]:
    """What to lock and load: top-level non-weight files (config, tokenizer, generation config)
    plus the weights the checkpoint names (*index*: as :func:`named_weights`); other weight
    files are left out."""
    names = sorted(set(names))
    weights = named_weights(names, folder, index)
    others = [n for n in names if "/" not in n and not is_weight_file(n) and n != INDEX]
    return sorted({*others, *weights})
