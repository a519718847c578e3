"""Shared fixtures: a tiny Qwen3 checkpoint in a temporary HF cache, a spec and lock for it,
and a way to run the CLI as its own process (the determinism profile must precede torch)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from refgen import cleanup, tiny
from refgen.lock import LockedFile

ROOT = Path(__file__).resolve().parent.parent


MINIMAL_SPEC = """schema = 1
[reference]
name = "x"
output = "x.json"
[model]
repo = "org/name"
revision = "0123456789abcdef0123456789abcdef01234567"
[run]
prompts = ["hello"]
"""
"""The smallest valid spec, for tests of spec parsing (no model is needed to load it)."""


def locked(digests: Mapping[str, str]) -> list[LockedFile]:
    """Lock entries of ``{path: sha256}`` (no size, no BLAKE3), as a transcribed lock has them."""
    return [LockedFile(path, digest, None) for path, digest in digests.items()]


def write_spec_text(folder: Path, text: str) -> Path:
    """*text* as ``spec.toml`` in *folder*."""
    path = folder / "spec.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class TinySetup:
    hf_home: Path
    checkpoint: tiny.TinyCheckpoint
    spec: Path  # spec + lock in a folder of their own; output goes to ../out/ of it

    @property
    def lock(self) -> Path:
        return self.spec.with_suffix(".lock.json")


# The CLI's temporaries go to a folder of the test session's own: a refgen command names the
# leftovers of other processes it finds in its TMPDIR on stderr, and tests read stderr.
_TMPDIR = Path(tempfile.mkdtemp(prefix="refgen-tests-"))
atexit.register(shutil.rmtree, _TMPDIR, True)


def refgen_env(hf_home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment (no HF_* or REFGEN_* of the caller, and not the torch cache folder
    this process's torch exported) with HF_HOME set, this checkout first on the path and a
    TMPDIR of the test session's own; *env* on top."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "REFGEN_")) and k != cleanup.TORCH_CACHE_VARIABLE
    }
    full_env.update({"HF_HOME": str(hf_home), "PYTHONPATH": str(ROOT), "TMPDIR": str(_TMPDIR)})
    full_env.update(env or {})
    return full_env


def run(
    cmd: Sequence[str | Path],
    env: Mapping[str, str],
    cwd: Path,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """A command in its own process; with *check*, a failure shows its output."""
    result = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_refgen(
    *args: str | Path,
    hf_home: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m refgen ARGS`` in a clean process with HF_HOME set; extra env on top."""
    cmd = [sys.executable, "-m", "refgen", *args]
    return run(cmd, refgen_env(hf_home, env), cwd or ROOT, check, timeout)


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    """Built once per test session; tests that damage files work on a copy (``tiny_copy``)."""
    base = tmp_path_factory.mktemp("tiny")
    return _make_setup(base)


@pytest.fixture
def tiny_copy(tiny_setup: TinySetup, tmp_path: Path) -> TinySetup:
    """A private copy of the tiny setup, safe to damage."""
    shutil.copytree(tiny_setup.hf_home.parent, tmp_path / "tiny", symlinks=True)
    base = tmp_path / "tiny"
    old = tiny_setup.checkpoint
    snapshot = base / old.snapshot.relative_to(tiny_setup.hf_home.parent)
    checkpoint = tiny.TinyCheckpoint(old.repo, old.revision, snapshot)
    return TinySetup(base / "hf-home", checkpoint, base / "specs" / tiny_setup.spec.name)


def make_setup(
    hf_home: Path, specs: Path, output: str, env: Mapping[str, str] | None = None
) -> TinySetup:
    """The tiny checkpoint in ``hf_home``, its spec (writing to *output*) and lock in *specs*."""
    checkpoint = tiny.build(hf_home / "hub")
    specs.mkdir(parents=True)
    # refgen never creates the folder a spec's output names
    Path(os.path.normpath(specs / output)).parent.mkdir(parents=True, exist_ok=True)
    spec = tiny.write_spec(specs, checkpoint.revision, output)
    run_refgen("lock", "--spec", spec, "--offline", hf_home=hf_home, env=env)
    return TinySetup(hf_home, checkpoint, spec)


def _make_setup(base: Path) -> TinySetup:
    return make_setup(base / "hf-home", base / "specs", "../out/tiny_qwen3_reference.json")


# --- running as an unprivileged user ------------------------------------------------------------
# Root ignores file modes, so permission cases run the CLI as `nobody` (setpriv, util-linux) when
# the tests run as root; as any other user they run as that user. Everything the unprivileged
# process reads must be reachable by it: pytest's own temporary folders are private (0700), so
# ``shared_tiny`` copies the tiny setup into a folder of its own under the system's temp folder.
UNPRIVILEGED_USER = ("nobody", "nogroup")


def unprivileged_prefix() -> list[str]:
    """The command prefix that drops root, or nothing when we are not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without setpriv (util-linux): cannot test permissions")
    user, group = UNPRIVILEGED_USER
    return [setpriv, f"--reuid={user}", f"--regid={group}", "--clear-groups"]


def run_refgen_unprivileged(
    *args: str | Path,
    hf_home: Path,
    home: Path,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``python -m refgen ARGS`` as an unprivileged user; ``home`` is its HOME and TMPDIR."""
    own = {
        "PYTHONDONTWRITEBYTECODE": "1",  # it cannot write __pycache__ in the checkout
        "HOME": str(home),
        "TMPDIR": str(home),
    }
    cmd = [*unprivileged_prefix(), sys.executable, "-m", "refgen", *args]
    return run(cmd, refgen_env(hf_home, {**own, **(env or {})}), home, check)


@dataclass(frozen=True)
class SharedTiny:
    """A copy of the tiny setup the unprivileged user can read; ``home`` it can write."""

    setup: TinySetup
    root: Path
    home: Path


@pytest.fixture
def shared_tiny(tiny_setup: TinySetup) -> Iterator[SharedTiny]:
    root = Path(tempfile.mkdtemp(prefix="refgen-unprivileged-"))
    try:
        shutil.copytree(tiny_setup.hf_home.parent, root / "tiny", symlinks=True)
        home = root / "home"
        home.mkdir()
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        home.chmod(0o1777)  # sticky and world-writable, as /tmp
        base = root / "tiny"
        old = tiny_setup.checkpoint
        snapshot = base / old.snapshot.relative_to(tiny_setup.hf_home.parent)
        checkpoint = tiny.TinyCheckpoint(old.repo, old.revision, snapshot)
        setup = TinySetup(base / "hf-home", checkpoint, base / "specs" / tiny_setup.spec.name)
        yield SharedTiny(setup, root, home)
    finally:
        shutil.rmtree(root, ignore_errors=True)
