"""What an interrupted run must remove: one registry of temporaries, emptied on a signal.

The CLI (:mod:`refgen.cli`) runs a command on a worker thread and keeps the main thread free for
SIGINT and SIGTERM: Python runs signal handlers on the main thread only, between bytecodes, so a
handler raising in the thread that is inside a forward waits until torch returns (150 s on a
long prompt), and one raised inside C code that calls back into Python (torch's import) can be
swallowed. On a signal the main thread calls :func:`remove_all` and leaves with ``os._exit``: no
cleanup depends on the worker unwinding.

Each creator makes and registers its temporary while holding the registry's lock, so
:func:`remove_all` never runs between "created" and "registered"; once it has started, creating
anything raises :class:`Interrupted` and the lock is never released (the process is exiting).
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

# How long an interrupted child (verify's rebuild) gets to remove its own temporaries; it runs
# this same signal path, so it exits within about a second unless it is stuck in the kernel.
CHILD_GRACE_S = 20.0
# torch makes its compile cache folder ($TMPDIR/torchinductor_$USER) as soon as a transformers
# model's code is imported (torch._dynamo.package does, at import), and keeps it. refgen
# compiles nothing, so a command points that cache at a temporary of its own.
TORCH_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"

_lock = threading.RLock()
_entries: dict[int, Callable[[], None]] = {}
_keys = itertools.count()
_closed = False


class Interrupted(BaseException):
    """Raised in a worker that tries to create a temporary after the run was interrupted."""


def _register(remove: Callable[[], None]) -> int:
    key = next(_keys)
    _entries[key] = remove
    return key


def _release(key: int) -> None:
    """Run and forget one entry (the normal end of its ``with`` block), under the lock."""
    with _lock:
        remove = _entries.pop(key, None)
        if remove is not None:
            remove()


def _check_open() -> None:
    if _closed:
        raise Interrupted


# Every temporary folder a run makes in TMPDIR starts with one of these; beside each, NAME.lock is
# held (flock, through filelock) for as long as the folder exists, so a later run can tell a
# killed run's leftovers (lock free) from a live run's folders (lock held).
PREFIXES = ("refgen-model-", "refgen-torch-", "refgen-verify-")
OWNER_SUFFIX = ".lock"


@contextmanager
def temporary_directory(prefix: str, dir: str | Path | None = None) -> Iterator[Path]:
    """``tempfile.TemporaryDirectory``, removed by :func:`remove_all` too, with its owner lock
    (``NAME.lock`` beside it) held until it is removed."""
    with _lock:
        _check_open()
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        owner = _hold(Path(f"{path}{OWNER_SUFFIX}"))
        # registered after the owner lock, so removed before it (newest first)
        key = _register(lambda: shutil.rmtree(path, ignore_errors=True))
    try:
        yield path
    finally:
        _release(key)
        owner()


def _hold(path: Path, *, wait: bool = False) -> Callable[[], None]:
    """Take the inter-process lock *path* (filelock: flock; free, or waited for) and register
    its file's removal; returns the release. Called with the registry's lock held when not
    waiting, so no interrupt falls between taking the lock and registering it."""
    lock = filelock.FileLock(path)
    lock.acquire(timeout=-1 if wait else 0)
    with _lock:
        key = _register(lambda: path.unlink(missing_ok=True))

    def release() -> None:
        with _lock:
            _entries.pop(key, None)
            path.unlink(missing_ok=True)  # while still held: a waiter on it takes the next one
            lock.release()

    return release


@contextmanager
def held_lock(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An inter-process lock (``filelock``: flock on *path*) for the block, waited for when
    another process holds it (*waiting* is called first). The file is removed while still held,
    on release and by :func:`remove_all`, so no lock file outlives a run; a process waiting on
    a removed file takes the new one (filelock checks the link count after each flock)."""
    with _lock:
        _check_open()
        try:
            release = _hold(path)
        except filelock.Timeout:
            release = None
    if release is None:
        if waiting is not None:
            waiting()
        release = _hold(path, wait=True)  # until the other run ends (its flock dies with it)
    try:
        yield
    finally:
        release()


