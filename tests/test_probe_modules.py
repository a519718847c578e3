"""Module probes and the rounding floor, end to end on the tiny Llama 3.1 (refgen.tiny).

The generator's probe files (in memory and streamed, float32 and bfloat16) are held against a
plain ``from_pretrained`` forward with forward hooks on the same modules, run in a child process
under the determinism profile, in float32, bfloat16 and float64; the rounding floor against the
float64 one, recomputed here with NumPy, and against the float64 NumPy Llama
(tests/qwen3_numpy.py), which shares no code with torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_refgen
from qwen3_numpy import forward as numpy_forward
from qwen3_numpy import read_checkpoint
from tiny_llama import generate_reference, run_plain_forward

from refgen import probes, tiny

MODULES = (
    "model.embed_tokens",
    "model.layers.*",
    "model.layers.*.input_layernorm",
    "model.layers.*.self_attn",
    "model.layers.*.post_attention_layernorm",
    "model.layers.*.mlp",
    "model.norm",
    "lm_head",
)
NUM_LAYERS = tiny.LLAMA31_CONFIG["num_hidden_layers"]
PROMPTS = list(tiny.PROMPTS)


@dataclass(frozen=True)
class Built:
    hf_home: Path
    snapshot: Path
    root: Path

    def spec(self, dtype: str) -> Path:
        return self.root / dtype / "specs" / "tiny-llama31.toml"

    def file(self, dtype: str, suffix: str, streamed: bool = False) -> Path:
        folder = self.root / dtype / ("stream" if streamed else "out")
        return folder / f"llama31{suffix}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """float32 in memory and streamed, bfloat16 in memory: every module probe and the floor."""
    base = tmp_path_factory.mktemp("modules")
    hf_home = base / "hf-home"
    checkpoint = tiny.build_llama31(hf_home / "hub")
    result = Built(hf_home, checkpoint.snapshot, base)
    for dtype in ("float32", "bfloat16"):

        def write_spec(specs: Path, dtype: str = dtype) -> Path:
            return tiny.write_llama31_spec(
                specs, checkpoint.revision, "../out/llama31.json", dtype, MODULES
            )

        generate_reference(base / dtype, hf_home, write_spec, "--load", "memory")
    stream = result.file("float32", ".json", streamed=True).parent
    run_refgen(
        "generate",
        "--spec",
        result.spec("float32"),
        "--stream",
        "--memory-budget",
        "1B",
        "--output-dir",
        stream,
        hf_home=hf_home,
    )
    return result


HOOKED_FORWARD = """
import sys
from refgen import determinism

determinism.apply_environment()  # the profile, before torch is imported
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

determinism.configure_torch()
snapshot, out, patterns, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
tokenizer = AutoTokenizer.from_pretrained(snapshot)
tensors = {}
for dtype in ("float32", "bfloat16", "float64"):
    model = AutoModelForCausalLM.from_pretrained(
        snapshot, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    )
    seen = {}

    def keep(path):
        def hook(module, args, output):
            first = output if isinstance(output, torch.Tensor) else output[0]
            seen[path] = first[0].clone()
        return hook

    for path, module in model.named_modules():
        parts = path.split(".")
        for pattern in patterns.split(","):
            want = pattern.split(".")
            if len(want) == len(parts) and all(w in ("*", p) for w, p in zip(want, parts)):
                module.register_forward_hook(keep(path))
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            seen.clear()
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            result = model(input_ids=ids, output_hidden_states=True, use_cache=False)
            for j, hidden in enumerate(result.hidden_states):
                tensors[f"{dtype}/prompt{i}.hidden_states.layer{j}"] = hidden[0].contiguous()
            tensors[f"{dtype}/prompt{i}.logits.all"] = result.logits[0].contiguous()
            for path, value in seen.items():
                tensors[f"{dtype}/prompt{i}.module.{path}"] = value.contiguous()
save_file(tensors, out)
"""


@pytest.fixture(scope="module")
def plain(built: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``dtype/name`` -> the plain forward's tensor, for every probe the generator keeps."""
    out = tmp_path_factory.mktemp("plain") / "plain.safetensors"
    return run_plain_forward(HOOKED_FORWARD, built.snapshot, out, ",".join(MODULES), *PROMPTS)


def module_paths() -> list[str]:
    layers = [f"model.layers.{k}" for k in range(NUM_LAYERS)]
    subs = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    return [
        "model.embed_tokens",
        *layers,
        *(f"{layer}.{sub}" for layer in layers for sub in subs),
        "model.norm",
        "lm_head",
    ]


