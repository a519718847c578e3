"""A random-weight Qwen3 checkpoint of any shape, in a Hugging Face cache layout.

The benchmark needs the real model's shape (1.7B parameters, 3.4 GB of BF16) without the Hub, and
the tests need the same code path on a tiny shape. Weights come from numpy's PCG64 with a fixed
seed per tensor, so the bytes do not depend on torch's RNG, on threads or on the chunking; they
are streamed to disk tensor by tensor, so memory stays at one chunk whatever the model size.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from refgen import hfcache

# The published config.json of Qwen/Qwen3-1.7B-Base (only the values matter to transformers).
QWEN3_1_7B_BASE_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# The published config.json of meta-llama/Meta-Llama-3-8B: 32 layers, untied 128256-token
# embeddings and head, no q/k norms; 8.0B parameters, 16.1 GB of BF16.
LLAMA3_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

BENCH_REPO = "refgen-bench/Qwen3-1.7B-Base-random"
LLAMA_BENCH_REPO = "refgen-bench/Llama-3-8B-random"
SHARD_BYTES = 5 * 10**9  # at most this much per safetensors file, as the Hub's big models
FORMAT_VERSION = 1  # bump when the bytes this module writes change
WEIGHT_STD = 0.02
CHUNK_ELEMENTS = 1 << 24  # values generated per step: 64 MB of float32
FRESH_BUILDS = 0  # how many checkpoints this process wrote (0: all came from the cache)

# Text the byte-level BPE tokenizer is trained on; also the source of long benchmark prompts.
CORPUS = (
    "The capital of France is Paris, and the capital of Italy is Rome. Two plus two equals four, "
    "and three plus three equals six. Once upon a time, there was a little village by the sea "
    "where the fishermen went out every morning before the sun rose over the hills. The children "
    "of the village played on the beach while their parents mended the nets and sold the fish at "
    "the market. One day a storm came from the west, and the boats could not go out for a whole "
    "week. The people waited, told stories by the fire, and counted the days until the weather "
    "would change again. When the sky finally cleared, the water was calm and the catch was the "
    "best anyone could remember. A model that reads text predicts the next word from the words "
    "before it; the larger the model, the more it remembers about the language and the world. "
    "Numbers such as 1, 2, 3, 10, 42, 100 and 2048 appear in many documents, as do dates like "
    "1999 or 2024 and names of places like London, Berlin, Madrid, Tokyo and New York. "
)


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter a Qwen3ForCausalLM (or LlamaForCausalLM) checkpoint stores, by shape."""
    h = config["hidden_size"]
    d = config.get("head_dim") or h // config["num_attention_heads"]
    qk_norm = config["model_type"] == "qwen3"
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    inter = config["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
        if qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return dict(sorted(shapes.items()))


def _chunk_bf16(seed: int, index: int, chunk: int, count: int, centre: float) -> bytes:
    """BF16 bytes of one chunk of one tensor, from the chunk's own PCG64 stream.

    Each chunk has its own seed, so chunks can be generated on any thread in any order and the
    bytes stay the same. Norm weights are centred on 1 like a trained model's, projections on 0
    with a small spread, so activations keep a realistic scale through all the layers.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, chunk])))
    half_width = np.float32(WEIGHT_STD * np.sqrt(3.0))  # uniform with standard deviation WEIGHT_STD
    values = rng.random(count, dtype=np.float32)
    values *= 2 * half_width
    values += np.float32(centre) - half_width
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()  # truncation: a valid BF16


def _chunk_jobs(
    shapes: dict[str, tuple[int, ...]], names: list[str]
) -> list[tuple[int, int, int, float]]:
    """(tensor index, chunk number, element count, centre) for every chunk of *names*, in file
    order; the index is the tensor's place in the whole checkpoint, whatever the shard."""
    jobs = []
    for index, (name, shape) in enumerate(shapes.items()):
        if name not in names:
            continue
        total = int(np.prod(shape))
        centre = 1.0 if len(shape) == 1 else 0.0
        for chunk, start in enumerate(range(0, total, CHUNK_ELEMENTS)):
            jobs.append((index, chunk, min(CHUNK_ELEMENTS, total - start), centre))
    return jobs


def write_safetensors(
    path: Path, config: dict[str, Any], seed: int, names: list[str] | None = None
) -> str:
    """Stream a BF16 safetensors file of random weights (all, or the tensors *names*) to
    *path*; return its SHA-256.

    safetensors' own writers need every tensor in memory at once (and numpy has no bfloat16),
    so the file is written here following the format: u64 header size, JSON header, raw data.
    """
    shapes = tensor_shapes(config)
    names = list(shapes) if names is None else names
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        shape = shapes[name]
        size = int(np.prod(shape)) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as out, ThreadPoolExecutor(max_workers=2) as pool:
        for block in (struct.pack("<Q", len(header_bytes)), header_bytes):
            digest.update(block)
            out.write(block)

        jobs = _chunk_jobs(shapes, names)
        # A few chunks in flight at a time: both cores busy, memory bounded by the window.
        for lo in range(0, len(jobs), 4):
            window = jobs[lo : lo + 4]
            for data in pool.map(lambda job: _chunk_bf16(seed, *job), window):
                digest.update(data)
                out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return digest.hexdigest()


def repo_for(config: dict[str, Any]) -> str:
    return LLAMA_BENCH_REPO if config["model_type"] == "llama" else BENCH_REPO


def _git_blob_sha1(data: bytes) -> str:
    """The name huggingface_hub gives a small (non-LFS) file's blob: its git object id."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _small_files(config: dict[str, Any]) -> dict[str, bytes]:
    """config, generation config and tokenizer files (the tiny checkpoint's byte-level BPE)."""
    import tempfile

    from refgen.tiny import _tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        files = _tokenizer_files(Path(tmp))
    files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
    files["generation_config.json"] = (json.dumps(ids, indent=2, sort_keys=True) + "\n").encode()
    return dict(sorted(files.items()))


def build(
    hub_cache: Path,
    config: dict[str, Any] = QWEN3_1_7B_BASE_CONFIG,
    repo: str | None = None,
    seed: int = 0,
) -> tuple[str, Path]:
    """Write the checkpoint under ``hub_cache`` once; return (revision, snapshot folder).

    The revision is derived from everything that decides the bytes, so a finished snapshot is
    reused as is and a changed recipe gets a new revision instead of a stale cache.
    """
    small = _small_files(config)
    recipe = {
        "format": FORMAT_VERSION,
        "seed": seed,
        "std": WEIGHT_STD,
        "files": {n: hashlib.sha256(d).hexdigest() for n, d in small.items()},
        "config": config,
    }
    revision = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    repo = repo or repo_for(config)
    writer = hfcache.SnapshotWriter(hub_cache, repo, revision)
    shards = _shards(config)
    weights = next(iter(shards)) if len(shards) == 1 else INDEX
    if writer.has_ref() and (writer.snapshot / weights).exists():
        return revision, writer.snapshot  # finished before: the ref is written last
    global FRESH_BUILDS
    FRESH_BUILDS += 1
    for name, data in small.items():
        writer.link(name, writer.add_bytes(_git_blob_sha1(data), data))
    if len(shards) > 1:
        sizes = {n: int(np.prod(s)) * 2 for n, s in tensor_shapes(config).items()}
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {n: file for file, names in shards.items() for n in names},
        }
        data = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        writer.link(INDEX, writer.add_bytes(_git_blob_sha1(data), data))
    for file, names in shards.items():
        # LFS blobs are named by their SHA-256
        writer.link(
            file,
            writer.add_streamed(partial(write_safetensors, config=config, seed=seed, names=names)),
        )
    writer.set_ref()
    return revision, writer.snapshot


INDEX = "model.safetensors.index.json"


def _shards(config: dict[str, Any]) -> dict[str, list[str]]:
    """File name -> tensor names, in order, at most SHARD_BYTES each (one file if it fits)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in tensor_shapes(config).items():
        nbytes = int(np.prod(shape)) * 2
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        return {"model.safetensors": groups[0]}
    n = len(groups)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": g for i, g in enumerate(groups)}


def weight_files(snapshot: Path) -> list[Path]:
    return sorted(snapshot.glob("*.safetensors"))


def main(argv: list[str]) -> None:
    """``python -m refgen.bench.checkpoint HUB_CACHE CONFIG_JSON``: build, print the result.

    The benchmark builds in a child so that its own process stays small: a measured child's
    peak RSS starts at its parent's RSS at fork time.
    """
    hub_cache, config_json = argv
    revision, snapshot = build(Path(hub_cache), json.loads(config_json))
    print(json.dumps({"revision": revision, "snapshot": str(snapshot), "built": FRESH_BUILDS}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
