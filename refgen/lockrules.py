"""The rules every model-lock entry obeys, checked before any entry touches the file system.

An entry is ``{"path": P, "sha256": H, "size": S}``:

* ``P``: a relative POSIX path inside the snapshot (no leading ``/``, no ``.``/``..`` or empty
  components, no backslash), listed once;
* ``H``: 64 lowercase hexadecimal digits, as ``hashlib`` and the Hub write them;
* ``S``: an integer >= 0, or ``null`` when not recorded.

A violation is a :class:`~refgen.errors.LockError` naming the entry: the lock is wrong, not the
cached files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from refgen.errors import LockError
from refgen.paths import relative_path_problem

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def entry_problem(entry: Any) -> str | None:
    """Why one ``{"path", "sha256", "size"}`` entry breaks the rules (None when it does not)."""
    if not isinstance(entry, Mapping):
        return f"must be an object with path, sha256 and size, got {type(entry).__name__}"
    path = entry.get("path")
    if not isinstance(path, str):
        return f"'path' must be a string, got {type(path).__name__}"
    problem = relative_path_problem(path)
    if problem is not None:
        return f"path {path!r} {problem}; lock paths are relative POSIX paths in the snapshot"
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not SHA256.match(digest):
        return f"({path}) 'sha256' must be 64 lowercase hexadecimal digits, got {digest!r}"
    if "size" not in entry:
        return f"({path}) has no 'size' (an integer, or null when not recorded)"
    size = entry["size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return f"({path}) 'size' must be an integer >= 0 or null, got {size!r}"
    return None


def check_entries(files: Any, name: str) -> None:
    """Every entry of a lock's ``files``; a LockError names the first bad one and the fix."""
    fix = "Fix the entry, or re-record the lock with `nox -s lock-model`."
    if not isinstance(files, list):
        raise LockError(f"{name}: 'files' must be a list, got {type(files).__name__}. {fix}")
    seen: set[str] = set()
    for i, entry in enumerate(files):
        problem = entry_problem(entry)
        if problem is not None:
            raise LockError(f"{name}: files[{i}] {problem}. {fix}")
        path = entry["path"]
        if path in seen:
            raise LockError(f"{name}: files[{i}] lists {path!r} a second time. {fix}")
        seen.add(path)


def check_document(data: Any, name: str) -> None:
    """The whole lock: an object with string ``repo`` / ``revision`` and valid ``files``."""
    if not isinstance(data, Mapping):
        raise LockError(f"{name} must hold a JSON object, got {type(data).__name__}.")
    for key in ("repo", "revision"):
        if not isinstance(data.get(key), str):
            raise LockError(
                f"{name}: '{key}' must be a string, got {data.get(key)!r}. Re-record the lock "
                "with `nox -s lock-model`."
            )
    check_entries(data.get("files"), name)
