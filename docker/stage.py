"""Stage the image's build context on the host, where the network and the caches are.

The image build itself must work with ``--network none``, so everything it installs is put in the
context first, checked against a lock:

* ``wheels/``: every wheel of ``requirements.lock``, fetched with ``pip download --require-hashes``
  into a shared wheelhouse that later runs reuse while the lock is unchanged;
* ``hf/``: an ``HF_HOME`` holding exactly the locked files of each spec's pinned revision, taken
  from the local Hugging Face cache and verified against the spec's model lock;
* ``app/``: the generator's sources, ``noxfile.py``, ``requirements.lock`` and the specs.

The context is assembled in a temporary folder next to the target and renamed into place, so a
failed run never leaves a half-staged context. Blobs and wheels are hard-linked when possible.
Usage: ``python docker/stage.py [--context DIR] [--spec PATH ...]`` (no --spec: every specs/*.toml).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the refgen package of this checkout, not an installed one

from refgen import hfcache, hub  # noqa: E402
from refgen.errors import RefgenError  # noqa: E402
from refgen.hashing import sha256_file  # noqa: E402
from refgen.lock import ModelLock, read_lock  # noqa: E402
from refgen.spec import Spec, find_specs, load_spec  # noqa: E402

LOCK = ROOT / "requirements.lock"
# Shared by every context; CI points it at a cache that outlives its clean clones.
WHEELHOUSE = Path(os.environ.get("REFGEN_WHEELHOUSE") or ROOT / "docker" / "context" / "wheels")
DEFAULT_CONTEXT = ROOT / "docker" / "context" / "image"
APP_FILES = ("noxfile.py", "pyproject.toml", "requirements.lock")
STAMP = ".requirements.lock.sha256"


class StageError(Exception):
    """A staging problem, with the fix in its message."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=Path, default=DEFAULT_CONTEXT)
    parser.add_argument("--spec", type=Path, action="append", help="a spec to bake (repeatable)")
    args = parser.parse_args(argv)
    try:
        specs = [load_spec(p) for p in (args.spec or find_specs(ROOT / "specs"))]
        if not specs:
            raise StageError("no specs to bake: pass --spec PATH or add one under specs/")
        models = [verified_model(spec) for spec in specs]  # before any download or copy
        wheels = fetch_wheels(WHEELHOUSE)
        stage(args.context.resolve(), models, wheels)
    except (RefgenError, StageError) as exc:
        print(f"stage: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            print(
                f"stage: error: no space left on device while staging into {args.context} "
                "(nothing was kept). The context needs the wheels (~300 MB) plus each spec's "
                "model files; free space there or point --context (REFGEN_DOCKER_CONTEXT) at a "
                "larger disk.",
                file=sys.stderr,
            )
            return 1
        raise
    return 0


def locked_hashes(lock: Path) -> set[str]:
    """Every sha256 that requirements.lock allows, for any package and platform."""
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock.read_text()))


def sha256(path: Path) -> str:
    return sha256_file(path, progress=False)[0]


