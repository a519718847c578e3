"""The run dtype as ``from_pretrained`` applies it: parameters transformers keeps in float32.

A tiny DeepSeek-V2 (a mixture of experts whose router ``gate.weight`` the model class keeps in
float32 through ``_keep_in_fp32_modules_strict``), built by transformers from a seeded config,
is loaded in bfloat16 by refgen in memory and streamed, and by a plain
``AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)``: every parameter's dtype and
value, the logits and every hidden state must be equal bit for bit. Through the CLI, both modes
write the same JSON, equal to a plain forward, and the manifest names the float32 parameters.

The checkpoint is written in the model's own tensor layout (``state_dict`` keys: the experts
fused, as transformers holds them), which both strategies read as is; and as ``save_pretrained``
writes it (one tensor per expert), which both convert as transformers does.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import archzoo
import pytest
from conftest import locked, run_refgen
from safetensors import safe_open

from refgen import tiny
from refgen.load import memory as load_memory
from refgen.load import plan, stream
from refgen.load.model import float32_parameters
from refgen.load.verify import Verifier

# The router of the one MoE layer (layer 0 is dense: first_k_dense_replace = 1).
KEPT = ["model.layers.1.mlp.gate.weight"]
CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": None,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}
PROMPTS = [[1, 5, 9, 3, 7], [4, 2], [8, 8, 8, 1, 2, 3, 4, 5, 6, 7, 9, 11]]


def checkpoint_files(stored: str) -> dict[str, bytes]:
    """config.json and model.safetensors of the seeded model, its floating tensors stored in
    *stored* ("float32"; or "mixed": bfloat16 except the float32-kept router, as a model
    loaded in bfloat16 by transformers and saved has them)."""
    import torch
    from safetensors.torch import save
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("deepseek_v2", **CONFIG)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if stored == "mixed":
        state = {k: v if k in KEPT else v.to(torch.bfloat16) for k, v in state.items()}
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        files = {"config.json": (Path(tmp) / "config.json").read_bytes()}
    files["model.safetensors"] = save(state, metadata={"format": "pt"})
    return files


def _write(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}


@pytest.mark.parametrize("stored", ["float32", "mixed"])
def test_float32_kept_parameters_load_as_from_pretrained(stored: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    lock = _write(tmp_path, checkpoint_files(stored))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    plain.eval()
    assert float32_parameters(plain, "bfloat16") == KEPT  # the model does keep one
    inputs = [torch.tensor([ids]) for ids in PROMPTS]
    with torch.inference_mode():
        expected = [plain(input_ids=x, output_hidden_states=True, use_cache=False) for x in inputs]
    in_memory, _ = load_memory.load_verified_model(tmp_path, locked(lock), "bfloat16")
    verifier = Verifier(tmp_path, locked(lock), progress=False)
    streamed, _ = stream.load_streamed_model(tmp_path, verifier, "bfloat16", budget=1)
    want = dict(plain.named_parameters())
    for model in (in_memory, streamed):
        assert float32_parameters(model, "bfloat16") == KEPT
        got = dict(model.named_parameters())
        assert {n: p.dtype for n, p in got.items()} == {n: p.dtype for n, p in want.items()}
    for name, param in in_memory.named_parameters():
        assert torch.equal(param, want[name]), name
    for model in (in_memory, streamed):
        with torch.inference_mode():
            outs = list(
                plan.forwards(
                    model, inputs, progress=False, output_hidden_states=True, use_cache=False
                )
            )
        for got_out, want_out in zip(outs, expected, strict=True):
            assert torch.equal(got_out.logits, want_out.logits)
            for a, b in zip(got_out.hidden_states, want_out.hidden_states, strict=True):
                assert torch.equal(a, b)


def test_the_router_rounded_through_bfloat16_would_differ(tmp_path: Path) -> None:
    """The comparison above can fail: casting the float32 router to bfloat16 first (what refgen
    did before) changes the logits of this checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    _write(tmp_path, checkpoint_files("float32"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    rounded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    with torch.no_grad():
        for name in KEPT:
            param = rounded.get_parameter(name)
            param.copy_(param.to(torch.bfloat16).to(torch.float32))
    ids = torch.tensor([PROMPTS[2]])
    with torch.inference_mode():
        a = plain(input_ids=ids, use_cache=False).logits
        b = rounded(input_ids=ids, use_cache=False).logits
    assert not torch.equal(a, b)


def test_cli_records_the_float32_parameters_and_matches_a_plain_forward(tmp_path: Path) -> None:
    files = checkpoint_files("float32")
    with tempfile.TemporaryDirectory() as tmp:
        files |= tiny._tokenizer_files(Path(tmp))
    hf_home = tmp_path / "hf-home"
    checkpoint = tiny._write_cache(hf_home / "hub", "refgen-test/tiny-moe", files)
    arch = archzoo.Arch("tiny-moe", "deepseek_v2", CONFIG)
    built = archzoo.Built(arch, checkpoint.repo, checkpoint.revision, checkpoint.snapshot)
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = archzoo.write_spec(specs, built, "bfloat16")
    run_refgen("lock", "--spec", spec, "--offline", hf_home=hf_home)
    plain = archzoo.plain_forwards({"moe": (checkpoint.snapshot, "bfloat16")}, hf_home)["moe"]
    outputs = {}
    for mode in ("memory", "stream"):
        out = tmp_path / mode
        run_refgen("generate", "--spec", spec, "--load", mode, "--output-dir", out, hf_home=hf_home)
        reference = (out / "tiny-moe-bfloat16.json").read_bytes()
        manifest = json.loads((out / "tiny-moe-bfloat16.manifest.json").read_text())
        assert manifest["loading"]["mode"] == mode
        assert manifest["model"]["config"]["float32_parameters"] == KEPT
        assert archzoo.same_as_plain(json.loads(reference), plain)
        outputs[mode] = reference
    assert outputs["memory"] == outputs["stream"]


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_the_layout_save_pretrained_writes_loads_as_from_pretrained(
    tmp_path: Path, mode: str
) -> None:
    """``save_pretrained`` stores the experts one tensor each, which transformers fuses as it
    loads (its checkpoint conversion, refgen.load.keys): both strategies apply it, in the dtype
    transformers casts each tensor to, and equal a plain forward bit for bit."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("deepseek_v2", **CONFIG)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as stored:
        names = set(stored.keys())
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in names  # one tensor per expert
    lock = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ids = torch.tensor([PROMPTS[2]])
    with torch.inference_mode():
        want = plain(input_ids=ids, use_cache=False).logits
    asked = plan.LoadPlan(mode, mode, 10**6, 10**12, True)
    model, _ = plan.load_model(
        tmp_path, Verifier(tmp_path, locked(lock), progress=False), asked, "bfloat16"
    )
    assert plan.as_loaded(asked, model).mode == mode
    assert float32_parameters(model, "bfloat16") == KEPT
    with torch.inference_mode():
        (out,) = plan.forwards(model, [ids], progress=False, use_cache=False)
    assert torch.equal(out.logits, want)


def test_auto_loads_in_memory_what_the_streamer_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint the streamed strategy refuses (a conversion it cannot apply, here made to
    fail) loads in memory when ``auto`` chose to stream and the weights fit, and equals a plain
    forward; a stream asked for is refused."""
    import torch
    from transformers import AutoModelForCausalLM

    from refgen.errors import StreamingError
    from refgen.load import keys

    lock = _write(tmp_path, checkpoint_files("float32"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ids = torch.tensor([PROMPTS[2]])
    with torch.inference_mode():
        want = plain(input_ids=ids, use_cache=False).logits

    def refuse(model: Any, shapes: Any) -> keys.KeyPlan:
        raise StreamingError("transformers' checkpoint conversion X cannot be applied")

    monkeypatch.setattr(keys, "plan", refuse)
    chosen = plan.LoadPlan("stream", "auto", 10**6, 10**12, True)
    model, _ = plan.load_model(
        tmp_path, Verifier(tmp_path, locked(lock), progress=False), chosen, "bfloat16"
    )
    assert plan.as_loaded(chosen, model).mode == "memory"
    with torch.inference_mode():
        (out,) = plan.forwards(model, [ids], progress=False, use_cache=False)
    assert torch.equal(out.logits, want)
    asked = plan.LoadPlan("stream", "stream", 10**6, 10**12, True)
    with pytest.raises(StreamingError, match="conversion X"):
        plan.load_model(
            tmp_path, Verifier(tmp_path, locked(lock), progress=False), asked, "bfloat16"
        )
