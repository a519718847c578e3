"""Per-layer probes: the [probes] spec table, X.safetensors, and how diff and verify report it.

The end-to-end tests run on a tiny Llama built by transformers itself (hidden 64, 2 layers,
seeded ``from_config``, BF16 weights like a real checkpoint) with the project's byte-level
tokenizer, once per module. The probe file is checked bit for bit against a plain
``from_pretrained`` forward's ``output_hidden_states`` and logits, run in a child process under
the determinism profile: never against the generator's own output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import MINIMAL_SPEC, ROOT, run_refgen, write_spec_text
from tiny_llama import generate_reference, run_plain_forward

from refgen import artifact, audit, compare, probes, tiny
from refgen.errors import SpecError
from refgen.spec import load_spec

LLAMA_REPO = "refgen-test/tiny-llama"
LLAMA_SEED = 8
NAME = "tiny_llama_probes"
PROMPTS = ["The capital of France is", "Two plus two equals", "Once upon a time, there was a"]
NUM_LAYERS = 2

# --- the [probes] table ---------------------------------------------------------------------------


def spec_with(tmp_path: Path, probes_table: str) -> Path:
    return write_spec_text(tmp_path, MINIMAL_SPEC + probes_table)


def test_no_probes_table_records_nothing_new(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, ""))
    assert spec.probes is None
    assert "probes" not in spec.as_dict()  # the manifest's spec content is as before


@pytest.mark.parametrize(
    ("table", "hidden", "positions", "logits"),
    [
        ('hidden_states = "all"', "all", "last", None),
        ('hidden_states = [2, 0]\npositions = "all"', (0, 2), "all", None),
        ('logits = "last"', None, "last", "last"),
        ('hidden_states = "all"\npositions = "last"\nlogits = "last"', "all", "last", "last"),
        ('logits = "all"', None, "last", "all"),
        ("input_ids = true", None, "last", None),
        ('modules = ["model.layers.*"]\npositions = "all"', None, "all", None),
    ],
)
def test_probes_table_is_parsed(
    tmp_path: Path, table: str, hidden: Any, positions: str, logits: str | None
) -> None:
    spec = load_spec(spec_with(tmp_path, "[probes]\n" + table + "\n"))
    assert spec.probes is not None
    assert (spec.probes.hidden_states, spec.probes.positions, spec.probes.logits) == (
        hidden,
        positions,
        logits,
    )
    assert spec.as_dict()["probes"] == spec.probes.as_dict()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('hidden_states = "some"', "'probes.hidden_states' must be \"all\" or a list"),
        ("hidden_states = 3", "'probes.hidden_states' must be \"all\" or a list of layer"),
        ("hidden_states = []", "'probes.hidden_states' is an empty list"),
        ("hidden_states = [0, -1]", "'probes.hidden_states[1]' must be a layer index >= 0"),
        ('hidden_states = [0, "1"]', "'probes.hidden_states[1]' must be a layer index"),
        ("hidden_states = [1, 1]", "'probes.hidden_states' lists layer 1 twice"),
        ('hidden_states = "all"\npositions = "first"', "'probes.positions' must be one of"),
        ('positions = "all"', "'probes.positions' applies to probe tensors"),
        ('logits = "first"', "'probes.logits' must be one of ['last', 'all']"),
        ('layers = "all"', "unknown key(s) ['layers'] in [probes]"),
        ("modules = []", "'probes.modules' is an empty list"),
        ('modules = ["model..norm"]', "'probes.modules[0]' must be a module path"),
        ('modules = ["model/norm"]', "'probes.modules[0]' must be a module path"),
        ("modules = [3]", "'probes.modules[0]' must be a module path"),
        (
            'modules = ["model.norm", "model.norm"]',
            "'probes.modules' lists pattern 'model.norm' twice",
        ),
        ('modules = "model.norm"', "'probes.modules' must be a list"),
        ("input_ids = false", "'probes.input_ids' cannot be false"),
        ("input_ids = 1", "'probes.input_ids' must be a boolean, got an integer"),
        ("rounding_floor = true", "'probes.rounding_floor' applies to probe tensors"),
        ("input_ids = true\nrounding_floor = true", "'probes.rounding_floor' measures float"),
    ],
)
def test_bad_probes_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(spec_with(tmp_path, "[probes]\n" + table + "\n"))
    assert message in str(err.value)


# --- capture and the file format ---------------------------------------------------------------


def test_capture_keeps_the_run_dtype_and_bytes_are_canonical(tmp_path: Path) -> None:
    """A BF16 run's tensors are BF16 in the file, byte for byte; names in prompt/layer order."""
    import torch

    spec = load_spec(spec_with(tmp_path, '[probes]\nhidden_states = [0, 2]\nlogits = "last"\n'))
    capture = probes.Capture(spec)
    capture.start(2)
    gen = torch.Generator().manual_seed(0)
    hidden = tuple(torch.randn(1, 5, 8, generator=gen).to(torch.bfloat16) for _ in range(3))
    logits = torch.randn(1, 5, 11, generator=gen).to(torch.bfloat16)
    ids = torch.tensor([[7, 3, 500, 0, 9]])
    capture.add(0, ids, SimpleNamespace(hidden_states=hidden, logits=logits))
    data = capture.dump()
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)

    read = probes.read(path)
    assert sorted(read.tensors, key=probes.sort_key) == [
        "prompt0.input_ids",
        "prompt0.hidden_states.layer0",
        "prompt0.hidden_states.layer2",
        "prompt0.logits.last",
    ]
    assert read.tensors["prompt0.input_ids"].dtype == "I64"
    assert read.tensors["prompt0.input_ids"].values().tolist() == [7.0, 3.0, 500.0, 0.0, 9.0]
    layer2 = read.tensors["prompt0.hidden_states.layer2"]
    assert (layer2.dtype, layer2.shape) == ("BF16", (1, 8))  # positions = "last" (default)
    assert layer2.data == hidden[2][0, -1:].contiguous().view(torch.int16).numpy().tobytes()
    assert np.array_equal(layer2.values(), hidden[2][0, -1:].to(torch.float64).numpy())
    assert read.tensors["prompt0.logits.last"].shape == (11,)
    assert read.metadata["hidden_states"] == [0, 2]
    assert read.metadata["dtype"] == "float32"  # the spec's; the tensors say what they hold
    # one metadata key: safetensors writes several in hash order (bytes would vary by process)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == [probes.METADATA_KEY]
    # the same capture dumped again (other dict order) gives the same bytes
    again = probes.dump(dict(reversed(capture.tensors.items())), capture.metadata())
    assert again == data


