"""Atomic writes of a set of files: readers see the whole previous set or the whole new one.

1. **Stage**: every new file is written to a temporary sibling (``.NAME.*.tmp``) and fsynced. A
   failure or an interruption here removes the temporaries; nothing else was touched.
2. **Swap**, with SIGINT, SIGTERM, SIGHUP and SIGQUIT held back (delivered right after, so
   Ctrl-C cannot land half-way): each existing file is hard-linked to a backup (``.NAME.*.bak``;
   the file itself stays in place), then each temporary is renamed over its target (``rename``
   is atomic on POSIX). If any step fails, every target already replaced is restored from its
   backup (or removed, if it did not exist before), so the previous set is back byte for byte.
3. **Clean up**: the folder is fsynced (a failure there rolls back too) and the backups removed.

Targets are checked again right before the swap: a symbolic link, a folder or anything but a
regular file at a target is refused (``rename`` would replace a link, never follow it, but a
refgen output is never a link). Only a crash of the whole machine or a SIGKILL inside the swap
(a few renames, microseconds) can leave a mixed set; the backups beside it then hold the old
files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from refgen import cleanup
from refgen.errors import OutputError

TEMPORARY_SUFFIX = ".tmp"
BACKUP_SUFFIX = ".bak"
_BACKUP_TOKEN_BYTES = 6
NAME_EXTRA = len("..") + 2 * _BACKUP_TOKEN_BYTES + len(BACKUP_SUFFIX)
"""Characters a backup's name (``.NAME.<12 hex digits>.bak``) adds to its target's name; a
staged temporary (``.NAME.<8 characters>.tmp``, tempfile's) adds fewer. A target whose name
plus this exceeds the file system's limit would fail only at the commit."""


def leftovers(target: Path) -> tuple[list[Path], list[Path]]:
    """The staged temporaries and the backups of *target* in its folder (a run killed before
    it could remove them leaves them); whether their run is gone is the caller's to know."""
    temporaries: list[Path] = []
    backups: list[Path] = []
    prefix = f".{target.name}."
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return [], []
    for name in names:
        if name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIX):
            temporaries.append(target.with_name(name))
        elif name.startswith(prefix) and name.endswith(BACKUP_SUFFIX):
            backups.append(target.with_name(name))
    return temporaries, backups


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write several files as one step, in the order given (put the file readers trust last)."""
    targets = list(files)
    temps: dict[Path, Path] = {}
    keys: list[int] = []
    try:
        for target in targets:
            _check_target(target)
        for target, data in files.items():
            temps[target], key = _stage(target, data)
            keys.append(key)
        # The CLI's signal path (refgen.cleanup) waits for the whole swap, rollback included;
        # a caller on the main thread has those signals held back for it.
        with cleanup.critical(), _signals_held():
            _swap(targets, temps)
    except OSError as exc:
        raise OutputError(
            f"could not write {exc.filename or targets[0]}: {exc.strerror or exc}; the previous "
            "files are unchanged."
        ) from None
    finally:
        for leftover in temps.values():
            leftover.unlink(missing_ok=True)
        for key in keys:
            cleanup.forget(key)


def _check_target(target: Path) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"{target} is a symbolic link; refgen never writes through one.")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{target} exists and is not a regular file; remove it first.")


def _stage(target: Path, data: bytes) -> tuple[Path, int]:
    target.parent.mkdir(parents=True, exist_ok=True)
    # registered: an interrupted run removes it even while this thread is elsewhere
    fd, tmp, key = cleanup.temporary_file(f".{target.name}.", TEMPORARY_SUFFIX, target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        tmp.unlink(missing_ok=True)
        cleanup.forget(key)
        raise
    return tmp, key


def _swap(targets: list[Path], temps: Mapping[Path, Path]) -> None:
    backups: dict[Path, Path] = {}
    replaced: list[Path] = []
    stuck: dict[Path, str] = {}
    try:
        for target in targets:
            _check_target(target)
            if os.path.lexists(target):
                backups[target] = _link_backup(target)
        for target in targets:
            _check_target(target)  # again: nothing may have appeared since
            os.replace(temps[target], target)
            replaced.append(target)
        for folder in dict.fromkeys(t.parent for t in targets):
            _fsync_dir(folder)  # the renames are on disk before the backups go
    except BaseException:
        stuck = _roll_back(replaced, backups)
        if stuck:
            raise OutputError(
                "could not restore the previous files: " + "; ".join(stuck.values())
            ) from None
        raise
    finally:
        for target, backup in backups.items():
            if target not in stuck:  # a backup that could not be put back is kept, and named
                backup.unlink(missing_ok=True)


def _link_backup(target: Path) -> Path:
    while True:
        token = secrets.token_hex(_BACKUP_TOKEN_BYTES)
        backup = target.with_name(f".{target.name}.{token}{BACKUP_SUFFIX}")
        try:
            os.link(target, backup, follow_symlinks=False)
        except FileExistsError:
            continue
        return backup


def _roll_back(replaced: list[Path], backups: Mapping[Path, Path]) -> dict[Path, str]:
    """Put back every target already replaced; returns those that could not be restored."""
    stuck: dict[Path, str] = {}
    for target in reversed(replaced):
        try:
            if target in backups:
                os.replace(backups[target], target)
            else:
                target.unlink(missing_ok=True)
        except OSError as exc:
            stuck[target] = f"{target} ({exc.strerror}; the old file is {backups.get(target)})"
    return stuck


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM, SIGHUP and SIGQUIT wait until the block ends (only the main thread
    receives them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
