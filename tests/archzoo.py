"""Tiny seeded checkpoints of every decoder-only architecture refgen is tested on, built by
transformers itself (``AutoModelForCausalLM.from_config`` under ``torch.manual_seed``), and a
plain ``from_pretrained`` forward to hold the generator's numbers against.

Shared by tests/test_architectures.py and tests/arch_table.py (which prints the
architecture x dtype table). Every checkpoint is hidden 64, 2 layers, vocabulary 512, with the
project's byte-level tokenizer (refgen.tiny); ``bos`` ones add a BOS token through the
tokenizer's template post-processor, as Llama and Gemma tokenizers do.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ROOT, refgen_env, run

from refgen import tiny

PROMPTS = ("The capital of France is", "Two plus two equals", "Once upon a time, there was a")
DTYPES = ("float32", "bfloat16", "float16")
TOP_K = 10
BOS = "<s>"

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # short, so that the tiny head's frequencies fall in all three of llama3's bands
    "original_max_position_embeddings": 64,
}


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    config: Mapping[str, Any]
    numpy: bool = False  # the float64 NumPy implementation covers it (tests/qwen3_numpy.py)
    bos: bool = False
    shard_kb: int | None = None  # save_pretrained(max_shard_size=...) into several files
    seed: int = 0


ARCHS: tuple[Arch, ...] = (
    Arch(
        "llama3",
        "llama",
        {**_COMMON, "head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
        numpy=True,
        bos=True,
    ),
    Arch("llama3.1", "llama", {**_COMMON, "rope_parameters": _LLAMA31_ROPE}, numpy=True, bos=True),
    # a 4-token window, so that the window matters for the prompts (8 to 12 tokens)
    Arch("mistral", "mistral", {**_COMMON, "head_dim": 16, "sliding_window": 4}, numpy=True),
    Arch("qwen2", "qwen2", {**_COMMON, "tie_word_embeddings": True}, numpy=True),
    Arch("qwen3", "qwen3", {**_COMMON, "head_dim": 16, "tie_word_embeddings": True}, numpy=True),
    Arch(
        "qwen3-untied",
        "qwen3",
        {**_COMMON, "head_dim": 16, "tie_word_embeddings": False},
        numpy=True,
    ),
    Arch(
        "qwen3-sharded",
        "qwen3",
        {**_COMMON, "head_dim": 16, "tie_word_embeddings": False},
        numpy=True,
        shard_kb=100,
    ),
    Arch(
        "gemma2",
        "gemma2",
        {
            **_COMMON,
            "head_dim": 16,
            "sliding_window": 4,
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
        bos=True,
    ),
    Arch(
        "gemma3-text",
        "gemma3_text",
        {
            **_COMMON,
            "head_dim": 16,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        bos=True,
    ),
    Arch("phi3", "phi3", {**_COMMON}),
    Arch(
        "gpt2",
        "gpt2",
        {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512, "vocab_size": 512}
        | {"bos_token_id": 0, "eos_token_id": 0},
    ),
    Arch("olmo2", "olmo2", {**_COMMON}),
    Arch(
        "granite",
        "granite",
        {
            **_COMMON,
            "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22,
            "attention_multiplier": 0.0625,
            "logits_scaling": 8.0,
        },
    ),
)
BY_NAME = {a.name: a for a in ARCHS}


@dataclass(frozen=True)
class Built:
    arch: Arch
    repo: str
    revision: str
    snapshot: Path


def tokenizer_files(bos: bool) -> dict[str, bytes]:
    """refgen.tiny's byte-level BPE; with ``bos``, a BOS token its post-processor prepends."""
    from transformers import Qwen2Tokenizer

    alphabet = tiny._byte_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet)}
    merges = tiny._learn_merges(alphabet)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    kwargs: dict[str, Any] = {}
    if bos:
        vocab[BOS] = len(vocab)
        # transformers 5 writes add_bos_token into tokenizer.json's TemplateProcessing
        kwargs = {"bos_token": BOS, "add_bos_token": True}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, **kwargs)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def checkpoint_files(arch: Arch) -> dict[str, bytes]:
    """config.json, weights (safetensors; an index when sharded) and the tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch.model_type, **arch.config)
    torch.manual_seed(arch.seed)
    model = AutoModelForCausalLM.from_config(config)
    files = tokenizer_files(arch.bos)
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {"max_shard_size": f"{arch.shard_kb}KB"} if arch.shard_kb else {}
        model.save_pretrained(tmp, safe_serialization=True, **kwargs)
        files.update({p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()})
    return files


def build(hub_cache: Path, arch: Arch) -> Built:
    """The checkpoint in ``hub_cache`` (models--refgen-test--NAME/snapshots/REV)."""
    ck = tiny._write_cache(hub_cache, f"refgen-test/tiny-{arch.name}", checkpoint_files(arch))
    return Built(arch, ck.repo, ck.revision, ck.snapshot)


def write_spec(folder: Path, built: Built, dtype: str, **model: str) -> Path:
    """A spec for one checkpoint and dtype; output ../out/<name>-<dtype>.json."""
    name = f"{built.arch.name}-{dtype}"
    extra = "".join(f'{k} = "{v}"\n' for k, v in model.items())
    path = folder / f"{name}.toml"
    path.write_text(
        f"""schema = 1

