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
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


@contextmanager
def temporary_directory(prefix: str, dir: str | Path | None = None) -> Iterator[Path]:
    """``tempfile.TemporaryDirectory``, removed by :func:`remove_all` too."""
    with _lock:
        _check_open()
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        key = _register(lambda: shutil.rmtree(path, ignore_errors=True))
    try:
        yield path
    finally:
        _release(key)


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
