"""The model lock: the exact files of a pinned revision with their SHA-256, size and BLAKE3.

The lock is to a model what ``requirements.lock`` is to packages. This module reads and writes
it and holds the one check of files against it, :func:`check`, which returns a frozen
:class:`LockCheck` (matched / mismatched / missing / extra, in the manner of huggingface_hub's
``verify_maps`` and ``FolderVerification``). Fetching (:mod:`refgen.hub`), the auditor's input
check (:mod:`refgen.verify`) and the verified load (:mod:`refgen.load`) all go through it;
each words the failure for its own context.

An entry's BLAKE3 is optional (a lock transcribed from the Hub's published SHA-256 list has
none). ``refgen lock`` records it from the same read of the same bytes as the SHA-256, and
wherever refgen has a whole file to check against the lock (fetch, the auditor's input check,
the image build) it checks both, so a lock whose two digests name different bytes fails there.
The generator checks a weight file's BLAKE3 alone where there is one (2.6x faster:
refgen.hashing), and the small files with both.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import jsonio
from refgen.atomic import write_files
from refgen.errors import LockError
from refgen.hashing import file_digests
from refgen.paths import relative_path_problem
from refgen.spec import Spec

LOCK_SCHEMA = "refgen.model-lock/1"
# A lock is about 250 bytes per file: 16 MiB is tens of thousands of shards.
MAX_LOCK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LockedFile:
    path: str
    sha256: str
    size: int | None  # None: not recorded (a lock transcribed from a published hash list)
    blake3: str | None = None  # None: not recorded (such a lock, or one written before)

    def as_dict(self) -> dict[str, Any]:
        """The entry as the lock and the manifest write it (no ``blake3`` key when unset)."""
        entry = {"path": self.path, "sha256": self.sha256, "size": self.size}
        return entry | ({"blake3": self.blake3} if self.blake3 is not None else {})

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Every digest the lock has for this file."""
        return ("sha256", "blake3") if self.blake3 is not None else ("sha256",)

    @property
    def verified_with(self) -> tuple[str, ...]:
        """The digests a run checks: every one the lock has for the small files (config,
        tokenizer, index: microseconds), the BLAKE3 alone for a weight file that has one."""
        if self.blake3 is not None and self.path.endswith(".safetensors"):
            return ("blake3",)
        return self.algorithms

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> LockedFile:
        return cls(entry["path"], entry["sha256"], entry["size"], entry.get("blake3"))


@dataclass(frozen=True)
class ModelLock:
    repo: str
    revision: str
    files: tuple[LockedFile, ...]

    def to_json(self) -> bytes:
        data = {
            "schema": LOCK_SCHEMA,
            "repo": self.repo,
            "revision": self.revision,
            "files": [f.as_dict() for f in self.files],
        }
        return (json.dumps(data, indent=2) + "\n").encode()


def content_revision(files: Iterable[LockedFile]) -> str:
    """A local folder's revision: SHA-256 of its locked files' names and hashes, sorted, as
    JSON (``[["config.json", "<sha256>"], ...]``)."""
    listing = sorted((f.path, f.sha256) for f in files)
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def read_lock(spec: Spec) -> ModelLock:
    """The committed lock of a spec, checked against the spec's repo and revision."""
    path = spec.lock_path
    if not path.exists():
        raise LockError(
            f"no model lock for {spec.path.name}: expected {path.name} next to it. Record the file "
            f"hashes with `nox -s lock-model -- --spec {spec.display}` (add `--offline` to hash a "
            "snapshot already in the local cache) and commit it."
        )
    try:
        data = jsonio.loads(jsonio.read_bytes(path, MAX_LOCK_BYTES))
    except ValueError as exc:
        raise LockError(
            f"{path.name} is not valid JSON ({exc}); regenerate it with `nox -s lock-model`."
        ) from None
    except OSError as exc:
        raise LockError(f"cannot read {path.name}: {exc.strerror}.") from None
    check_document(data, path.name)  # every entry confined and well-formed
    files = tuple(LockedFile.from_dict(f) for f in data["files"])
    lock = ModelLock(data["repo"], data["revision"], files)
    if data.get("schema") != LOCK_SCHEMA:
        raise LockError(f"{path.name}: schema {data.get('schema')!r} is not {LOCK_SCHEMA!r}.")
    if spec.local_path is not None and (
        lock.revision != content_revision(files) or spec.revision not in (None, lock.revision)
    ):
        raise LockError(
            f"{path.name} does not pin the content of {spec.local_path.name} "
            f"(revision {lock.revision}, spec {spec.revision}). Run "
            f"`refgen lock --spec {spec.display}` again."
        )
    # A local folder's spec may leave its revision to the lock (the content revision).
    if (lock.repo, lock.revision) != (spec.repo, spec.revision or lock.revision):
        raise LockError(
            f"{path.name} locks {lock.repo}@{lock.revision} but {spec.path.name} asks for "
            f"{spec.repo}@{spec.revision}. Run `nox -s lock-model -- --spec {spec.display}` again."
        )
    if not files:
        raise LockError(f"{path.name} lists no files; regenerate it with `nox -s lock-model`.")
    return lock