def test_a_spec_may_ask_for_the_token_ids_only(tmp_path: Path) -> None:
    import torch

    spec = load_spec(spec_with(tmp_path, "[probes]\ninput_ids = true\n"))
    capture = probes.Capture(spec)
    capture.start(2, ["", "model", "model.norm"])
    out = SimpleNamespace(hidden_states=None, logits=torch.zeros(1, 3, 11))
    for prompt, ids in enumerate(([[1, 2, 3]], [[4]])):
        capture.add(prompt, torch.tensor(ids, dtype=torch.int32), out)
    path = tmp_path / "ids.safetensors"
    path.write_bytes(capture.dump())
    read = probes.read(path)
    assert {n: (t.dtype, t.shape) for n, t in read.tensors.items()} == {
        "prompt0.input_ids": ("I64", (3,)),
        "prompt1.input_ids": ("I64", (1,)),
    }
    assert read.metadata["positions"] is None and read.metadata["modules"] == []
    assert spec.as_dict()["probes"] == {"input_ids": True}


def test_tensor_names_parse_and_sort_in_forward_order() -> None:
    names = [
        "prompt1.input_ids",
        "prompt0.logits.all",
        "prompt0.module.model.norm",
        "prompt0.module.model.layers.1",
        "prompt0.hidden_states.layer2",
        "prompt0.module.model.layers.1.mlp",
        "prompt0.hidden_states.layer1",
        "prompt0.module.model.layers.0",
        "prompt0.hidden_states.layer0",
        "prompt0.input_ids",
    ]
    assert sorted(names, key=probes.sort_key) == [
        "prompt0.input_ids",
        "prompt0.hidden_states.layer0",
        "prompt0.module.model.layers.0",
        "prompt0.hidden_states.layer1",
        "prompt0.module.model.layers.1.mlp",
        "prompt0.module.model.layers.1",
        "prompt0.hidden_states.layer2",
        "prompt0.module.model.norm",
        "prompt0.logits.all",
        "prompt1.input_ids",
    ]
    parsed = probes.parse_name("prompt3.module.model.layers.2.self_attn")
    assert parsed == probes.TensorName(3, None, "module", "model.layers.2.self_attn")
    assert parsed.describe() == "module model.layers.2.self_attn of prompt 3"
    assert probes.parse_name("prompt0.logits.all") == probes.TensorName(0, None, "logits.all")
    assert probes.field_name("prompt3.module.model.norm") == "module.model.norm"


