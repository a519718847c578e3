"""The generator on the tiny checkpoint: contract, numbers, manifest, reproducibility."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
from conftest import ROOT, TinySetup, refgen_env, run, run_refgen
from qwen3_numpy import forward, read_safetensors
from tokenizers import Tokenizer

NAME = "tiny_qwen3_reference"


@pytest.fixture(scope="session")
def generated(tiny_setup: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's output folder; its TMPDIR is the sibling folder ``tmp``."""
    base = tmp_path_factory.mktemp("generated")
    out, tmp = base / "out", base / "tmp"
    tmp.mkdir()
    run_refgen(
        "generate",
        "--spec",
        tiny_setup.spec,
        "--output-dir",
        out,
        hf_home=tiny_setup.hf_home,
        env={"TMPDIR": str(tmp)},
    )
    return out


def test_a_run_leaves_nothing_in_tmpdir(generated: Path) -> None:
    # torch's compile cache (torchinductor_USER) included: refgen.cleanup.torch_cache_directory
    assert list((generated.parent / "tmp").iterdir()) == []


def load(folder: Path, suffix: str = ".json") -> Any:
    return json.loads((folder / f"{NAME}{suffix}").read_text())


def test_json_follows_the_consumer_contract(generated: Path, tiny_setup: TinySetup) -> None:
    ref = load(generated)
    config = json.loads((tiny_setup.checkpoint.snapshot / "config.json").read_text())
    assert ref["model_repo"] == tiny_setup.checkpoint.repo
    assert ref["model_revision"] == tiny_setup.checkpoint.revision
    for key in ("hidden_size", "num_layers", "vocab_size", "head_dim"):
        assert type(ref[key]) is int and ref[key] > 0
    assert ref["hidden_size"] == config["hidden_size"]
    assert ref["num_layers"] == config["num_hidden_layers"]
    assert ref["head_dim"] == config["head_dim"]
    assert ref["vocab_size"] == config["vocab_size"]
    assert ref["num_kv_heads"] == config["num_key_value_heads"]
    assert ref["use_qk_norm"] is True
    assert ref["rope_theta"] == config["rope_theta"]  # the real number, not null
    assert "platform" not in ref  # host facts belong in the manifest
    prompts = ["The capital of France is", "Two plus two equals", "Once upon a time, there was a"]
    assert [case["prompt"] for case in ref["test_cases"]] == prompts
    for case in ref["test_cases"]:
        assert case["tokens"] and all(type(t) is int and t >= 0 for t in case["tokens"])
        top = case["top_10"]
        assert len(top) == 10
        assert all(type(e["index"]) is int and type(e["logit"]) is float for e in top)
        logits = [e["logit"] for e in top]
        assert logits == sorted(logits, reverse=True)
        assert len(case["last_residual_f32"]) == ref["hidden_size"]
        # every float is a float32 value written as its float64 repr
        assert all(float(np.float32(x)) == x for x in logits + case["last_residual_f32"])