[reference]
name = "{name}"
output = "../out/{name}.json"

[model]
repo = "{built.repo}"
revision = "{built.revision}"
dtype = "{dtype}"
{extra}
[run]
prompts = {json.dumps(list(PROMPTS))}
top_k = {TOP_K}
"""
    )
    return path


# A plain from_pretrained forward in a child process that applies the determinism profile before
# torch is imported, as refgen does: the generator must match it bit for bit. A job that fails
# is recorded with its reason (the zoo counts models plain transformers cannot run either).
_PLAIN = """
import json, sys
from refgen import determinism
determinism.apply_environment()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging
determinism.configure_torch()
hf_logging.set_verbosity_error()
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
results = {}
for key, (snapshot, dtype, prompts, top_k) in jobs.items():
    model = None
    try:
        model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=getattr(torch, dtype))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(snapshot)
        cases = []
        with torch.inference_mode():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
                out_ = model(input_ids=ids, output_hidden_states=True, use_cache=False)
                values, indices = torch.topk(out_.logits[0, -1], top_k)
                cases.append({
                    "tokens": ids[0].tolist(),
                    "index": indices.tolist(),
                    "logit": [float(v) for v in values.tolist()],
                    # batch 0, last position, in the model's own layout (streams first)
                    "residual": out_.hidden_states[-1][..., 0, -1, :].float().tolist(),
                })
        results[key] = {"attn": model.config._attn_implementation, "cases": cases}
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        results[key] = {"error": type(exc).__name__ + ": " + (lines[0][:240] if lines else "")}
    del model
with open(out, "w") as f:
    json.dump(results, f)
"""


def run_plain(
    jobs: Mapping[str, tuple[Path, str]], hf_home: Path, out: Path, timeout: int = 900
) -> dict[str, Any]:
    """key -> plain from_pretrained results, or {"error": why} where it fails, for (snapshot,
    dtype) jobs, in one child process that writes them to *out*."""
    payload = {k: (str(s), d, list(PROMPTS), TOP_K) for k, (s, d) in jobs.items()}
    env = refgen_env(hf_home, {"HF_HUB_OFFLINE": "1"})
    run([sys.executable, "-c", _PLAIN, json.dumps(payload), str(out)], env, ROOT, timeout=timeout)
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def plain_forwards(jobs: Mapping[str, tuple[Path, str]], hf_home: Path) -> dict[str, Any]:
    """key -> plain from_pretrained results, for (snapshot, dtype) jobs that must all run."""
    with tempfile.TemporaryDirectory() as tmp:
        data = run_plain(jobs, hf_home, Path(tmp) / "plain.json")
    failed = {k: v["error"] for k, v in data.items() if "error" in v}
    assert not failed, f"plain from_pretrained failed: {failed}"
    return data


def same_as_plain(reference: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
    """Every token, top-k index, logit and residual float equal (``==`` on the float values)."""
    cases = reference["test_cases"]
    if len(cases) != len(plain["cases"]):
        return False
    for case, want in zip(cases, plain["cases"], strict=True):
        top = case[f"top_{TOP_K}"]
        if (
            case["tokens"] != want["tokens"]
            or [e["index"] for e in top] != want["index"]
            or [e["logit"] for e in top] != want["logit"]
            or case["last_residual_f32"] != want["residual"]
        ):
            return False
    return True


def numpy_max_diff(reference: Mapping[str, Any], snapshot: Path) -> float:
    """Largest |refgen - float64 NumPy| over top-k logits and residuals; top-k indices must match
    (else +inf)."""
    import numpy as np
    from qwen3_numpy import forward, read_checkpoint

    weights = read_checkpoint(snapshot)
    config = json.loads((snapshot / "config.json").read_text())
    worst = 0.0
    for case in reference["test_cases"]:
        logits, residual = forward(weights, config, case["tokens"])
        top = case[f"top_{TOP_K}"]
        want = np.argsort(-logits, kind="stable")[:TOP_K]
        if [e["index"] for e in top] != want.tolist():
            return float("inf")
        got = np.array([e["logit"] for e in top])
        worst = max(worst, float(np.max(np.abs(got - logits[want]))))
        worst = max(worst, float(np.max(np.abs(np.array(case["last_residual_f32"]) - residual))))
    return worst