def test_module_patterns_match_one_part_per_star_and_suggest_close_paths(tmp_path: Path) -> None:
    names = ["", "model", "model.layers", "model.layers.0", "model.layers.0.self_attn"]
    names += ["model.layers.0.mlp", "model.layers.1", "model.layers.1.self_attn", "model.norm"]
    table = '[probes]\nmodules = ["model.layers.*", "model.norm"]\n'
    spec = load_spec(spec_with(tmp_path, table))
    assert probes.resolve_modules(spec, names) == ("model.layers.0", "model.layers.1", "model.norm")
    assert not probes.module_pattern_matches("model.*", "model.layers.0")
    spec = load_spec(spec_with(tmp_path, '[probes]\nmodules = ["model.layers.*.attn"]\n'))
    with pytest.raises(SpecError) as err:
        probes.resolve_modules(spec, names)
    assert "'probes.modules' pattern 'model.layers.*.attn' matches no module" in str(err.value)
    assert "Close: model.layers.*.self_attn" in str(err.value)


def test_containers_without_a_forward_are_no_modules_to_probe(tmp_path: Path) -> None:
    """A hook on a ModuleList never fires: it is refused before the forward, with its items."""
    import torch

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    model.norm = torch.nn.LayerNorm(2)
    names = probes.module_names(model)
    assert names == ["layers.0", "layers.1", "norm"]  # not the model, not the list
    spec = load_spec(spec_with(tmp_path, '[probes]\nmodules = ["layers"]\n'))
    with pytest.raises(SpecError) as err:
        probes.resolve_modules(spec, names)
    assert "pattern 'layers' matches no module" in str(err.value)
    assert "Close: layers.*" in str(err.value) and "has no output" in str(err.value)


class _Toy:
    """A model whose ``lin`` runs twice per forward."""

    @staticmethod
    def build() -> Any:
        import torch

        class Toy(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = torch.nn.Embedding(10, 4)
                self.lin = torch.nn.Linear(4, 4)
                self.head = torch.nn.Linear(4, 3)

            def forward(self, input_ids: Any) -> Any:
                hidden = self.lin(self.lin(self.embed(input_ids)))
                return SimpleNamespace(logits=self.head(hidden), hidden_states=None)

        torch.manual_seed(0)
        return Toy()


def test_module_hooks_keep_each_prompt_apart_across_threads(tmp_path: Path) -> None:
    """Prompts run at once on threads of their own (as a streamed model runs them): each
    prompt's module outputs are its own; a module that runs twice has no single output."""
    import threading

    import torch

    model = _Toy.build()
    inputs = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]), torch.tensor([[6]])]
    spec = load_spec(spec_with(tmp_path, '[probes]\nmodules = ["embed", "head"]\n'))
    capture = probes.Capture(spec)
    capture.start(0, probes.module_names(model))
    outs: list[Any] = [None] * len(inputs)
    with torch.inference_mode(), capture.recording(model, inputs):
        threads = [
            threading.Thread(target=lambda k=k: outs.__setitem__(k, model(input_ids=inputs[k])))
            for k in range(len(inputs))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k, ids in enumerate(inputs):
            capture.add(k, ids, outs[k])
    for k, ids in enumerate(inputs):
        with torch.inference_mode():
            expected = model.head(model.lin(model.lin(model.embed(ids))))[0, -1:]
        assert capture.tensors[probes.module_name(k, "head")].equal(expected)
        assert capture.tensors[probes.module_name(k, "embed")].shape == (1, 4)  # "last"

    spec = load_spec(spec_with(tmp_path, '[probes]\nmodules = ["lin"]\n'))
    capture = probes.Capture(spec)
    capture.start(0, probes.module_names(model))
    with torch.inference_mode(), capture.recording(model, inputs[:1]):
        out = model(input_ids=inputs[0])
        with pytest.raises(SpecError, match="module lin ran 2 times"):
            capture.add(0, inputs[0], out)


def test_rounding_floor_statistics_against_numpy(tmp_path: Path) -> None:
    """err = reference widened to float64 - float64 tensor; RMS per tensor and per position."""
    import torch

    gen = torch.Generator().manual_seed(1)
    exact = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    reference = {
        "prompt0.hidden_states.layer0": exact.to(torch.bfloat16),
        "prompt0.logits.last": exact[0].to(torch.bfloat16),
        "prompt0.input_ids": torch.arange(4),
    }
    float64 = {"prompt0.hidden_states.layer0": exact, "prompt0.logits.last": exact[0]}
    floor = probes.rounding_floor(reference, float64, "bfloat16")
    assert (floor["against"], floor["dtype"]) == ("float64", "bfloat16")
    assert set(floor["tensors"]) == {"prompt0.hidden_states.layer0", "prompt0.logits.last"}
    ref = exact.to(torch.bfloat16).to(torch.float64).numpy()
    err = ref - exact.numpy()
    entry = floor["tensors"]["prompt0.hidden_states.layer0"]
    assert entry["err_rms"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-14)
    assert entry["ref_rms"] == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-14)
    assert entry["err_max_abs"] == np.abs(err).max() > 0
    assert entry["positions_err_rms"] == pytest.approx(np.sqrt(np.mean(err**2, axis=1)), rel=1e-14)
    assert len(floor["tensors"]["prompt0.logits.last"]["positions_err_rms"]) == 1  # one row
    with pytest.raises(probes.ProbeFileError, match="float64 run has no tensor"):
        probes.rounding_floor(reference, {}, "bfloat16")