@dataclass(frozen=True)
class Leftovers:
    """What :func:`remove_stale` found in TMPDIR: removed (their run is gone) and kept (no owner
    lock beside them, e.g. made by an older refgen: named, never guessed at)."""

    removed: tuple[Path, ...]
    unowned: tuple[Path, ...]


def remove_stale(folder: str | Path | None = None) -> Leftovers:
    """Remove the temporary folders (:data:`PREFIXES`) of refgen runs that were killed (SIGKILL,
    a crash): this user's folders whose owner lock no process holds."""
    folder = Path(folder if folder is not None else tempfile.gettempdir())
    removed: list[Path] = []
    unowned: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return Leftovers((), ())
    names = {e.name for e in entries}
    for entry in entries:
        if not entry.name.startswith(PREFIXES):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid != os.geteuid():
            continue  # another user's: not ours to judge
        is_owner = entry.name.endswith(OWNER_SUFFIX) and stat.S_ISREG(info.st_mode)
        if is_owner:
            if entry.name.removesuffix(OWNER_SUFFIX) in names:
                continue  # handled with its folder
            target = None  # an owner lock whose folder is already gone
        elif stat.S_ISDIR(info.st_mode):
            target = Path(entry.path)
            if entry.name + OWNER_SUFFIX not in names:
                unowned.append(target)
                continue
        else:
            continue
        marker = Path(entry.path if is_owner else entry.path + OWNER_SUFFIX)
        lock = filelock.FileLock(marker)
        try:
            lock.acquire(timeout=0)
        except (filelock.Timeout, OSError):
            continue  # its run is alive (or the lock cannot be taken: leave it)
        try:
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
                removed.append(target)
            marker.unlink(missing_ok=True)
        finally:
            lock.release()
    return Leftovers(tuple(removed), tuple(unowned))


@contextmanager
def torch_cache_directory() -> Iterator[None]:
    """torch's compile cache in a :func:`temporary_directory` for the block (and for the child
    processes started in it), unless the caller chose a folder for it."""
    if os.environ.get(TORCH_CACHE_VARIABLE):
        yield
        return
    with temporary_directory(prefix="refgen-torch-") as path:
        os.environ[TORCH_CACHE_VARIABLE] = str(path)
        try:
            yield
        finally:
            os.environ.pop(TORCH_CACHE_VARIABLE, None)


def temporary_file(prefix: str, suffix: str, dir: Path) -> tuple[int, Path, int]:
    """``tempfile.mkstemp`` registered for removal: (fd, path, key); :func:`forget` the key once
    the file was renamed into place or removed."""
    with _lock:
        _check_open()
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        path = Path(name)
        return fd, path, _register(lambda: path.unlink(missing_ok=True))


def forget(key: int) -> None:
    """Drop an entry without running it (the temporary no longer exists under its name)."""
    with _lock:
        _entries.pop(key, None)


@contextmanager
def critical() -> Iterator[None]:
    """A step :func:`remove_all` must not cut in two (renaming a set of files into place)."""
    with _lock:
        _check_open()
        yield


@contextmanager
def child_process(cmd: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``subprocess.Popen`` whose process is stopped (SIGTERM, then SIGKILL after a grace period)
    on every exit of the block and by :func:`remove_all`."""
    with _lock:
        _check_open()
        proc: subprocess.Popen[str] = subprocess.Popen(cmd, text=True, **popen)
        key = _register(lambda: _stop(proc))
    try:
        yield proc
    finally:
        _release(key)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # the child's own signal path removes its temporaries, then exits
    try:
        proc.wait(timeout=CHILD_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def remove_all() -> None:
    """Remove every registered temporary, newest first (a child before the folder it writes
    into). Called once, on the main thread, before ``os._exit``; the lock stays held so that no
    worker creates or renames anything afterwards."""
    global _closed
    _lock.acquire()
    _closed = True
    for key in sorted(_entries, reverse=True):
        try:
            _entries.pop(key)()
        except OSError:
            continue  # best effort: remove what can be removed


def pending() -> int:
    """How many temporaries are registered now (for tests)."""
    with _lock:
        return len(_entries)