@pytest.mark.parametrize(
    ("dtype", "streamed"), [("float32", False), ("float32", True), ("bfloat16", False)]
)
def test_module_probes_equal_a_hooked_plain_forward_bit_for_bit(
    built: Built, plain: dict[str, Any], dtype: str, streamed: bool
) -> None:
    """Every module output, hidden state and logit, in memory and streamed, is the plain
    forward's tensor byte for byte (the streamed model's hooks fire on its prompt threads)."""
    from safetensors.torch import load_file

    got = load_file(built.file(dtype, ".safetensors", streamed))
    names = {probes.module_name(i, p) for i in range(len(PROMPTS)) for p in module_paths()}
    names |= {probes.hidden_name(i, j) for i in range(len(PROMPTS)) for j in range(NUM_LAYERS + 1)}
    names |= {probes.logits_name(i, "all") for i in range(len(PROMPTS))}
    names |= {probes.ids_name(i) for i in range(len(PROMPTS))}
    assert set(got) == names
    for name in sorted(names - {probes.ids_name(i) for i in range(len(PROMPTS))}):
        tensor, expected = got[name], plain[f"{dtype}/{name}"]
        assert (tensor.dtype, tensor.shape) == (expected.dtype, expected.shape), name
        assert tensor.view(-1).view(np_dtype_bytes(tensor)).numpy().tobytes() == (
            expected.view(-1).view(np_dtype_bytes(expected)).numpy().tobytes()
        ), name
    metadata = probes.read(built.file(dtype, ".safetensors", streamed)).metadata
    assert metadata["modules"] == [p for p in module_order()]
    assert metadata["module_patterns"] == list(MODULES)


def np_dtype_bytes(tensor: Any) -> Any:
    """A same-width integer dtype, so that bfloat16 bytes reach numpy."""
    import torch

    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]


def module_order() -> list[str]:
    """named_modules() order: parents before children, registration order."""
    order = ["model.embed_tokens"]
    for k in range(NUM_LAYERS):
        order += [f"model.layers.{k}", f"model.layers.{k}.self_attn", f"model.layers.{k}.mlp"]
        order += [f"model.layers.{k}.input_layernorm", f"model.layers.{k}.post_attention_layernorm"]
    return [*order, "model.norm", "lm_head"]


def test_streamed_probe_file_is_the_in_memory_one(built: Built) -> None:
    memory = built.file("float32", ".safetensors").read_bytes()
    assert built.file("float32", ".safetensors", streamed=True).read_bytes() == memory


def test_hidden_states_and_decoder_layer_outputs(built: Built) -> None:
    """hidden_states.layer{j} is module model.layers.{j-1} for j < N; layer N is the final
    norm's output, and the last decoder layer's raw output (before that norm) differs."""
    from safetensors.torch import load_file

    got = load_file(built.file("float32", ".safetensors"))
    doc = json.loads(built.file("float32", ".json").read_bytes())
    n = NUM_LAYERS
    for i, case in enumerate(doc["test_cases"]):
        for j in range(1, n):
            assert got[probes.hidden_name(i, j)].equal(
                got[probes.module_name(i, f"model.layers.{j - 1}")]
            )
        assert got[probes.hidden_name(i, n)].equal(got[probes.module_name(i, "model.norm")])
        raw = got[probes.module_name(i, f"model.layers.{n - 1}")]
        assert not raw.equal(got[probes.hidden_name(i, n)])
        assert got[probes.hidden_name(i, 0)].equal(got[probes.module_name(i, "model.embed_tokens")])
        assert got[probes.module_name(i, "lm_head")].equal(got[probes.logits_name(i, "all")])
        assert got[probes.ids_name(i)].tolist() == case["tokens"]
        assert case["last_residual_f32"] == got[probes.hidden_name(i, n)][-1].tolist()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rounding_floor_is_the_error_against_a_float64_forward(
    built: Built, plain: dict[str, Any], dtype: str
) -> None:
    """Each entry is recomputed from the file's tensor and the plain float64 forward's."""
    read = probes.read(built.file(dtype, ".safetensors"))
    floor = read.metadata["rounding_floor"]
    assert (floor["against"], floor["dtype"]) == ("float64", dtype)
    manifest = json.loads(built.file(dtype, ".manifest.json").read_bytes())
    assert manifest["model"]["config"]["rounding_floor_float32_parameters"] == []  # all float64
    floats = {n for n, t in read.tensors.items() if t.dtype != "I64"}
    assert set(floor["tensors"]) == floats
    for name in sorted(floats):
        ref = read.tensors[name].values()
        err = ref - plain[f"float64/{name}"].numpy()
        entry = floor["tensors"][name]
        assert entry["err_rms"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-12, abs=0), name
        assert entry["ref_rms"] == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-12), name
        assert entry["err_max_abs"] == float(np.abs(err).max()), name
        rows = err.reshape(err.shape[0], -1)
        assert entry["positions_err_rms"] == pytest.approx(
            np.sqrt(np.mean(rows**2, axis=1)), rel=1e-12, abs=0
        ), name
        assert len(entry["positions_ref_rms"]) == ref.shape[0]
    # The embedding output is a weight row in both runs: exact. Deeper, the rounding shows.
    layer0 = floor["tensors"][probes.hidden_name(0, 0)]
    if dtype == "float32":  # the BF16 checkpoint's weights are exact in float32
        assert layer0["err_rms"] == 0.0
    last = floor["tensors"][probes.hidden_name(0, NUM_LAYERS)]
    assert 0 < last["err_rms"] < (1e-5 if dtype == "float32" else 5e-2) * last["ref_rms"]


