"""A failed or interrupted run leaves the previous artifact as it was, with no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import filelock
import pytest
from conftest import ROOT, TinySetup

from refgen.atomic import write_files
from refgen.errors import OutputError

NAMES = (
    "tiny_qwen3_reference.json",
    "tiny_qwen3_reference.manifest.json",
    "tiny_qwen3_reference.sha256",
)
OLD = b"previous artifact\n"


def seed_old_artifact(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (folder / name).write_bytes(OLD)


def assert_untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)  # no temporary files left
    for name in NAMES:
        assert (folder / name).read_bytes() == OLD


def test_write_files_replaces_nothing_when_one_file_fails(tmp_path: Path) -> None:
    seed_old_artifact(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder is expected")
    with pytest.raises(OutputError, match="previous files are unchanged"):
        write_files({tmp_path / NAMES[0]: b"new", blocker / "x.json": b"new"})
    blocker.unlink()
    assert_untouched(tmp_path)


def test_interrupt_while_writing_keeps_the_previous_artifact(
    tiny_setup: TinySetup, tmp_path: Path
) -> None:
    """Ctrl-C lands while the second output is being flushed to disk."""
    out = tmp_path / "out"
    seed_old_artifact(out)
    script = f"""
import os, sys
calls = []
real_fsync = os.fsync
def fsync(fd):
    calls.append(fd)
    if len(calls) == 2:
        raise KeyboardInterrupt
    real_fsync(fd)
os.fsync = fsync
from refgen.cli import main
sys.exit(main(["generate", "--spec", {str(tiny_setup.spec)!r}, "--output-dir", {str(out)!r}]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"HF_HOME": str(tiny_setup.hf_home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 130, result.stderr
    assert "no output was changed" in result.stderr
    assert_untouched(out)


def test_sigterm_during_a_run_keeps_the_previous_artifact(
    tiny_copy: TinySetup, tmp_path: Path
) -> None:
    """SIGTERM (docker stop, a CI timeout) while the run is stuck: it waits for the set's lock,
    which this test holds (another run committing the same set), so the signal's timing does not
    matter. The waiting run leaves nothing, and the lock it never held stays the holder's."""
    out = tmp_path / "out"
    seed_old_artifact(out)
    held = filelock.FileLock(out / ".tiny_qwen3_reference.lock")
    held.acquire()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "refgen", "generate", "--spec", str(tiny_copy.spec),
             "--output-dir", str(out)],
            env={"HF_HOME": str(tiny_copy.hf_home), "PYTHONPATH": str(ROOT),
                 "PATH": "/usr/bin:/bin"},
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        for line in proc.stderr:  # the run is past startup, blocked on the lock
            if "waiting for another refgen run" in line:
                break
        else:
            pytest.fail(f"the run never waited for the lock (exit {proc.wait()})")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143, stderr
        assert "no output was changed" in stderr
        assert (out / ".tiny_qwen3_reference.lock").exists()  # still this holder's
    finally:
        (out / ".tiny_qwen3_reference.lock").unlink(missing_ok=True)
        held.release()
    assert_untouched(out)


# --- the commit, failing at each step -------------------------------------------------------------

SET = ("x.json", "x.manifest.json", "x.intoto.json", "x.sha256")


def _seed(folder: Path, old: bool) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    if old:
        for name in SET:
            (folder / name).write_bytes(f"old {name}\n".encode())
    return {name: (folder / name).read_bytes() for name in SET if (folder / name).exists()}


def _state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"<folder>" for p in folder.iterdir()}


def _new(folder: Path) -> dict[Path, bytes]:
    return {folder / name: f"new {name}\n".encode() for name in SET}


def _count_calls(
    monkeypatch: pytest.MonkeyPatch, name: str, fail_at: int, error: BaseException
) -> list[int]:
    """Make ``os.NAME`` raise *error* on its *fail_at*-th call (1-based); returns the counter."""
    real = getattr(os, name)
    calls: list[int] = []

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == fail_at:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, wrapper)
    return calls


@pytest.mark.parametrize("old", [True, False], ids=["over a previous set", "first write"])
@pytest.mark.parametrize(
    "error",
    [OSError(5, "Input/output error"), KeyboardInterrupt()],
    ids=["OSError", "KeyboardInterrupt"],
)
@pytest.mark.parametrize("step", ["link", "replace", "fsync", "mkstemp"])
def test_a_failure_at_any_step_keeps_the_previous_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, error: BaseException, old: bool
) -> None:
    """Fail the k-th os.link / os.replace / os.fsync / mkstemp of a commit, for every k: the
    folder then holds exactly the previous set (nothing, on a first write), byte for byte, and
    no temporary or backup file; once k is past the last call, the new set is complete."""
    import tempfile

    for k in range(1, 20):
        folder = tmp_path / f"{step}-{k}"
        before = _seed(folder, old)
        with monkeypatch.context() as patch:
            if step == "mkstemp":
                calls: list[int] = []

                def mkstemp(
                    *args: object,
                    calls: list[int] = calls,
                    k: int = k,
                    real: Any = tempfile.mkstemp,
                    **kwargs: object,
                ) -> tuple[int, str]:
                    calls.append(1)
                    if len(calls) == k:
                        raise error
                    return real(*args, **kwargs)  # type: ignore[no-any-return]

                patch.setattr(tempfile, "mkstemp", mkstemp)
            else:
                calls = _count_calls(patch, step, k, error)
            try:
                write_files(_new(folder))
            except (OutputError, KeyboardInterrupt):
                assert _state(folder) == before, (step, k)
                continue
        # k is past the last call of this step: the commit went through, whole
        assert len(calls) < k
        assert _state(folder) == {p.name: data for p, data in _new(folder).items()}
        break
    else:
        pytest.fail(f"more than 19 calls of {step}")


def test_a_folder_at_one_target_keeps_the_previous_set(tmp_path: Path) -> None:
    """X.sha256 is a folder: nothing is written, the other three keep their old bytes."""
    before = _seed(tmp_path, True)
    (tmp_path / "x.sha256").unlink()
    (tmp_path / "x.sha256").mkdir()
    before.pop("x.sha256")
    with pytest.raises(OutputError, match=r"x\.sha256 exists and is not a regular file"):
        write_files(_new(tmp_path))
    assert _state(tmp_path) == {**before, "x.sha256": b"<folder>"}


def test_a_target_turned_into_a_folder_mid_commit_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder appears after the first checks, between two renames: the check before each
    rename refuses it and the files already renamed are put back."""
    before = _seed(tmp_path, True)
    real = os.replace
    calls: list[str] = []

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append(str(dst))
        if len(calls) == 3:  # x.json and x.manifest.json are new by now
            Path(tmp_path / "x.sha256").unlink()
            (tmp_path / "x.sha256").mkdir()
            (tmp_path / "x.sha256" / "keep").write_text("")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError):
        write_files(_new(tmp_path))
    state = (
        _state(tmp_path)
        if False
        else {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    )
    before.pop("x.sha256")
    assert state == before
