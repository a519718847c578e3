"""SIGTERM and Ctrl-C take effect within about a second, even while torch computes a forward.

The forward is slowed on purpose: a ``sitecustomize`` on the child's path makes every forward of
the tiny model begin with one torch call that runs for minutes inside C (a sum over 10^12 elements
of a zero-stride view: no memory). A handler that raises in the computing thread would wait for
that call to return; the CLI handles signals on its main thread and leaves at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, TinySetup
from test_atomic import assert_untouched, seed_old_artifact

from refgen.compare import SHOWN_TEXT

SLOW_FORWARD = """
import importlib

_import_module = importlib.import_module


def _slow(forward):
    def slowed(self, *args, **kwargs):
        import torch

        torch.ones(1).expand(10**12).sum()  # one C call, minutes long
        return forward(self, *args, **kwargs)

    return slowed


def import_module(name, package=None):
    module = _import_module(name, package)
    model = getattr(module, "Qwen3ForCausalLM", None)
    if model is not None and not getattr(model, "_slowed", False):
        model.forward = _slow(model.forward)
        model._slowed = True
    return module


importlib.import_module = import_module
"""
LONG_PROMPT = "The capital of France is Paris. " * 10  # 320 characters


def _slow_spec(setup: TinySetup) -> Path:
    """The tiny spec with one long prompt (its log line must be shortened)."""
    text = setup.spec.read_text()
    start = text.index("prompts = ")
    end = text.index("\n", start)
    setup.spec.write_text(text[:start] + f'prompts = ["{LONG_PROMPT}"]' + text[end:])
    # the lock is keyed on the spec's repo and revision, both unchanged
    return setup.spec


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGQUIT, 131)],
)
def test_signal_mid_forward_exits_at_once(
    tiny_copy: TinySetup, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    spec = _slow_spec(tiny_copy)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_FORWARD)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    seed_old_artifact(out)
    env = {
        "HF_HOME": str(tiny_copy.hf_home),
        "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}",
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(tmpdir),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "refgen", "generate", "--spec", str(spec), "--output-dir", str(out)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    forward_started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("refgen: forward:"):
                forward_started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not forward_started.wait(timeout=300):
        proc.kill()
        pytest.fail("the run never reached the forward:\n" + "".join(lines))
    time.sleep(1.0)  # well inside the slowed forward (it runs for minutes)
    assert proc.poll() is None, "".join(lines)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)  # generous; the forward alone would take minutes
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{sig.name} mid-forward did not stop the run within 60 s")
    took = time.monotonic() - sent
    reader.join(timeout=10)
    stderr = "".join(lines)
    print(f"{sig.name} mid-forward: exit {proc.returncode} after {took:.2f} s")
    assert proc.returncode == code, stderr
    assert f"refgen: interrupted ({sig.name}); no output was changed" in stderr
    assert "Traceback" not in stderr
    # torch's compile cache folder included (refgen.cleanup.torch_cache_directory)
    assert list(tmpdir.iterdir()) == [], "an interrupted run left temporaries behind"
    assert_untouched(out)
    # the prompt is echoed shortened, with its length
    forward = next(line for line in lines if line.startswith("refgen: forward:"))
    assert len(forward) < SHOWN_TEXT + 60 and f"({len(LONG_PROMPT)} characters)" in forward