def test_metadata_past_what_readers_accept_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(probes, "MAX_HEADER", 2000)
    tensors = {"prompt0.input_ids": torch.arange(3)}
    assert probes.dump(tensors, {"floor": "x" * 900})  # within half the bound
    with pytest.raises(probes.ProbeFileError, match="metadata would be 0 MB"):
        probes.dump(tensors, {"floor": "x" * 1100})


def test_layers_beyond_the_model_are_refused(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, "[probes]\nhidden_states = [0, 3]\n"))
    with pytest.raises(SpecError) as err:
        probes.Capture(spec).start(2)
    assert "'probes.hidden_states' asks for layer(s) [3]" in str(err.value)
    assert "0 (embedding output) to 2 (final norm output)" in str(err.value)


# --- the tiny Llama, end to end ----------------------------------------------------------------


def build_tiny_llama(hub_cache: Path) -> tiny.TinyCheckpoint:
    """transformers' own Llama, seeded, saved as a Hub snapshot with the tiny tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(LLAMA_SEED)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)  # as checkpoints ship
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "model")
        files = {p.name: p.read_bytes() for p in (Path(tmp) / "model").iterdir() if p.is_file()}
        files.update(tiny._tokenizer_files(Path(tmp) / "tokenizer"))
    assert "model.safetensors" in files
    return tiny._write_cache(hub_cache, LLAMA_REPO, files)


PROBES_TABLE = """
[probes]
hidden_states = "all"
positions = "all"
logits = "last"
"""


def write_llama_spec(folder: Path, revision: str, probes_table: str = PROBES_TABLE) -> Path:
    path = folder / "tiny-llama.toml"
    path.write_text(
        f"""schema = 1

[reference]
name = "tiny-llama-probes"
output = "../out/{NAME}.json"

[model]
repo = "{LLAMA_REPO}"
revision = "{revision}"

[run]
prompts = {json.dumps(PROMPTS)}
{probes_table}"""
    )
    return path


@dataclass(frozen=True)
class Llama:
    hf_home: Path
    snapshot: Path
    root: Path  # specs/ and out/

    @property
    def spec(self) -> Path:
        return self.root / "specs" / "tiny-llama.toml"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def file(self, suffix: str) -> Path:
        return self.out / f"{NAME}{suffix}"

    def copy(self, dest: Path) -> Llama:
        shutil.copytree(self.root, dest / "ws")
        return Llama(self.hf_home, self.snapshot, dest / "ws")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Llama:
    base = tmp_path_factory.mktemp("probes")
    hf_home = base / "hf-home"
    checkpoint = build_tiny_llama(hf_home / "hub")
    root = base / "ws"
    generate_reference(root, hf_home, lambda specs: write_llama_spec(specs, checkpoint.revision))
    return Llama(hf_home, checkpoint.snapshot, root)


PLAIN_FORWARD = """
import sys
from refgen import determinism

