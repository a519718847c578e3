"""Every decoder-only architecture of tests/archzoo.py, in every dtype: the generator's JSON
equals a plain from_pretrained forward under the determinism profile bit for bit, agrees with
the float64 NumPy implementation for the Llama family, and records what the model is."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import archzoo
import numpy as np
import pytest
from conftest import run_refgen
from tokenizers import Tokenizer

NUMPY_ATOL = 1e-4


@dataclass(frozen=True)
class Zoo:
    hf_home: Path
    specs: Path
    out: Path
    built: dict[str, archzoo.Built]
    plain: dict[str, Any]  # "<arch>-<dtype>" -> plain from_pretrained results
    exit_codes: dict[str, int]  # "<arch>" -> exit code of the `refgen generate` that built it

    def reference(self, arch: str, dtype: str) -> Any:
        return json.loads((self.out / f"{arch}-{dtype}.json").read_text())

    def manifest(self, arch: str, dtype: str) -> Any:
        return json.loads((self.out / f"{arch}-{dtype}.manifest.json").read_text())


def build_zoo(base: Path, per_arch: bool = False) -> Zoo:
    """All checkpoints, one lock each (offline), one ``refgen generate`` for every
    architecture x dtype (``per_arch``: one per architecture, for its own exit code), and one
    child process for the plain forwards."""
    hf_home, specs, out = base / "hf-home", base / "specs", base / "out"
    specs.mkdir(parents=True)
    built = {a.name: archzoo.build(hf_home / "hub", a) for a in archzoo.ARCHS}
    paths = []
    for b in built.values():
        first = archzoo.write_spec(specs, b, archzoo.DTYPES[0])
        run_refgen("lock", "--spec", first, "--offline", hf_home=hf_home)
        paths.append(first)
        for dtype in archzoo.DTYPES[1:]:
            spec = archzoo.write_spec(specs, b, dtype)
            shutil.copy(first.with_suffix(".lock.json"), spec.with_suffix(".lock.json"))
            paths.append(spec)
    groups = [[p for p in paths if p.stem.startswith(f"{n}-")] for n in built] if per_arch else []
    exit_codes = {}
    for group in groups or [paths]:
        args: list[str | Path] = ["generate", "--output-dir", out]
        for path in group:
            args += ["--spec", path]
        result = run_refgen(*args, hf_home=hf_home, check=not per_arch, timeout=1800)
        for path in group:
            exit_codes[path.stem.rsplit("-", 1)[0]] = result.returncode
    jobs = {
        f"{name}-{dtype}": (b.snapshot, dtype)
        for name, b in built.items()
        for dtype in archzoo.DTYPES
    }
    return Zoo(hf_home, specs, out, built, archzoo.plain_forwards(jobs, hf_home), exit_codes)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


ARCH_DTYPES = [(a.name, d) for a in archzoo.ARCHS for d in archzoo.DTYPES]


@pytest.mark.parametrize(("arch", "dtype"), ARCH_DTYPES)
def test_bit_identical_to_a_plain_from_pretrained_forward(zoo: Zoo, arch: str, dtype: str) -> None:
    ref = zoo.reference(arch, dtype)
    plain = zoo.plain[f"{arch}-{dtype}"]
    assert ref["dtype"] == dtype
    assert archzoo.same_as_plain(ref, plain)
    # the attention implementation from_pretrained picks by itself is the one used and recorded
    assert zoo.manifest(arch, dtype)["model"]["config"]["attn_implementation"] == plain["attn"]


@pytest.mark.parametrize("arch", [a.name for a in archzoo.ARCHS if a.numpy])
def test_llama_family_agrees_with_numpy(zoo: Zoo, arch: str) -> None:
    ref = zoo.reference(arch, "float32")
    assert archzoo.numpy_max_diff(ref, zoo.built[arch].snapshot) <= NUMPY_ATOL


@pytest.mark.parametrize(("arch", "dtype"), ARCH_DTYPES)
def test_floats_are_exact_values_of_the_run_dtype(zoo: Zoo, arch: str, dtype: str) -> None:
    import torch

    for case in zoo.reference(arch, dtype)["test_cases"]:
        values = [e["logit"] for e in case["top_10"]] + case["last_residual_f32"]
        assert all(type(v) is float and math.isfinite(v) for v in values)
        as_dtype = torch.tensor(values, dtype=torch.float64).to(getattr(torch, dtype))
        assert as_dtype.double().tolist() == values  # nothing lost: each is a value of dtype


@pytest.mark.parametrize("arch", [a.name for a in archzoo.ARCHS])
def test_the_json_keeps_the_contract_keys_that_apply(zoo: Zoo, arch: str) -> None:
    ref = zoo.reference(arch, "float32")
    config = json.loads((zoo.built[arch].snapshot / "config.json").read_text())
    for key in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "head_dim"):
        assert type(ref[key]) is int and ref[key] > 0
    assert ref["vocab_size"] == 512
    assert ref["hidden_size"] == 64 and ref["num_layers"] == 2 and ref["head_dim"] == 16
    assert type(ref["use_qk_norm"]) is bool
    assert ref["use_qk_norm"] is (config["model_type"] in ("qwen3", "gemma3_text", "olmo2"))
    if config["model_type"] == "gpt2":  # no rope, LayerNorm: left out rather than invented
        assert "rope_theta" not in ref and "rms_norm_eps" not in ref
        assert ref["num_kv_heads"] == 4 and ref["max_position_embeddings"] == 512
    elif config["model_type"] == "gemma3_text":  # rope per layer type: no single theta
        assert "rope_theta" not in ref and type(ref["rms_norm_eps"]) is float
    else:
        assert type(ref["rope_theta"]) is float and type(ref["rms_norm_eps"]) is float
    assert ref["num_kv_heads"] == config.get("num_key_value_heads", 4)


def test_the_manifest_records_what_the_model_is(zoo: Zoo) -> None:
    from transformers import AutoConfig

    def record(arch: str) -> Any:
        return zoo.manifest(arch, "float32")["model"]["config"]

    for arch, built in zoo.built.items():
        config = AutoConfig.from_pretrained(built.snapshot)
        data = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        assert record(arch)["config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert record(arch)["model_type"] == config.model_type
    gpt2 = record("gpt2")["resolved"]
    assert gpt2["layer_norm_epsilon"] == 1e-05 and "rope_parameters" not in gpt2
    assert record("llama3.1")["resolved"]["rope_parameters"]["rope_type"] == "llama3"
    assert record("llama3.1")["resolved"]["rope_parameters"]["factor"] == 8.0
    gemma2 = record("gemma2")["resolved"]
    assert (gemma2["attn_logit_softcapping"], gemma2["final_logit_softcapping"]) == (50.0, 30.0)
    assert gemma2["embed_scale"] == 8.0 and gemma2["sliding_window"] == 4
    assert record("gemma2")["attn_implementation"] == "eager"  # from_pretrained's own choice
    gemma3 = record("gemma3-text")["resolved"]
    assert set(gemma3["rope_parameters"]) == {"full_attention", "sliding_attention"}
    assert gemma3["layer_types"] == ["sliding_attention", "full_attention"]
    granite = record("granite")["resolved"]
    assert (granite["embedding_multiplier"], granite["logits_scaling"]) == (12.0, 8.0)
    assert record("mistral")["resolved"]["sliding_window"] == 4
    assert record("qwen3-sharded")["class"] == "Qwen3ForCausalLM"


def test_a_tokenizer_that_adds_bos(zoo: Zoo) -> None:
    snapshot = zoo.built["llama3"].snapshot
    tokenizer = Tokenizer.from_file(str(snapshot / "tokenizer.json"))
    bos = tokenizer.token_to_id(archzoo.BOS)
    for case in zoo.reference("llama3", "float32")["test_cases"]:
        assert case["tokens"][0] == bos
        assert case["tokens"] == tokenizer.encode(case["prompt"]).ids
    qwen3 = zoo.reference("qwen3", "float32")["test_cases"][0]
    assert bos not in qwen3["tokens"]


def test_sharded_checkpoint_loads_every_shard(zoo: Zoo) -> None:
    snapshot = zoo.built["qwen3-sharded"].snapshot
    shards = sorted(p.name for p in snapshot.glob("model-*.safetensors"))
    assert len(shards) > 2
    lock = json.loads((zoo.specs / "qwen3-sharded-float32.lock.json").read_text())
    assert {f["path"] for f in lock["files"]} >= {*shards, "model.safetensors.index.json"}
    # same seed and config as the untied single-file checkpoint: same numbers
    untied = zoo.reference("qwen3-untied", "float32")["test_cases"]
    assert zoo.reference("qwen3-sharded", "float32")["test_cases"] == untied


def test_numpy_reads_every_weight(zoo: Zoo) -> None:
    """The NumPy side is not vacuous: a changed weight moves its logits past the tolerance."""
    from qwen3_numpy import forward, read_checkpoint

    snapshot = zoo.built["llama3.1"].snapshot
    weights = read_checkpoint(snapshot)
    config = json.loads((snapshot / "config.json").read_text())
    tokens = zoo.reference("llama3.1", "float32")["test_cases"][0]["tokens"]
    before, _ = forward(weights, config, tokens)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    after, _ = forward(weights, config, tokens)
    assert np.max(np.abs(before - after)) > NUMPY_ATOL  # the llama3 scaling matters here
