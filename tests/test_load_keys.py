"""Checkpoint keys mapped to model parameters as ``from_pretrained`` maps them, streamed
(refgen.load.keys): legacy renamed keys and the base model's prefix, and a conversion that fuses
one tensor per expert, each against a plain ``from_pretrained`` forward bit for bit.

The experts' conversion through the CLI and in bfloat16 is in tests/test_load_dtypes.py and the
zoo's sample (tests/test_zoo.py: qwen3_moe, gemma3 streamed)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from conftest import locked

from refgen.load import keys, plan, stream
from refgen.load.verify import Verifier

PROMPT = [[1, 5, 9, 3, 7, 2, 8]]


def _bert(tmp_path: Path) -> None:
    """A tiny BERT causal LM saved with the legacy ``LayerNorm.gamma`` / ``beta`` names and
    without the ``bert.`` prefix on the encoder's keys, as old checkpoints have them."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "bert",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=512,
        max_position_embeddings=64,
        is_decoder=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    state = {}
    for name, tensor in model.state_dict().items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma")
        name = name.replace("LayerNorm.bias", "LayerNorm.beta").removeprefix("bert.")
        state[name] = tensor.contiguous()
    # tied: to the word embeddings, and to the head's bias
    for tied in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
        state.pop(tied)
    config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})


def _load_streamed(folder: Path) -> Any:
    lock = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    chosen = plan.LoadPlan("stream", "stream", 10**6, 10**12, True)
    model, _ = plan.load_model(folder, Verifier(folder, locked(lock), progress=False), chosen)
    assert stream.is_streamed(model)
    return model


def _same_as_plain(folder: Path, model: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor(PROMPT)
    with torch.inference_mode():
        want = plain(input_ids=ids, output_hidden_states=True, use_cache=False)
        (got,) = plan.forwards(
            model, [ids], progress=False, output_hidden_states=True, use_cache=False
        )
    assert torch.equal(got.logits, want.logits)
    for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
        assert torch.equal(a, b)


def test_legacy_names_and_the_prefix_are_mapped_as_from_pretrained_maps_them(
    tmp_path: Path,
) -> None:
    _bert(tmp_path)
    model = _load_streamed(tmp_path)
    keymap = model._refgen_keys
    assert keymap.renamed["bert.embeddings.LayerNorm.weight"] == "embeddings.LayerNorm.gamma"
    assert keymap.renamed["bert.encoder.layer.1.output.LayerNorm.bias"] == (
        "encoder.layer.1.output.LayerNorm.beta"
    )
    assert not keymap.unexpected and not keymap.converted
    _same_as_plain(tmp_path, model)


def test_experts_stored_one_tensor_each_are_fused_by_transformers_converter(
    tmp_path: Path,
) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3_moe",
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        vocab_size=512,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = _load_streamed(tmp_path)
    conversion = model._refgen_keys.converted["model.layers.0.mlp.experts.gate_up_proj"]
    assert conversion.name == "MergeModulelist, Concatenate"
    assert conversion.keys[:2] == [
        "model.layers.0.mlp.experts.0.gate_proj.weight",
        "model.layers.0.mlp.experts.1.gate_proj.weight",
    ]
    assert conversion.targets["model.layers.0.mlp.experts.gate_up_proj"][0] == (4, 64, 64)
    _same_as_plain(tmp_path, model)


def test_a_checkpoint_key_no_parameter_takes_is_reported(tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=1, vocab_size=64)
    config.intermediate_size, config.num_attention_heads, config.num_key_value_heads = 64, 2, 2
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = keys.plan(model, shapes | {"model.layers.0.extra.weight": (2,)})
    assert found.unexpected == ("model.layers.0.extra.weight",)
    assert found.renamed["model.norm.weight"] == "model.norm.weight"


def test_a_conversion_that_cannot_run_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that fails (here: its operation made to fail) is a StreamingError naming
    the conversion and the parameter, which ``auto`` answers by loading in memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.core_model_loading import MergeModulelist

    from refgen.errors import StreamingError

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot")

    monkeypatch.setattr(MergeModulelist, "convert", fail)

    config = AutoConfig.for_model(
        "mixtral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=2,
        vocab_size=64,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(StreamingError, match=r"conversion MergeModulelist.* for model\.layers"):
        _load_streamed(tmp_path)
