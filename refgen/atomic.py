"""Atomic writes: a failed or interrupted run never leaves a half-written artifact.

Every file is written to a temporary sibling and fsynced first; only when all of them are
complete are they renamed over the old ones (rename is atomic on POSIX). If anything fails before
that point, the temporaries are removed and the previous artifact is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from refgen import cleanup


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write several files as one step, in the order given (put the file readers trust last)."""
    temps: list[tuple[Path, Path]] = []
    keys: list[int] = []
    try:
        for target, data in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            # registered: an interrupted run removes it even while this thread is elsewhere
            fd, tmp, key = cleanup.temporary_file(f".{target.name}.", ".tmp", target.parent)
            keys.append(key)
            temps.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp creates 0600; give the file the mode a plain open() would (umask applied).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with cleanup.critical():  # an interruption waits for the whole set to be renamed
            for done, target in temps:
                os.replace(done, target)
        _fsync_dir(next(iter(files)).parent)
    finally:
        for leftover, _ in temps:
            leftover.unlink(missing_ok=True)
        for key in keys:
            cleanup.forget(key)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