determinism.apply_environment()  # the profile, before torch is imported
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

determinism.configure_torch()
snapshot, out, prompts = sys.argv[1], sys.argv[2], sys.argv[3:]
model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(snapshot)
tensors = {}
with torch.inference_mode():
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        result = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        for j, hidden in enumerate(result.hidden_states):
            tensors[f"{i}/{j}"] = hidden[0].contiguous()
        tensors[f"{i}/logits"] = result.logits[0, -1].contiguous()
save_file(tensors, out)
"""


@pytest.fixture(scope="module")
def plain_forward(llama: Llama, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A plain ``from_pretrained`` forward of every prompt, in its own process."""
    out = tmp_path_factory.mktemp("plain") / "plain.safetensors"
    return run_plain_forward(PLAIN_FORWARD, llama.snapshot, out, *PROMPTS)


def test_probe_file_equals_a_plain_forward_bit_for_bit(
    llama: Llama, plain_forward: dict[str, Any]
) -> None:
    import torch
    from safetensors.torch import load_file

    got = load_file(llama.file(".safetensors"))
    expected_names = {
        *(probes.hidden_name(i, j) for i in range(len(PROMPTS)) for j in range(NUM_LAYERS + 1)),
        *(probes.logits_name(i) for i in range(len(PROMPTS))),
        *(probes.ids_name(i) for i in range(len(PROMPTS))),
    }
    assert set(got) == expected_names
    for i in range(len(PROMPTS)):
        for j in range(NUM_LAYERS + 1):
            tensor, plain = got[probes.hidden_name(i, j)], plain_forward[f"{i}/{j}"]
            assert tensor.dtype == plain.dtype == torch.float32
            assert tensor.shape == plain.shape and tensor.shape[1] == 64  # [positions, hidden]
            assert tensor.numpy().tobytes() == plain.numpy().tobytes(), (i, j)
        logits, plain = got[probes.logits_name(i)], plain_forward[f"{i}/logits"]
        assert logits.shape == (512,)
        assert logits.numpy().tobytes() == plain.numpy().tobytes(), i
    # the JSON's last residual is the probe's final layer at the last position
    doc = json.loads(llama.file(".json").read_bytes())
    for i, case in enumerate(doc["test_cases"]):
        last = got[probes.hidden_name(i, NUM_LAYERS)][-1]
        assert case["last_residual_f32"] == [float(x) for x in last.tolist()]
        assert len(case["tokens"]) == got[probes.hidden_name(i, 0)].shape[0]
        ids = got[probes.ids_name(i)]
        assert ids.dtype == torch.int64 and ids.tolist() == case["tokens"]


