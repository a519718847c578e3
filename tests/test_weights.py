"""No path to a reference from random weights: pickle checkpoints, locks without the weights,
tensors left unused or parameters left uninitialised are refused (exit 2, no output), and only
the weight files the checkpoint names are locked and read. Also: local checkpoint folders, and
what the spec asks of the model checked before the first forward."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import archzoo
import pytest
from conftest import TinySetup, run_refgen

from refgen import tiny

NAME = "tiny_qwen3_reference"


def write_lock(spec: Path, repo: str, revision: str, folder: Path, names: list[str]) -> None:
    files = [
        {
            "path": n,
            "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(),
            "size": (folder / n).stat().st_size,
        }
        for n in sorted(names)
    ]
    data = {"schema": "refgen.model-lock/1", "repo": repo, "revision": revision, "files": files}
    spec.with_suffix(".lock.json").write_text(json.dumps(data, indent=2))


def refused(result: object, out: Path, *needles: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "refgen: error:" in stderr and "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr
    assert "refgen: forward:" not in stderr  # refused before any forward
    assert not out.exists() or not any(out.iterdir())


def snapshot_files(snapshot: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(snapshot.iterdir())}


def test_a_pickle_only_checkpoint_is_refused_never_unpickled(
    tiny_setup: TinySetup, tmp_path: Path
) -> None:
    files = snapshot_files(tiny_setup.checkpoint.snapshot)
    del files["model.safetensors"]
    # Not a real pickle: if anything tried to unpickle it, the error would be a different one.
    files["pytorch_model.bin"] = b"\x80\x04 not to be unpickled"
    hf_home = tmp_path / "hf-home"
    ck = tiny._write_cache(hf_home / "hub", "refgen-test/pickled", files)
    spec = tiny.write_spec(tmp_path, ck.revision, "out/x.json", repo=ck.repo)
    result = run_refgen("lock", "--spec", spec, "--offline", hf_home=hf_home, check=False)
    refused(result, tmp_path / "out", "pickle", "pytorch_model.bin", "safe_serialization=True")
    assert not spec.with_suffix(".lock.json").exists()
    # A lock made by hand that lists the pickle file is refused just the same.
    write_lock(spec, ck.repo, ck.revision, ck.snapshot, list(files))
    (tmp_path / "out").mkdir()
    result = run_refgen("generate", "--spec", spec, hf_home=hf_home, check=False)
    refused(result, tmp_path / "out", "pickle", "pytorch_model.bin")


def test_a_lock_without_the_weights_is_refused(tiny_copy: TinySetup) -> None:
    lock = json.loads(tiny_copy.lock.read_text())
    lock["files"] = [f for f in lock["files"] if f["path"] != "model.safetensors"]
    tiny_copy.lock.write_text(json.dumps(lock))
    out = tiny_copy.spec.parent.parent / "out"
    result = run_refgen(
        "generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home, check=False
    )
    refused(result, out, "no model.safetensors", "nox -s lock-model")


def test_an_extra_consolidated_file_is_neither_locked_nor_read(tmp_path: Path) -> None:
    files = archzoo.checkpoint_files(archzoo.BY_NAME["qwen3-sharded"])
    hf_home, specs, out = tmp_path / "hf-home", tmp_path / "specs", tmp_path / "out"
    specs.mkdir()
    plain = archzoo.build(hf_home / "hub", archzoo.BY_NAME["qwen3-sharded"])
    # Garbage that no safetensors reader accepts: reading it at all would fail the run.
    extra = {**files, "consolidated.safetensors": b"\xff" * 300_000}
    ck = tiny._write_cache(hf_home / "hub", "refgen-test/with-consolidated", extra)
    built = archzoo.Built(plain.arch, ck.repo, ck.revision, ck.snapshot)
    spec = archzoo.write_spec(specs, built, "float32")
    baseline_specs = tmp_path / "baseline" / "specs"  # a project of its own
    baseline_specs.mkdir(parents=True)
    baseline = archzoo.write_spec(baseline_specs, plain, "float32")  # same numbers expected
    baseline.write_text(baseline.read_text().replace("-float32.json", "-baseline.json"))
    for s in (spec, baseline):
        run_refgen("lock", "--spec", s, "--offline", hf_home=hf_home)
    locked = {f["path"] for f in json.loads(spec.with_suffix(".lock.json").read_text())["files"]}
    assert "consolidated.safetensors" not in locked
    assert "model.safetensors.index.json" in locked and len(locked) == len(files)
    run_refgen("generate", "--spec", spec, "--spec", baseline, "--output-dir", out, hf_home=hf_home)
    got = json.loads((out / f"{spec.stem}.json").read_text())
    want = json.loads((out / "qwen3-sharded-baseline.json").read_text())
    assert got["test_cases"] == want["test_cases"]
    # An old lock that still names it: it is not read either (nor hashed).
    write_lock(spec, ck.repo, ck.revision, ck.snapshot, [*locked, "consolidated.safetensors"])
    again = tmp_path / "again"
    run_refgen("generate", "--spec", spec, "--output-dir", again, hf_home=hf_home)
    assert (again / f"{spec.stem}.json").read_bytes() == (out / f"{spec.stem}.json").read_bytes()


@pytest.mark.parametrize("mode", ["memory", "stream"])
@pytest.mark.parametrize("change", ["drop model.norm.weight", "add model.extra.weight"])
def test_tensors_left_uninitialised_or_unused_are_refused(
    tiny_setup: TinySetup, tmp_path: Path, change: str, mode: str
) -> None:
    """In memory transformers' loading report decides; streamed, the streamer's own check."""
    import torch
    from safetensors.torch import load, save

    files = snapshot_files(tiny_setup.checkpoint.snapshot)
    tensors = load(files["model.safetensors"])
    action, key = change.split()
    if action == "drop":
        del tensors[key]
    else:
        tensors[key] = torch.zeros(3, dtype=torch.bfloat16)
    files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
    hf_home = tmp_path / "hf-home"
    ck = tiny._write_cache(hf_home / "hub", "refgen-test/changed", files)
    spec = tiny.write_spec(tmp_path, ck.revision, "out/x.json", repo=ck.repo)
    run_refgen("lock", "--spec", spec, "--offline", hf_home=hf_home)
    (tmp_path / "out").mkdir()
    result = run_refgen("generate", "--spec", spec, "--load", mode, hf_home=hf_home, check=False)
    what = "randomly initialised" if action == "drop" else "the model does not use"
    refused(result, tmp_path / "out", key, what)


def test_a_local_folder_is_locked_and_generated(tiny_copy: TinySetup, tmp_path: Path) -> None:
    folder = tmp_path / "my-checkpoint"
    folder.mkdir()
    for p in tiny_copy.checkpoint.snapshot.iterdir():
        shutil.copy(p.resolve(), folder / p.name)  # plain files, no cache layout
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = specs / "local.toml"
    text = tiny_copy.spec.read_text().replace(
        f'repo = "{tiny_copy.checkpoint.repo}"\nrevision = "{tiny_copy.checkpoint.revision}"',
        'path = "../my-checkpoint"',
    )
    spec.write_text(text.replace("tiny-qwen3-forward", "local"))
    out = tmp_path / "out"
    # no HF cache at all: the local folder needs none
    run_refgen("lock", "--spec", spec, hf_home=tmp_path / "none")
    lock = json.loads(spec.with_suffix(".lock.json").read_text())
    assert lock["repo"] == "local/my-checkpoint" and re.fullmatch("[0-9a-f]{64}", lock["revision"])
    # both specs name the same output: one command refuses them together (they would overwrite
    # each other's set), so each is built alone
    together = run_refgen(
        "generate",
        "--spec",
        spec,
        "--spec",
        tiny_copy.spec,
        "--output-dir",
        out,
        hf_home=tiny_copy.hf_home,
        check=False,
    )
    assert together.returncode == 2 and "both write" in together.stderr
    assert not out.exists() or not any(out.iterdir())
    run_refgen("generate", "--spec", tiny_copy.spec, "--output-dir", out, hf_home=tiny_copy.hf_home)
    hub = json.loads((out / f"{NAME}.json").read_text())
    assert hub["model_repo"] == tiny_copy.checkpoint.repo
    run_refgen("generate", "--spec", spec, "--output-dir", tmp_path / "local-out", hf_home=tmp_path)
    mine = json.loads((tmp_path / "local-out" / f"{NAME}.json").read_text())
    assert (mine["model_repo"], mine["model_revision"]) == (lock["repo"], lock["revision"])
    assert mine["test_cases"] == hub["test_cases"]
    # pinning the content revision in the spec works; a changed file is an integrity error
    spec.write_text(
        spec.read_text().replace('path = "', f'revision = "{lock["revision"]}"\npath = "')
    )
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    result = run_refgen("generate", "--spec", spec, "--force", hf_home=tmp_path, check=False)
    assert result.returncode == 3 and "config.json" in result.stderr
    result = run_refgen("lock", "--spec", spec, hf_home=tmp_path, check=False)
    assert result.returncode == 2 and "the checkpoint changed" in result.stderr


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace("top_k = 10", "top_k = 513"), "exceeds the model's vocabulary (512"),
        (
            lambda t: t.replace('prompts = ["', 'prompts = ["' + "lazy dog jumps " * 200 + '", "'),
            "longer than the model's context (512 positions)",
        ),
    ],
)
def test_what_the_model_cannot_do_is_refused_before_any_forward(
    tiny_copy: TinySetup, edit: object, needle: str
) -> None:
    tiny_copy.spec.write_text(edit(tiny_copy.spec.read_text()))  # type: ignore[operator]
    out = tiny_copy.spec.parent.parent / "out"
    result = run_refgen(
        "generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home, check=False
    )
    refused(result, out, needle)
