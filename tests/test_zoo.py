"""The zoo's CI sample (tests/zoo.py, :data:`zoo.SAMPLE`), in float32 and bfloat16, in memory and
streamed, through one ``refgen generate --keep-going`` per dtype x mode; and the up-front checks
of ``config.json`` (refgen.modelinfo.read_checkpoint) on damaged copies of a real checkpoint.

The whole mapping runs in ``nox -s zoo``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import zoo
from conftest import TinySetup, run_refgen

from refgen import modelinfo, tiny
from refgen.errors import CheckpointError

DTYPES = ("float32", "bfloat16")
REFUSED = {
    # type -> (dtypes refused, what the one line says); plain from_pretrained fails on each too
    "emu3": (DTYPES, "AutoModelForCausalLM has no class for it"),
    "reformer": (("bfloat16",), "cannot run in bfloat16 on CPU"),
    "xlnet": (("bfloat16",), "cannot run in bfloat16 on CPU"),
    "xmod": (DTYPES, "xmod cannot run on a prompt's input_ids alone"),
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> zoo.Zoo:
    return zoo.run_zoo(tmp_path_factory.mktemp("zoo"), zoo.SAMPLE, DTYPES, zoo.MODES)


def test_the_walker_takes_the_installed_mapping() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = zoo.model_types()
    assert types == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and len(types) > 100
    assert set(zoo.SAMPLE) <= set(types)


def test_the_sample_is_built_small(sample: zoo.Zoo) -> None:
    assert all("error" not in sample.built[t] for t in zoo.SAMPLE), sample.built
    config = zoo.tiny_config("qwen3")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, 512)
    hybrid = zoo.tiny_config("gemma3_text")  # one layer of each kind
    assert sorted(set(hybrid.layer_types)) == ["full_attention", "sliding_attention"]
    # two of each where one does not build (zamba's shared block is tied across its layers)
    kinds = zoo.tiny_model("zamba").config.layers_block_type
    assert kinds == ["linear_attention"] * 2 + ["hybrid"] * 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", zoo.MODES)
@pytest.mark.parametrize("model_type", zoo.SAMPLE)
def test_bit_identical_to_plain_from_pretrained_or_refused(
    sample: zoo.Zoo, model_type: str, dtype: str, mode: str
) -> None:
    row = sample.row(model_type, dtype, mode)
    refused_dtypes, message = REFUSED.get(model_type, ((), ""))
    if dtype in refused_dtypes:
        assert row.exit == 2 and message in row.reason, row
        assert row.plain_error, row  # plain from_pretrained fails too: a refusal, not a limit
        assert not (sample.work / "out" / f"{dtype}-{mode}" / f"{model_type}-{dtype}.json").exists()
    else:
        assert (row.exit, row.identical) == (0, True), row


def test_a_dtype_the_model_cannot_run_is_refused_naming_type_and_dtype(tmp_path: Path) -> None:
    """deepseek_v4 in float16 feeds a float32 tensor to a float16 linear, in plain
    from_pretrained too: exit 2 naming the type and the dtype, in memory and streamed."""
    run = zoo.run_zoo(tmp_path, ["deepseek_v4"], ["float16"], zoo.MODES)
    for mode in zoo.MODES:
        row = run.row("deepseek_v4", "float16", mode)
        assert row.exit == 2 and "deepseek_v4 cannot run in float16 on CPU" in row.reason, row
        assert row.plain_error, row
    log = (tmp_path / "log-float16-stream.txt").read_text()
    assert "Traceback" not in log


def test_keep_going_builds_the_others_and_exits_with_the_worst(sample: zoo.Zoo) -> None:
    """emu3 and xmod are refused; the specs after each in the same process still ran."""
    log = (sample.work / "log-float32-memory.txt").read_text()
    failed = "emu3-float32.toml (exit 2), xmod-float32.toml (exit 2)"
    assert f"refgen: 2 of {len(zoo.SAMPLE)} specs failed: {failed}" in log
    assert (sample.work / "done-float32-memory").read_text() == "2"  # the process's exit code


def test_facts_come_from_the_text_tower(sample: zoo.Zoo) -> None:
    ref = sample.reference("gemma3", "float32", "memory")
    assert (ref["hidden_size"], ref["num_layers"], ref["vocab_size"]) == (64, 2, 512)
    record = sample.manifest("gemma3", "float32", "memory")["model"]["config"]
    assert record["model_type"] == "gemma3"
    assert record["text_config"] == {"class": "Gemma3TextConfig", "model_type": "gemma3_text"}


def test_facts_a_model_does_not_have_are_left_out(sample: zoo.Zoo) -> None:
    mamba = sample.reference("mamba", "float32", "memory")
    for key in ("num_attention_heads", "num_kv_heads", "head_dim", "rope_theta"):
        assert key not in mamba
    assert mamba["hidden_size"] == 64 and mamba["use_qk_norm"] is False
    xlnet = sample.reference("xlnet", "float32", "memory")
    assert "max_position_embeddings" not in xlnet  # -1: no limit
    assert zoo.tiny_config("xlnet").max_position_embeddings == -1


def test_the_qwen3_json_keeps_the_contract_keys_in_order(sample: zoo.Zoo) -> None:
    ref = sample.reference("qwen3", "float32", "memory")
    keys = [k for k in ref if k not in ("model_repo", "model_revision", "methodology")]
    assert keys == [
        "torch_version",
        "transformers_version",
        "dtype",
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "num_kv_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "rope_theta",
        "rms_norm_eps",
        "use_qk_norm",
        "test_cases",
    ]


def test_several_hidden_state_streams_are_kept_and_recorded(sample: zoo.Zoo) -> None:
    """gemma3n's hidden states are [4 AltUp streams, batch, positions, hidden]."""
    for mode in zoo.MODES:
        ref = sample.reference("gemma3n_text", "float32", mode)
        residual = ref["test_cases"][0]["last_residual_f32"]
        assert len(residual) == 4 and all(len(stream) == 64 for stream in residual)
        layout = sample.manifest("gemma3n_text", "float32", mode)["model"]["config"]
        assert layout["hidden_states"]["streams"] == 4
        assert layout["hidden_states"]["last_residual_shape"] == [4, 64]
    qwen3 = sample.manifest("qwen3", "float32", "memory")["model"]["config"]["hidden_states"]
    assert qwen3["streams"] is None and qwen3["last_residual_shape"] == [64]