# --- the rules of an entry ------------------------------------------------------------------------
#
# An entry is ``{"path": P, "sha256": H, "size": S}``, optionally with ``"blake3": B``: P a
# relative POSIX path inside the snapshot (no leading ``/``, no ``.``/``..`` or empty components,
# no backslash), listed once; H and B 64 lowercase hexadecimal digits, as hashlib, blake3 and the
# Hub write them; S an integer >= 0, or null when not recorded. A violation is a LockError naming
# the entry: the lock is wrong, not the cache. They are checked before any entry touches the file
# system.

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
    second = entry.get("blake3")
    if second is not None and (not isinstance(second, str) or not SHA256.match(second)):
        return f"({path}) 'blake3' must be 64 lowercase hexadecimal digits if given, got {second!r}"
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


def write_lock(spec: Spec, lock: ModelLock) -> None:
    """Write the spec's lock file atomically (an interrupted run keeps the old one)."""
    write_files({spec.lock_path: lock.to_json()})


# --- the one check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileMismatch:
    """A locked file whose content differs: expected (from the lock) and actual values of the
    first digest that differs (or, for a size alone, of the first digest measured)."""

    path: str
    algorithm: str  # "sha256" or "blake3"
    expected_digest: str | None
    actual_digest: str
    expected_size: int | None
    actual_size: int

    def describe(self) -> str:
        """``expected sha256 X (N bytes), got Y (M bytes)``, for each caller's message."""
        size = f" ({self.expected_size} bytes)" if self.expected_size is not None else ""
        return (
            f"expected {self.algorithm} {self.expected_digest}{size}, "
            f"got {self.actual_digest} ({self.actual_size} bytes)"
        )


@dataclass(frozen=True)
class LockCheck:
    """Files against a lock. ``extra`` are files present but not locked: never read, not a
    failure (the verified view hides them from the loader)."""

    matched: tuple[str, ...]
    mismatched: tuple[FileMismatch, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing


def check(
    expected: Iterable[LockedFile], actual: Mapping[str, tuple[Mapping[str, str], int]]
) -> LockCheck:
    """Compare locked files with actual ``{path: ({algorithm: hex digest}, size)}``.

    A file matches when its size does and every digest measured equals the lock's; a digest
    the lock lacks (a BLAKE3 of an entry without one) is a mismatch, not a pass. A size of None
    in the lock is not compared (a lock transcribed from a published hash list records none).
    """
    matched: list[str] = []
    mismatched: list[FileMismatch] = []
    missing: list[str] = []
    paths = set()
    for f in expected:
        paths.add(f.path)
        if f.path not in actual:
            missing.append(f.path)
            continue
        digests, size = actual[f.path]
        if not digests:
            raise ValueError(f"{f.path}: no digest measured")
        locked = {"sha256": f.sha256, "blake3": f.blake3}
        wrong = [name for name in digests if digests[name] != locked[name]]
        if wrong or f.size not in (None, size):
            name = (wrong or list(digests))[0]
            mismatched.append(FileMismatch(f.path, name, locked[name], digests[name], f.size, size))
        else:
            matched.append(f.path)
    extra = sorted(p for p in actual if p not in paths)
    return LockCheck(tuple(matched), tuple(mismatched), tuple(missing), tuple(extra))


def check_folder(expected: Iterable[LockedFile], folder: Path, progress: bool = True) -> LockCheck:
    """Hash every locked file present in *folder* with every digest the lock has for it (one
    read) and :func:`check` them; files of the folder that the lock does not list are reported
    as ``extra`` (listed, not hashed)."""
    files = tuple(expected)
    actual: dict[str, tuple[dict[str, str], int]] = {}
    for f in files:
        path = folder / f.path
        if path.is_file():
            actual[f.path] = file_digests(path, f.algorithms, progress=progress)
    result = check(files, actual)
    locked = {f.path for f in files}
    extra = sorted(
        rel
        for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if rel not in locked
    )
    return LockCheck(result.matched, result.mismatched, result.missing, tuple(extra))
