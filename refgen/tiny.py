"""A tiny, deterministic Qwen3 checkpoint and tokenizer in the Hugging Face cache layout; and a
tiny Llama 3.1 (llama3 rope scaling) with a probes spec, the reference porters' tests compare
their ports with (:func:`build_llama31`, :func:`write_llama31_spec`).

Tests and ``demo`` run the same code path as the real model on it: same architecture class,
BF16 weights up-cast to F32, a byte-level BPE tokenizer of the Qwen2 kind, a pinned revision in
``hub/models--ORG--NAME/snapshots/REV``. Weights come from numpy's PCG64 generator, not torch's
RNG, so their bytes (and so the lock's hashes) do not change with torch's version.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refgen import hfcache

TINY_REPO = "refgen-test/tiny-qwen3"
SEED = 20260101
# The tiny shape, shared with the benchmark's tiny run (refgen.bench.run.TINY_CONFIG).
SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    **SHAPE,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "attention_bias": False,
    "torch_dtype": "bfloat16",
}
# Llama 3.1 as the Hub ships it (rope_scaling beside rope_theta, untied head, BF16 weights), at
# the tiny shape with 4 decoder layers (a bug planted in a middle layer has layers on both sides).
LLAMA31_REPO = "refgen-test/tiny-llama31"
LLAMA31_SEED = 20260731
LLAMA31_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    **SHAPE,
    "num_hidden_layers": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        # short, so that the tiny head's frequencies fall in all three of llama3's bands
        # (wavelengths 6.3, 32 and from 167 up against 64 / 4 and 64 / 1)
        "original_max_position_embeddings": 64,
    },
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "torch_dtype": "bfloat16",
}
# What a porter's loop asks of the oracle: every hidden state and every decoder layer's raw
# output at every position, the logits at every position, and the float64 rounding floor.
LLAMA31_PROBES = """
[probes]
hidden_states = "all"
positions = "all"
logits = "all"
modules = {modules}
rounding_floor = true
"""
PROMPTS = ("The capital of France is", "Two plus two equals", "Once upon a time, there was a")
# A fixed corpus the tokenizer's merges are learned from (deterministically, below).
CORPUS = (
    "The capital of France is Paris. Two plus two equals four. Once upon a time, there was a "
    "little model that wanted to be tested. The quick brown fox jumps over the lazy dog. "
    "There is a time and a place for everything, and the place is here."
)
NUM_MERGES = 120


@dataclass(frozen=True)
class TinyCheckpoint:
    repo: str
    revision: str
    snapshot: Path


def build(
    hub_cache: Path,
    repo: str = TINY_REPO,
    seed: int = SEED,
    config: dict[str, Any] | None = None,
    std: float = 0.08,
) -> TinyCheckpoint:
    """Write the checkpoint into ``hub_cache`` (an ``HF_HUB_CACHE`` folder); idempotent.

    ``config`` (default :data:`CONFIG`) and ``std`` (of the weights) make other shapes of the
    same architecture, e.g. crosscheck's larger subject."""
    config = CONFIG if config is None else config
    with tempfile.TemporaryDirectory() as tmp:
        files = _tokenizer_files(Path(tmp))
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        files["generation_config.json"] = b'{\n  "bos_token_id": 0,\n  "eos_token_id": 0\n}\n'
        files["model.safetensors"] = _weights(seed, config, std)
    return _write_cache(hub_cache, repo, files)


def write_spec(folder: Path, revision: str, output: str, repo: str = TINY_REPO) -> Path:
    """A spec for the tiny checkpoint (the three prompts of the real reference)."""
    path = folder / "tiny-qwen3.toml"
    path.write_text(spec_text("tiny-qwen3-forward", output, repo, revision, PROMPTS))
    return path


