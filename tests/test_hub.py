"""The online paths of lock and fetch, with the Hub replaced by the local tiny snapshot.

No test may reach the network: huggingface_hub's download and metadata calls are swapped for
stand-ins that serve the tiny checkpoint and the SHA-256 values the Hub would publish.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub
import pytest
from conftest import TinySetup, run_refgen

from refgen import hub
from refgen.errors import IntegrityError, ModelNotFoundError
from refgen.spec import load_spec


@pytest.fixture
def offline_hub(tiny_copy: TinySetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """snapshot_download serves the tiny snapshot; model_info publishes its LFS hashes."""
    snapshot = tiny_copy.checkpoint.snapshot
    calls: dict[str, Any] = {}
    published = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in snapshot.iterdir()
        if p.suffix == ".safetensors"
    }

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls["snapshot_download"] = (repo_id, kwargs)
        calls.setdefault("downloads", []).append(kwargs)
        return str(snapshot)

    class Api:
        def model_info(self, repo_id: str, **kwargs: Any) -> Any:
            calls["model_info"] = (repo_id, kwargs)
            siblings = [
                SimpleNamespace(rfilename=name, lfs=SimpleNamespace(sha256=digest))
                for name, digest in published.items()
            ]
            return SimpleNamespace(siblings=siblings)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    return {"calls": calls, "published": published, "setup": tiny_copy}


def test_lock_from_the_hub_hashes_and_cross_checks(offline_hub: dict[str, Any]) -> None:
    setup: TinySetup = offline_hub["setup"]
    setup.lock.unlink()
    spec = load_spec(setup.spec)
    lock = hub.lock(spec, offline=False)
    repo, kwargs = offline_hub["calls"]["snapshot_download"]
    assert (repo, kwargs["revision"]) == (spec.repo, spec.revision)
    # first everything but weights, then only the weights the checkpoint names
    first, second = offline_hub["calls"]["downloads"]
    assert "*.md" in first["ignore_patterns"] and "*.safetensors" in first["ignore_patterns"]
    assert second["allow_patterns"] == ["model.safetensors"]
    assert offline_hub["calls"]["model_info"][1]["files_metadata"] is True
    written = json.loads(setup.lock.read_text())
    assert written["files"] == [vars(f) for f in lock.files]
    weights = next(f for f in lock.files if f.path == "model.safetensors")
    assert weights.sha256 == offline_hub["published"]["model.safetensors"]


def test_lock_refuses_a_download_that_disagrees_with_the_hub(
    offline_hub: dict[str, Any],
) -> None:
    setup: TinySetup = offline_hub["setup"]
    before = setup.lock.read_bytes()
    offline_hub["published"]["model.safetensors"] = "0" * 64
    with pytest.raises(IntegrityError, match="the Hub publishes 0000"):
        hub.lock(load_spec(setup.spec), offline=False)
    assert setup.lock.read_bytes() == before  # the old lock survives


def test_fetch_downloads_exactly_the_locked_files_and_verifies(
    offline_hub: dict[str, Any],
) -> None:
    setup: TinySetup = offline_hub["setup"]
    spec = load_spec(setup.spec)
    folder = hub.fetch(spec)
    assert folder == setup.checkpoint.snapshot
    _, kwargs = offline_hub["calls"]["snapshot_download"]
    locked = [f["path"] for f in json.loads(setup.lock.read_text())["files"]]
    assert kwargs["allow_patterns"] == locked
    assert kwargs["revision"] == spec.revision


def test_fetch_refuses_a_corrupt_download(offline_hub: dict[str, Any]) -> None:
    setup: TinySetup = offline_hub["setup"]
    config = (setup.checkpoint.snapshot / "config.json").resolve()
    shutil.copy(config, config.with_suffix(".bak"))
    config.write_text(config.read_text().replace("64", "65", 1))
    with pytest.raises(IntegrityError) as info:
        hub.fetch(load_spec(setup.spec))
    assert "config.json: expected sha256" in str(info.value)
    assert "nox -s fetch" in str(info.value)


def test_lock_offline_finds_nothing_without_a_snapshot(
    tiny_copy: TinySetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="nox -s fetch"):
        hub.lock(load_spec(tiny_copy.spec), offline=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fetch_without_network_is_one_clear_line(tiny_copy: TinySetup, tmp_path: Path) -> None:
    """No Hub answers (a closed local port, offline mode off): one error line with the hint, no
    traceback, each of huggingface_hub's retry lines printed once (they were printed twice)."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = run_refgen(
        "fetch",
        "--spec",
        tiny_copy.spec,
        hf_home=tmp_path / "empty-hf-home",
        env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("refgen: error: cannot download"), errors
    assert endpoint in errors[0] and "not reachable" in errors[0] and "HF_ENDPOINT" in errors[0]
    retries = [line for line in result.stderr.splitlines() if "Retrying in" in line]
    assert len(retries) == len(set(retries)), "a retry line was printed twice"


def test_fetch_says_when_nothing_was_downloaded(tiny_copy: TinySetup) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # not needed: everything is cached
    result = run_refgen(
        "fetch",
        "--spec",
        tiny_copy.spec,
        hf_home=tiny_copy.hf_home,
        env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
    )
    assert "already in the cache, verified" in result.stderr
    assert "fetched" not in result.stderr and "Retrying" not in result.stderr


def test_fetch_names_a_download(tiny_copy: TinySetup, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    snapshot = tiny_copy.checkpoint.snapshot

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    fetched = hub.fetch_model(load_spec(tiny_copy.spec))
    assert fetched.downloaded and fetched.folder == snapshot