def test_numbers_agree_with_an_independent_implementation(
    generated: Path, tiny_setup: TinySetup
) -> None:
    snapshot = tiny_setup.checkpoint.snapshot
    weights = read_safetensors(snapshot / "model.safetensors")
    config = json.loads((snapshot / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(snapshot / "tokenizer.json"))
    for case in load(generated)["test_cases"]:
        assert case["tokens"] == tokenizer.encode(case["prompt"]).ids
        logits, residual = forward(weights, config, case["tokens"])
        expected_top = np.argsort(-logits, kind="stable")[:10]
        assert [e["index"] for e in case["top_10"]] == expected_top.tolist()
        got = np.array([e["logit"] for e in case["top_10"]])
        np.testing.assert_allclose(got, logits[expected_top], atol=1e-4, rtol=0)
        np.testing.assert_allclose(case["last_residual_f32"], residual, atol=1e-4, rtol=0)


def test_manifest_hashes_match_and_sha256sum_checks(generated: Path, tiny_setup: TinySetup) -> None:
    manifest = load(generated, ".manifest.json")
    data = (generated / f"{NAME}.json").read_bytes()
    assert manifest["outputs"] == [
        {"path": f"{NAME}.json", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    ]
    lock = json.loads(tiny_setup.lock.read_text())
    assert manifest["model"]["files"] == lock["files"]
    # The lock has a BLAKE3 for each file: the weights were checked with it alone.
    assert manifest["model"]["verified_with"] == {
        f["path"]: ["blake3"] if f["path"].endswith(".safetensors") else ["sha256", "blake3"]
        for f in lock["files"]
    }
    assert manifest["model"]["revision"] == tiny_setup.checkpoint.revision
    spec_bytes = tiny_setup.spec.read_bytes()
    assert manifest["spec"]["sha256"] == hashlib.sha256(spec_bytes).hexdigest()
    lock_file = (ROOT / "requirements.lock").read_bytes()
    assert manifest["requirements_lock"]["sha256"] == hashlib.sha256(lock_file).hexdigest()
    assert manifest["determinism"]["torch"]["num_threads"] == 2
    assert manifest["determinism"]["torch"]["deterministic_algorithms"] is True
    for key in ("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy"):
        assert manifest["packages"][key]
    assert manifest["platform"]["machine"] and manifest["torch_build"]["blas"]
    checked = subprocess.run(
        ["sha256sum", "-c", f"{NAME}.sha256"], cwd=generated, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == 3


def dtype_spec(tiny_setup: TinySetup, folder: Path, dtype: str) -> Path:
    """The tiny spec run in another dtype (its lock is the same)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / tiny_setup.spec.name
    spec.write_text(tiny_setup.spec.read_text().replace('"float32"', f'"{dtype}"'))
    shutil.copy(tiny_setup.lock, spec.with_suffix(".lock.json"))
    return spec


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_bytes_do_not_depend_on_the_caller(
    tiny_setup: TinySetup, tmp_path: Path, dtype: str
) -> None:
    """bf16 and f16 run their own CPU kernels, so the caller-independence that
    test_verify.test_generator_bytes_do_not_depend_on_the_caller shows for float32 (one
    condition at a time) is checked for them too: another cwd, locale, time zone, HOME and
    caller-set thread and ISA variables all at once, then one visible core."""
    spec = dtype_spec(tiny_setup, tmp_path / "specs", dtype)
    generated = tmp_path / "baseline"
    run_refgen("generate", "--spec", spec, "--output-dir", generated, hf_home=tiny_setup.hf_home)
    assert json.loads((generated / f"{NAME}.json").read_text())["dtype"] == dtype
    hostile = {
        "TZ": "Pacific/Kiritimati",
        "LANG": "tr_TR.UTF-8",
        "LC_ALL": "C",
        "HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "3",
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "AUTO",
        "ONEDNN_MAX_CPU_ISA": "ALL",
    }
    out = tmp_path / "out"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd: list[str | Path] = ["generate", "--spec", spec, "--output-dir", out]
    run_refgen(*cmd, hf_home=tiny_setup.hf_home, env=hostile, cwd=cwd)
    for suffix in (".json", ".manifest.json", ".sha256"):
        assert (out / f"{NAME}{suffix}").read_bytes() == (
            generated / f"{NAME}{suffix}"
        ).read_bytes()
    # One visible core: torch would otherwise follow the core count.
    taskset_out = tmp_path / "taskset"
    subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-m", "refgen", *map(str, cmd[:-1]), taskset_out],
        env={"HF_HOME": str(tiny_setup.hf_home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    assert (taskset_out / f"{NAME}.json").read_bytes() == (generated / f"{NAME}.json").read_bytes()


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_changed_byte_in_a_model_file_is_refused(tiny_copy: TinySetup, victim: str) -> None:
    blob = (tiny_copy.checkpoint.snapshot / victim).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    out = tiny_copy.spec.parent.parent / "out"
    result = run_refgen(
        "generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home, check=False
    )
    expected = next(
        f for f in json.loads(tiny_copy.lock.read_text())["files"] if f["path"] == victim
    )
    assert result.returncode == 3
    # The lock has both digests: generate checks a weight file with its BLAKE3 alone, a small
    # file with both (and names the first that differs).
    algorithm = "blake3" if victim.endswith(".safetensors") else "sha256"
    actual = (
        blake3.blake3(bytes(data)).hexdigest()
        if algorithm == "blake3"
        else hashlib.sha256(bytes(data)).hexdigest()
    )
    assert f"{victim}: expected {algorithm} {expected[algorithm]}" in result.stderr
    assert actual in result.stderr
    assert "nox -s fetch" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(out.iterdir())  # nothing written


def test_missing_model_says_how_to_fetch(tiny_setup: TinySetup, tmp_path: Path) -> None:
    result = run_refgen("generate", "--spec", tiny_setup.spec, hf_home=tmp_path, check=False)
    assert result.returncode == 2
    assert "is not in the Hugging Face cache" in result.stderr
    assert "nox -s fetch -- --spec" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_revision_names_the_cached_ones(tiny_copy: TinySetup) -> None:
    wrong = "0" * 40
    spec_text = tiny_copy.spec.read_text().replace(tiny_copy.checkpoint.revision, wrong)
    tiny_copy.spec.write_text(spec_text)
    lock = json.loads(tiny_copy.lock.read_text())
    tiny_copy.lock.write_text(json.dumps({**lock, "revision": wrong}))
    result = run_refgen(
        "generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home, check=False
    )
    assert result.returncode == 2
    assert f"at revision {wrong} is not in the Hugging Face cache" in result.stderr
    assert tiny_copy.checkpoint.revision in result.stderr  # what *is* cached
    assert "nox -s fetch" in result.stderr


def test_lock_offline_records_every_file_hash(tiny_setup: TinySetup) -> None:
    lock = json.loads(tiny_setup.lock.read_text())
    snapshot = tiny_setup.checkpoint.snapshot
    expected = [
        {
            "path": p.name,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "size": p.stat().st_size,
            "blake3": blake3.blake3(p.read_bytes()).hexdigest(),
        }
        for p in sorted(snapshot.iterdir())
    ]
    assert lock["files"] == expected
    assert {f["path"] for f in expected} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert (lock["repo"], lock["revision"]) == (
        tiny_setup.checkpoint.repo,
        tiny_setup.checkpoint.revision,
    )


def test_a_file_missing_from_the_lock_is_never_read(
    tiny_copy: TinySetup, generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file added to the snapshot behind the lock's back is not even visible to the loader:
    the folder the generator loads from holds exactly the locked files, with the locked bytes.
    (A top-level file the loader would read, such as a chat_template.jinja, is refused instead:
    tests/test_hostile_inputs.py.)"""
    from huggingface_hub import constants

    from refgen import generate
    from refgen.lock import read_lock
    from refgen.spec import load_spec

    snapshot = tiny_copy.checkpoint.snapshot
    (snapshot / "original").mkdir()  # as Llama repositories ship their original weights
    (snapshot / "original" / "chat_template.jinja").write_text("{{ 'injected' }}")
    spec = load_spec(tiny_copy.spec)
    locked = {f.path: f.sha256 for f in read_lock(spec).files}
    assert "original/chat_template.jinja" not in locked
    seen: dict[str, Any] = {}

    class Seen(Exception):
        pass

    def spy(spec: Any, model_dir: Path, timings: Any, verifier: Any, *_: Any) -> dict[str, Any]:
        files = sorted(p for p in model_dir.rglob("*") if p.is_file())
        seen["files"] = {
            p.relative_to(model_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files
        }
        seen["injected_readable"] = (model_dir / "original" / "chat_template.jinja").exists()
        verifier.result()
        raise Seen

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tiny_copy.hf_home / "hub"))
    monkeypatch.setattr(generate, "compute_reference", spy)
    with pytest.raises(Seen):
        generate.generate(spec, tiny_copy.spec.parent / "unused")
    assert seen["files"] == locked
    assert seen["injected_readable"] is False

    # End to end, in its own process: the output is the one made without the extra file.
    out = tiny_copy.spec.parent / "out"
    run_refgen("generate", "--spec", tiny_copy.spec, "--output-dir", out, hf_home=tiny_copy.hf_home)
    assert (out / f"{NAME}.json").read_bytes() == (generated / f"{NAME}.json").read_bytes()


def test_legacy_script_forwards_to_the_generator(
    generated: Path, tiny_setup: TinySetup, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "qwen3_forward_validation.py"),
            "--spec",
            str(tiny_setup.spec),
            "--output-dir",
            str(tmp_path),
        ],
        env={"HF_HOME": str(tiny_setup.hf_home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"{NAME}.json").read_bytes() == (generated / f"{NAME}.json").read_bytes()


def test_demo_runs_offline_and_matches(generated: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "refgen", "demo", "--output-dir", str(tmp_path)],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "sha256sum -c" in result.stdout
    # Same model, same prompts: the demo's JSON is the generated one, byte for byte.
    assert (tmp_path / f"{NAME}.json").read_bytes() == (generated / f"{NAME}.json").read_bytes()
    checked = subprocess.run(["sha256sum", "-c", f"{NAME}.sha256"], cwd=tmp_path)
    assert checked.returncode == 0


KEEP_LAST = """
import gc, sys, weakref
from pathlib import Path
from refgen import determinism

determinism.apply_environment()
from refgen import generate
from refgen.spec import load_spec

generate.KEEP_LAST_MODEL = sys.argv[2] == "keep"
spec, out = load_spec(sys.argv[1]), Path(sys.argv[3])
generate.generate(spec, out / "a")
first = [weakref.ref(m) for m in generate._kept]
generate.generate(spec, out / "b")
gc.collect()
print(len(first), sum(r() is not None for r in first), len(generate._kept))
"""


@pytest.mark.parametrize("mode", ["keep", "free"])
def test_only_the_last_model_is_kept_and_only_when_asked(
    tiny_copy: TinySetup, tmp_path: Path, mode: str
) -> None:
    """`python -m refgen` exits without freeing the last model (refgen.__main__); a second run in
    the same process frees the first model before it loads, and a library caller keeps none."""
    proc = run(
        [sys.executable, "-c", KEEP_LAST, tiny_copy.spec, mode, tmp_path],
        refgen_env(tiny_copy.hf_home, {"HF_HUB_OFFLINE": "1"}),
        ROOT,
    )
    # models kept after the first run, of them still alive after the second, kept at the end
    assert proc.stdout.split() == (["1", "0", "1"] if mode == "keep" else ["0", "0", "0"])
    a, b = (tmp_path / run / f"{NAME}.json" for run in "ab")
    assert a.read_bytes() == b.read_bytes()