def fetch_wheels(wheelhouse: Path) -> list[Path]:
    """The lock's wheels, downloaded by hash once and reused while the lock is unchanged."""
    lock_digest = sha256(LOCK)
    stamp = wheelhouse / STAMP
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pinned = len(re.findall(r"^\S+==\S+", LOCK.read_text(), re.MULTILINE))
    fresh = stamp.is_file() and stamp.read_text().strip() == lock_digest
    if not (fresh and len(list(wheelhouse.glob("*.whl"))) == pinned):
        stamp.unlink(missing_ok=True)
        print(f"stage: downloading the wheels of {LOCK.name} into {wheelhouse}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "-qq", "--require-hashes"]
        cmd += ["--no-deps", "-r", str(LOCK), "-d", str(wheelhouse)]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise StageError(
                f"pip could not download the wheels of {LOCK.name} (message above). If it says "
                "the hashes do not match, the index serves other files than the lock pins: "
                "regenerate the lock with `nox -s lock` or fix the index; if it cannot reach the "
                "index, this first fetch needs network access to it."
            )
        allowed = locked_hashes(LOCK)
        for wheel in wheelhouse.glob("*.whl"):  # wheels of an older lock
            if sha256(wheel) not in allowed:
                wheel.unlink()
        stamp.write_text(lock_digest + "\n")
    check_wheels(wheelhouse, LOCK)
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not any(w.name.startswith("pip-") for w in wheels):
        raise StageError(f"{LOCK.name} must pin pip (pip-compile --allow-unsafe) to bootstrap it")
    return wheels


def check_wheels(wheelhouse: Path, lock: Path) -> None:
    """Every staged wheel must hash to a value the lock allows (pip checks again in the build)."""
    allowed = locked_hashes(lock)
    bad = [(w, sha256(w)) for w in sorted(wheelhouse.glob("*.whl"))]
    bad = [(w, digest) for w, digest in bad if digest not in allowed]
    if bad:
        listing = "\n".join(f"  {w.name}: sha256 {digest}" for w, digest in bad)
        raise StageError(
            f"wheels in {wheelhouse} do not match any hash in {lock.name}:\n{listing}\n"
            f"They are corrupt or were replaced. Delete them (or the whole folder) and run "
            "again to download them by hash."
        )


def verified_model(spec: Spec) -> tuple[Spec, ModelLock, Path]:
    """The spec's lock and cached snapshot, every locked file checked against the lock."""
    lock = read_lock(spec)
    folder = hub.cached_snapshot(spec, lock)
    print(f"stage: verifying {spec.repo}@{lock.revision[:12]}", file=sys.stderr)
    hub.verify_snapshot(spec, lock, folder)
    return spec, lock, folder


def stage(
    context: Path, models: Iterable[tuple[Spec, ModelLock, Path]], wheels: Iterable[Path]
) -> None:
    """Assemble the whole context in a sibling temp folder, then swap it in."""
    context.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{context.name}.", dir=context.parent))
    try:
        for wheel in wheels:
            hfcache.link_or_copy(wheel, tmp / "wheels" / wheel.name)
        app = tmp / "app"
        shutil.copytree(
            ROOT / "refgen", app / "refgen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        for name in APP_FILES:
            shutil.copy2(ROOT / name, app / name)
        (tmp / "hf" / "hub").mkdir(parents=True)
        for spec, lock, folder in models:
            stage_model(spec, lock, folder, app / "specs", tmp / "hf" / "hub")
        old = context.with_name(f".{context.name}.old")
        if context.exists():
            context.rename(old)
        tmp.rename(context)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"stage: context ready in {context}", file=sys.stderr)


def stage_model(
    spec: Spec, lock: ModelLock, folder: Path, specs_dir: Path, hub_cache: Path
) -> None:
    """Copy a spec, its lock and its verified model files (HF cache layout, symlinks kept)."""
    if spec.local_path is not None:  # its relative path would point elsewhere in the image
        raise StageError(
            f"{spec.path.name} reads a local folder ('model.path'); the image stages Hub "
            "revisions only. Publish the checkpoint to a repo and pin its commit instead."
        )
    specs_dir.mkdir(parents=True, exist_ok=True)
    for source in (spec.path, spec.lock_path):
        if (specs_dir / source.name).exists():
            raise StageError(f"two specs named {source.name}: rename one")
        shutil.copy2(source, specs_dir / source.name)
    # No refs/main: the specs pin commit hashes, and two specs may pin two revisions of one repo.
    writer = hfcache.SnapshotWriter(hub_cache, spec.repo, lock.revision)
    for f in lock.files:
        blob = (folder / f.path).resolve()
        writer.link(f.path, writer.add_file(blob.name, blob))


if __name__ == "__main__":
    sys.exit(main())