def spec_text(name: str, output: str, repo: str, revision: str, prompts: Sequence[str]) -> str:
    """A float32 / sdpa / top-10 spec (the template of the tiny and the benchmark specs)."""
    listed = ", ".join(json.dumps(p) for p in prompts)  # JSON strings are TOML basic strings
    return f"""schema = 1

[reference]
name = "{name}"
output = "{output}"

[model]
repo = "{repo}"
revision = "{revision}"
dtype = "float32"
attn_implementation = "sdpa"

[run]
prompts = [{listed}]
top_k = 10
"""


def build_llama31(hub_cache: Path, seed: int = LLAMA31_SEED) -> TinyCheckpoint:
    """The tiny Llama 3.1 (:data:`LLAMA31_CONFIG`) into ``hub_cache``; idempotent, and the same
    bytes (so the same revision) on any host: weights from numpy's PCG64, config written here.

    Use::

        checkpoint = tiny.build_llama31(hf_home / "hub")
        spec = tiny.write_llama31_spec(project / "specs", checkpoint.revision, "../out/l.json")
        # refgen lock --spec SPEC --offline; refgen generate --spec SPEC (HF_HOME=hf_home)
    """
    config = LLAMA31_CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        files = _tokenizer_files(Path(tmp))
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        files["generation_config.json"] = b'{\n  "bos_token_id": 0,\n  "eos_token_id": 0\n}\n'
        files["model.safetensors"] = _weights(seed, config, 0.08)
    return _write_cache(hub_cache, LLAMA31_REPO, files)


def write_llama31_spec(
    folder: Path,
    revision: str,
    output: str,
    dtype: str = "float32",
    modules: Sequence[str] = ("model.layers.*",),
    prompts: Sequence[str] = PROMPTS,
) -> Path:
    """``tiny-llama31.toml`` in *folder*: the tiny Llama 3.1 in *dtype* with every probe a port
    is compared on (:data:`LLAMA31_PROBES`; *modules*: the module path patterns)."""
    path = folder / "tiny-llama31.toml"
    text = spec_text("tiny-llama31-probes", output, LLAMA31_REPO, revision, prompts)
    text = text.replace('dtype = "float32"', f'dtype = "{dtype}"')
    path.write_text(text + LLAMA31_PROBES.format(modules=json.dumps(list(modules))))
    return path


def _weights(seed: int, config: dict[str, Any], std: float) -> bytes:
    import torch
    from safetensors.torch import save
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(config["model_type"], **settings)
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    tensors = {}
    for name, param in sorted(model.state_dict().items()):
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # tied to the embeddings, as in Qwen3-1.7B
        shape = tuple(param.shape)
        if name.endswith("norm.weight"):
            values = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            values = std * rng.standard_normal(shape)
        tensors[name] = torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16)
    return save(tensors, metadata={"format": "pt"})


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _learn_merges(alphabet: list[str]) -> list[tuple[str, str]]:
    """Plain BPE on the corpus, ties broken by the pair's text, so the result is fixed."""
    words: Counter[tuple[str, ...]] = Counter()
    for i, piece in enumerate(CORPUS.split(" ")):
        text = ("" if i == 0 else " ") + piece
        words[tuple(alphabet[b] for b in text.encode())] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(NUM_MERGES):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def _tokenizer_files(folder: Path) -> dict[str, bytes]:
    from transformers import Qwen2Tokenizer

    alphabet = _byte_alphabet()
    merges = _learn_merges(alphabet)
    vocab = {token: i for i, token in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    tokenizer.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _write_cache(hub_cache: Path, repo: str, files: dict[str, bytes]) -> TinyCheckpoint:
    """The layout huggingface_hub writes: content-addressed blobs, snapshot symlinks, a ref."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    revision = hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    writer = hfcache.SnapshotWriter(hub_cache, repo, revision)
    for name, data in files.items():
        writer.link(name, writer.add_bytes(digests[name], data))
    writer.set_ref()
    return TinyCheckpoint(repo, revision, writer.snapshot)