def test_probe_file_is_listed_summed_and_attested(llama: Llama) -> None:
    data = llama.file(".safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    manifest = json.loads(llama.file(".manifest.json").read_bytes())
    listed = {o["path"]: o for o in manifest["outputs"]}
    assert set(listed) == {f"{NAME}.json", f"{NAME}.safetensors"}
    assert (listed[f"{NAME}.safetensors"]["sha256"], listed[f"{NAME}.safetensors"]["size"]) == (
        sha,
        len(data),
    )
    assert manifest["spec"]["content"]["probes"] == {
        "hidden_states": "all",
        "positions": "all",
        "logits": "last",
    }
    statement = json.loads(artifact.Artifact(llama.file(".json")).statement.read_bytes())
    assert {"name": f"{NAME}.safetensors", "digest": {"sha256": sha}} in statement["subject"]
    sums = llama.file(".sha256").read_text()
    assert f"{sha}  {NAME}.safetensors\n" in sums
    checked = subprocess.run(
        ["sha256sum", "-c", f"{NAME}.sha256"], cwd=llama.out, capture_output=True, text=True
    )
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 4, checked.stdout
    metadata = probes.read(llama.file(".safetensors")).metadata
    assert metadata["prompts"] == PROMPTS
    assert metadata["hidden_states"] == list(range(NUM_LAYERS + 1))
    assert metadata["num_layers"] == NUM_LAYERS


def test_without_probes_the_json_is_the_same_and_the_old_file_goes(
    llama: Llama, tmp_path: Path
) -> None:
    """Dropping [probes]: the JSON's bytes do not change, and the probe file the previous run
    wrote (listed in its manifest) is removed, so that nothing compares it as current."""
    ws = llama.copy(tmp_path)
    text = ws.spec.read_text()
    ws.spec.write_text(text.replace(PROBES_TABLE, "\n"))
    run_refgen("generate", "--spec", ws.spec, hf_home=ws.hf_home)
    assert ws.file(".json").read_bytes() == llama.file(".json").read_bytes()
    assert not ws.file(".safetensors").exists()
    manifest = json.loads(ws.file(".manifest.json").read_bytes())
    assert [o["path"] for o in manifest["outputs"]] == [f"{NAME}.json"]
    assert "probes" not in manifest["spec"]["content"]
    assert len(ws.file(".sha256").read_text().splitlines()) == 3


def test_layer_beyond_the_model_is_an_error_before_any_output(llama: Llama, tmp_path: Path) -> None:
    ws = llama.copy(tmp_path)
    shutil.rmtree(ws.out)
    ws.out.mkdir()  # refgen creates no folder a spec's output names
    text = ws.spec.read_text().replace('hidden_states = "all"', "hidden_states = [1, 5]")
    ws.spec.write_text(text)
    result = run_refgen("generate", "--spec", ws.spec, hf_home=ws.hf_home, check=False)
    assert result.returncode == 2, result.stderr
    assert "refgen: error: tiny-llama.toml: 'probes.hidden_states' asks for layer(s) [5]" in (
        result.stderr
    )
    assert "forward:" not in result.stderr  # refused before the first forward
    assert "Traceback" not in result.stderr
    assert not any(ws.out.iterdir())  # nothing written


# --- diff ---------------------------------------------------------------------------------------


def perturbed_copy(llama: Llama, dest: Path, changes: dict[str, Any]) -> Path:
    """B: A's JSON and a probe file with some elements changed (``name -> (index, how)``)."""
    import torch
    from safetensors import safe_open

    dest.mkdir()
    shutil.copy2(llama.file(".json"), dest / f"{NAME}.json")
    with safe_open(llama.file(".safetensors"), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    for name, (index, how) in changes.items():
        value = tensors[name][index]
        if how == "ulp":
            tensors[name][index] = torch.nextafter(value, torch.tensor(float("inf")))
        else:
            tensors[name][index] = value + how
    (dest / f"{NAME}.safetensors").write_bytes(
        probes.dump(tensors, json.loads(metadata[probes.METADATA_KEY]))
    )
    return dest / f"{NAME}.json"


def diff_cli(a: Path, b: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``refgen diff`` as a user runs it, once as JSON and once as text."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "refgen", "diff", str(a), str(b), *extra]
    as_json = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True)
    as_text = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert as_json.returncode == as_text.returncode, as_text.stderr
    return as_json.returncode, json.loads(as_json.stdout), as_text.stdout


def test_diff_of_identical_artifacts_compares_the_probe_files(llama: Llama, tmp_path: Path) -> None:
    b = llama.copy(tmp_path)
    code, report, text = diff_cli(llama.file(".json"), b.file(".json"))
    assert code == 0
    assert report["probes"]["identical"] is True
    assert report["probes"]["tensors"] == len(PROMPTS) * (NUM_LAYERS + 3)  # + input_ids
    sha = hashlib.sha256(llama.file(".safetensors").read_bytes()).hexdigest()
    assert f"(probe files too: {sha})" in text.splitlines()[0]


def test_diff_names_layer_1_first_within_tolerance(llama: Llama, tmp_path: Path) -> None:
    """One ulp in layer 1 and a larger (still tolerated) change in layer 2 of prompt 0."""
    layer1, layer2 = probes.hidden_name(0, 1), probes.hidden_name(0, 2)
    b = perturbed_copy(llama, tmp_path / "b", {layer1: ((2, 5), "ulp"), layer2: ((0, 0), 5e-7)})

    code, report, text = diff_cli(llama.file(".json"), b)

    assert code == 10, text
    assert report["verdict"] == "WITHIN_TOLERANCE"
    assert report["first_probe_difference"] == "first difference at layer 1 of prompt 0"
    assert text.splitlines()[0].startswith("REPRODUCED WITHIN TOLERANCE")
    assert text.splitlines()[0].endswith("; first difference at layer 1 of prompt 0")
    first = report["probes"]["first_differences"]
    assert [(f["prompt"], f["layer"], f["tensor"]) for f in first] == [(0, 1, layer1)]
    assert first[0]["beyond_tolerance"] is False and first[0]["max_abs"] > 0
    stats = {f["field"]: f for f in report["fields"]}
    assert stats["hidden_states.layer1"]["max_abs_path"] == f"{layer1}[2, 5]"
    assert stats["hidden_states.layer2"]["max_abs_path"] == f"{layer2}[0, 0]"
    assert stats["hidden_states.layer0"]["max_abs"] == 0.0
    assert stats["hidden_states.layer2"]["max_abs"] == pytest.approx(5e-7, rel=0.2)
    assert "  first difference at layer 1 of prompt 0 (prompt0.hidden_states.layer1" in text


def test_diff_names_layer_1_first_beyond_tolerance(llama: Llama, tmp_path: Path) -> None:
    layer1, layer2 = probes.hidden_name(0, 1), probes.hidden_name(0, 2)
    b = perturbed_copy(llama, tmp_path / "b", {layer1: ((1, 7), 0.5), layer2: ((0, 3), 2.0)})

    code, report, text = diff_cli(llama.file(".json"), b)

    assert code == 11, text
    assert report["first_probe_difference"] == "first difference at layer 1 of prompt 0"
    assert text.splitlines()[0].endswith("; first difference at layer 1 of prompt 0")
    paths = [d["path"] for d in report["differences"]]
    assert paths == [f"{layer1}[1, 7]", f"{layer2}[0, 3]"]
    assert report["differences"][0]["kind"] == "float"
    assert "1 of 320 values of the tensor beyond it" in report["differences"][0]["detail"]
    assert report["probes"]["first_differences"][0]["beyond_tolerance"] is True


def test_diff_orders_by_prompt_then_lowest_layer(llama: Llama, tmp_path: Path) -> None:
    """Prompt 1 differs from layer 2 on, prompt 2 from layer 0 (and in its logits)."""
    b = perturbed_copy(
        llama,
        tmp_path / "b",
        {
            probes.hidden_name(1, 2): ((0, 1), "ulp"),
            probes.hidden_name(2, 0): ((3, 4), "ulp"),
            probes.hidden_name(2, 1): ((0, 0), "ulp"),
            probes.logits_name(2): ((9,), "ulp"),
        },
    )
    result = compare.compare_files(llama.file(".json"), b)
    assert result.verdict is compare.Verdict.WITHIN_TOLERANCE
    assert result.probes is not None
    assert [(f.prompt, f.layer) for f in result.probes.first_differences] == [(1, 2), (2, 0)]
    assert result.first_probe_difference == "first difference at layer 2 of prompt 1"
    # per test case, each layer's statistics sit with the JSON fields of that prompt
    case2 = {f.field: f for f in result.cases[2].fields}
    assert case2["logits.last"].max_abs_path == f"{probes.logits_name(2)}[9]"
    assert case2["top_10.logit"].max_abs == 0.0


def test_diff_logits_only_difference_is_named(llama: Llama, tmp_path: Path) -> None:
    b = perturbed_copy(llama, tmp_path / "b", {probes.logits_name(1): ((4,), 1.0)})
    result = compare.compare_files(llama.file(".json"), b)
    assert result.verdict is compare.Verdict.NOT_REPRODUCED
    assert result.first_probe_difference == (
        "first difference at the last-position logits of prompt 1"
    )


def test_diff_with_one_probe_file_missing_is_a_finding(llama: Llama, tmp_path: Path) -> None:
    b = llama.copy(tmp_path)
    b.file(".safetensors").unlink()
    code, report, text = diff_cli(llama.file(".json"), b.file(".json"))
    assert code == 11
    (d,) = report["differences"]
    assert (d["path"], d["kind"]) == (f"{NAME}.safetensors", "missing")
    assert "beside A, none beside B" in d["detail"]
    assert f"first at {NAME}.safetensors" in text.splitlines()[0]
    # and the other way round
    code, report, _ = diff_cli(b.file(".json"), llama.file(".json"))
    assert code == 11 and report["differences"][0]["kind"] == "extra"


def test_diff_with_a_truncated_probe_file_is_a_finding(llama: Llama, tmp_path: Path) -> None:
    b = llama.copy(tmp_path)
    data = b.file(".safetensors").read_bytes()
    b.file(".safetensors").write_bytes(data[: len(data) // 2])
    result = compare.compare_files(llama.file(".json"), b.file(".json"))
    assert result.verdict is compare.Verdict.NOT_REPRODUCED
    (d,) = result.differences
    assert (d.path, d.kind) == (f"{NAME}.safetensors", "unreadable")
    assert "lies outside the file" in d.detail


# --- verify -------------------------------------------------------------------------------------


def verify_json(ws: Llama) -> tuple[int, dict[str, Any]]:
    result = run_refgen("verify", "--spec", ws.spec, "--json", hf_home=ws.hf_home, check=False)
    assert result.returncode in (0, 10, 11), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_verify_reproduces_a_probes_artifact_bit_for_bit(llama: Llama, tmp_path: Path) -> None:
    """The rebuild's probe file has the same bytes: the file is stable run to run."""
    ws = llama.copy(tmp_path)
    code, report = verify_json(ws)
    assert code == 0, report["summary"]
    assert report["integrity"] == [] and report["inputs"] == []
    assert report["comparison"]["probes"]["identical"] is True
    assert report["comparison"]["probes"]["b_name"] == f"{NAME}.safetensors"


def test_verify_names_a_tampered_probe_file(llama: Llama, tmp_path: Path) -> None:
    ws = llama.copy(tmp_path)
    path = ws.file(".safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a mantissa bit of the file's last value: the last prompt's last logit
    path.write_bytes(bytes(data))

    code, report = verify_json(ws)

    assert code == 11
    # named once per check that fails: against the manifest and against X.sha256
    assert {f["subject"] for f in report["integrity"]} == {f"{NAME}.safetensors"}
    assert "was modified after it was generated" in report["integrity"][0]["detail"]
    assert f"committed files fail their manifest ({NAME}.safetensors)" in report["summary"]
    last = len(PROMPTS) - 1
    assert report["summary"].endswith(
        f"; first difference at the last-position logits of prompt {last}"
    )


def test_a_missing_probe_file_is_an_integrity_finding(llama: Llama, tmp_path: Path) -> None:
    ws = llama.copy(tmp_path)
    ws.file(".safetensors").unlink()
    manifest = audit.read_manifest(ws.file(".manifest.json"))
    findings = audit.check_integrity(artifact.Artifact(ws.file(".json")), manifest)
    assert [(f.subject, f.detail) for f in findings] == [
        (f"{NAME}.safetensors", "missing (listed in the manifest)"),
        (f"{NAME}.safetensors", f"missing (listed in the {NAME}.sha256)"),
    ]
    status = audit.is_up_to_date(load_spec(ws.spec), ws.file(".manifest.json"))
    assert not status.current
    assert any(f"{NAME}.safetensors" in r for r in status.reasons)


def test_commit_without_probes_removes_only_a_listed_probe_file(tmp_path: Path) -> None:
    """The artifact's optional sibling: written when given; removed by a later commit without it
    only when the previous manifest listed it (else it is not ours)."""
    art = artifact.Artifact(tmp_path / "x.json")
    manifest = json.dumps({"schema": "refgen.manifest/1", "outputs": [{"path": "x.safetensors"}]})
    art.commit(
        {
            "reference": b"{}",
            "probes": b"tensors",
            "manifest": manifest.encode(),
            "statement": b"{}",
            "sums": b"",
        }
    )
    assert (tmp_path / "x.safetensors").read_bytes() == b"tensors"
    unlisted = json.dumps({"schema": "refgen.manifest/1", "outputs": [{"path": "x.json"}]})
    plain = {"reference": b"{}", "manifest": unlisted.encode(), "statement": b"{}", "sums": b""}
    art.commit(plain)
    assert not (tmp_path / "x.safetensors").exists()
    (tmp_path / "x.safetensors").write_bytes(b"someone else's")
    art.commit(plain)
    assert (tmp_path / "x.safetensors").read_bytes() == b"someone else's"
    with pytest.raises(ValueError, match="sums"):
        art.commit({"reference": b"{}", "probes": b"", "manifest": b"{}", "statement": b"{}"})
