"""A failed or interrupted run leaves the previous artifact as it was, with no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TinySetup

from refgen.atomic import write_files

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
    with pytest.raises(OSError):
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
    assert "interrupted; no output was changed" in result.stderr
    assert_untouched(out)


def test_sigterm_during_a_run_keeps_the_previous_artifact(
    tiny_copy: TinySetup, tmp_path: Path
) -> None:
    """SIGTERM (docker stop, a CI timeout) while the run is stuck reading the weights."""
    out = tmp_path / "out"
    seed_old_artifact(out)
    # A FIFO nobody writes to: the run blocks on it at a known point, so the signal's timing
    # does not matter.
    weights = tiny_copy.checkpoint.snapshot / "model.safetensors"
    blob = weights.resolve()
    blob.unlink()
    os.mkfifo(blob)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refgen",
            "generate",
            "--spec",
            str(tiny_copy.spec),
            "--output-dir",
            str(out),
        ],
        env={"HF_HOME": str(tiny_copy.hf_home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
    )
    # Signal once the command's thread waits in open() on the FIFO: the run is then certainly
    # past startup and stuck in a system call that does not return on its own.
    deadline = time.monotonic() + 120
    while not _a_thread_waits_on_a_fifo(proc.pid):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the weights"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "interrupted; no output was changed" in stderr
    assert_untouched(out)


def _a_thread_waits_on_a_fifo(pid: int) -> bool:
    """Whether any thread of ``pid`` sleeps in open() of a FIFO with no writer."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "wait_for_partner":
                return True
        except OSError:
            continue
    return False