def test_rounding_floor_against_the_numpy_float64_llama(
    built: Built, plain: dict[str, Any]
) -> None:
    """The recorded error of the last position's logits and final residual against the
    independent float64 NumPy Llama: it differs from the error against NumPy by at most the
    distance between transformers' float64 forward and NumPy's (RMS is a norm), and that
    distance is under half the float32 error: transformers computes the rotary angles in
    float32 whatever the dtype, in both of its runs, so that rounding is not in the floor."""
    config = json.loads((built.snapshot / "config.json").read_text())
    # config.json keeps Llama 3.1's Hub form: rope_scaling beside rope_theta
    config["rope_parameters"] = {**config["rope_scaling"], "rope_theta": config["rope_theta"]}
    weights = read_checkpoint(built.snapshot)
    read = probes.read(built.file("float32", ".safetensors"))
    floor = read.metadata["rounding_floor"]["tensors"]

    def rms(x: Any) -> float:
        return float(np.sqrt(np.mean(np.square(x))))

    for i in range(len(PROMPTS)):
        tokens = [int(t) for t in read.tensors[probes.ids_name(i)].values()]
        logits, residual = numpy_forward(weights, config, tokens)
        last, final = probes.logits_name(i, "all"), probes.hidden_name(i, NUM_LAYERS)
        for name, exact in ((last, logits), (final, residual)):
            ref = read.tensors[name].values()[-1]
            float64 = plain[f"float64/{name}"][-1].numpy()
            recorded = floor[name]["positions_err_rms"][-1]
            against_numpy, gap = rms(ref - exact), rms(float64 - exact)
            assert abs(recorded - against_numpy) <= gap * (1 + 1e-9), name
            assert 0 < gap < 0.5 * against_numpy, (name, gap, against_numpy)


def test_verify_rebuilds_module_probes_and_floor_bit_for_bit(built: Built, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(built.root / "float32", ws)
    result = run_refgen(
        "verify", "--spec", ws / "specs" / "tiny-llama31.toml", "--json", hf_home=built.hf_home
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["summary"]
    assert report["comparison"]["probes"]["identical"] is True


def test_diff_names_the_first_module_that_differs(built: Built, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    dest = tmp_path / "b"
    dest.mkdir()
    a = built.file("float32", ".json")
    shutil.copy2(a, dest / a.name)
    with safe_open(built.file("float32", ".safetensors"), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    name = probes.module_name(1, "model.layers.2.mlp")
    tensors[name][3, 5] = torch.nextafter(tensors[name][3, 5], torch.tensor(float("inf")))
    (dest / "llama31.safetensors").write_bytes(
        probes.dump(tensors, json.loads(metadata[probes.METADATA_KEY]))
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "refgen", "diff", str(a), str(dest / a.name), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 10, proc.stderr
    assert report["first_probe_difference"] == (
        "first difference at module model.layers.2.mlp of prompt 1"
    )


def test_a_pattern_matching_no_module_is_refused_before_the_forward(
    built: Built, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(built.root / "float32" / "specs", ws / "specs")
    (ws / "out").mkdir()
    spec = ws / "specs" / "tiny-llama31.toml"
    spec.write_text(spec.read_text().replace('"model.layers.*.mlp"', '"model.layers.*.ffn"'))
    result = run_refgen("generate", "--spec", spec, hf_home=built.hf_home, check=False)
    assert result.returncode == 2, result.stderr
    assert (
        "refgen: error: tiny-llama31.toml: 'probes.modules' pattern 'model.layers.*.ffn' "
        "matches no module of the model." in result.stderr
    )
    assert "Close: " in result.stderr and "Traceback" not in result.stderr
    assert "forward:" not in result.stderr
    assert not any((ws / "out").iterdir())