# --- config.json checked before the model loads ---------------------------------------------------


def _folder(tmp_path: Path, config: dict[str, Any] | str) -> Path:
    """A copy of the tiny Qwen3 checkpoint with *config* as its config.json."""
    source = tiny.build(tmp_path / "hub").snapshot
    folder = tmp_path / "checkpoint"
    shutil.copytree(source, folder)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    return folder


def _refusal(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        modelinfo.read_checkpoint(folder, sorted(folder.glob("*.safetensors")))
    return str(info.value)


CONFIG_CASES: dict[str, tuple[dict[str, Any] | str, str]] = {
    "invalid JSON": ("{not json", "config.json is not valid JSON"),
    "a list": ("[1, 2]", "not an object"),
    "no model_type": ({k: v for k, v in tiny.CONFIG.items() if k != "model_type"}, "no model_type"),
    "unknown type": (tiny.CONFIG | {"model_type": "no_such_model"}, "unknown to transformers"),
    "remote code": (
        tiny.CONFIG | {"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "m.Custom"}},
        "remote code, which refgen never runs",
    ),
    "encoder-decoder": (tiny.CONFIG | {"model_type": "t5"}, "'t5' is an encoder-decoder model"),
    "not a causal LM": (tiny.CONFIG | {"model_type": "vit"}, "not a causal language model"),
    "vocabulary": (
        tiny.CONFIG | {"vocab_size": 600},
        "says vocab_size 600, so the model's token embedding has 600 rows, but the weights' "
        "model.embed_tokens.weight has 512",
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_bad_config_is_refused_naming_why(tmp_path: Path, case: str) -> None:
    config, message = CONFIG_CASES[case]
    assert message in _refusal(_folder(tmp_path, config))


def test_a_good_config_gives_its_facts(tmp_path: Path) -> None:
    checkpoint = modelinfo.read_checkpoint(_folder(tmp_path, tiny.CONFIG))
    assert (checkpoint.model_type, checkpoint.model_class) == ("qwen3", "Qwen3ForCausalLM")
    assert checkpoint.facts == {
        "hidden_size": 64,
        "num_layers": 2,
        "num_attention_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
    }


def test_the_cli_refuses_before_loading_with_exit_2(tiny_copy: TinySetup) -> None:
    """End to end: a config whose vocabulary does not fit the weights, locked as it is."""
    config = tiny_copy.checkpoint.snapshot / "config.json"
    data = json.loads(config.read_text()) | {"vocab_size": 600}
    config.unlink()  # a link into the cache's blobs: replace it, do not write through it
    config.write_text(json.dumps(data))
    run_refgen("lock", "--spec", tiny_copy.spec, "--offline", hf_home=tiny_copy.hf_home)
    result = run_refgen(
        "generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home, check=False
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("refgen: error:")]
    assert len(errors) == 1 and "vocab_size 600" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "forward:" not in result.stderr


def test_a_garbage_tokenizer_is_refused_in_one_line(tiny_copy: TinySetup) -> None:
    tokenizer = tiny_copy.checkpoint.snapshot / "tokenizer.json"
    tokenizer.unlink()  # a link into the cache's blobs: replace it, do not write through it
    tokenizer.write_text('{"version": "1.0", "model": 7}')
    run_refgen("lock", "--spec", tiny_copy.spec, "--offline", hf_home=tiny_copy.hf_home)
    result = run_refgen(
        "generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "cannot read the checkpoint's tokenizer" in result.stderr
    assert "Traceback" not in result.stderr and "forward:" not in result.stderr
