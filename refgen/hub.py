"""Model files in the Hugging Face cache: finding, fetching and locking a pinned revision.

The lock itself (reading, writing, the check of files against it) is :mod:`refgen.lock`.
Finding files in the cache and downloading them is left to huggingface_hub's own functions
(``snapshot_download``, ``scan_cache_dir``), which honor ``HF_HOME`` / ``HF_HUB_CACHE``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import cleanup, hashing, jsonio, weights
from refgen.errors import HubError, IntegrityError, LockError, ModelNotFoundError, RefgenError
from refgen.hashing import file_digests
from refgen.lock import (
    LockedFile,
    ModelLock,
    check,
    check_folder,
    content_revision,
    entry_problem,
    read_lock,
    write_lock,
)
from refgen.paths import relative_path_problem
from refgen.spec import Spec

# Files of a model repo that no loader reads; everything else in the revision is locked.
IGNORED = ("*.md", "LICENSE*", ".gitattributes", "*.png", "*.jpg", "*.gif", "*.pdf")


def fetch_hint(spec: Spec) -> str:
    if spec.local_path is not None:
        return (
            f"a copy of the checkpoint whose files match {spec.lock_path.name} in {spec.local_path}"
        )
    return f"`nox -s fetch -- --spec {spec.display}` (needs network access to the Hub)"


def cached_snapshot(spec: Spec, lock: ModelLock | None = None) -> Path:
    """The snapshot folder of the pinned revision in the local cache, without any network
    (or the spec's local folder)."""
    if spec.local_path is not None:
        return _local_folder(spec, lock)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f.path for f in lock.files] if lock else None
    check_cache_dir()
    try:
        folder = Path(
            snapshot_download(
                spec.repo, revision=spec.revision, local_files_only=True, allow_patterns=patterns
            )
        )
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{spec.repo} at revision {spec.revision} is not in the Hugging Face cache "
            f"({_cache_dir()}){_other_revisions(spec)}. Download it with {fetch_hint(spec)}, or "
            "point HF_HOME at a cache that holds it."
        ) from None
    if lock:
        missing = [f.path for f in lock.files if not (folder / f.path).exists()]
        if missing:
            raise ModelNotFoundError(
                f"{spec.repo}@{spec.revision} is in the cache but lacks {missing}. "
                f"Complete it with {fetch_hint(spec)}."
            )
    return folder


def _local_folder(spec: Spec, lock: ModelLock | None) -> Path:
    folder = spec.local_path
    assert folder is not None
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"the local checkpoint folder {folder} ('model.path' of {spec.path.name}) does not "
            "exist. Put the checkpoint there or fix the path (relative to the spec's folder)."
        )
    missing = [f.path for f in lock.files if not (folder / f.path).is_file()] if lock else []
    if missing:
        raise ModelNotFoundError(f"the local checkpoint {folder} lacks {missing}.")
    return folder


def verify_snapshot(spec: Spec, lock: ModelLock, folder: Path) -> None:
    """Hash every locked file (SHA-256, and BLAKE3 where the lock has it); refuse on any
    difference, naming file, expected and actual hash."""
    result = check_folder(lock.files, folder)
    problems = [f"  {m.path}: {m.describe()}" for m in result.mismatched] + [
        f"  {path}: missing" for path in result.missing
    ]
    if problems:
        raise IntegrityError(
            f"model files of {spec.repo}@{spec.revision} do not match {spec.lock_path.name}:\n"
            + "\n".join(problems)
            + "\nThe cached copy is corrupt or was modified. Delete it (`hf cache delete`, or "
            f"remove the repo folder under {_cache_dir()}) and run {fetch_hint(spec)}."
        )


def check_sizes(spec: Spec, lock: ModelLock, folder: Path) -> dict[str, int]:
    """The size of every locked file, checked against the lock where it records one, before
    any byte is hashed; IntegrityError names the file, the size locked and the size found.

    Every locked file must be (or link to) a regular file: a FIFO would block the read, a
    device (``/dev/zero``) never end, a folder not be one file (ModelNotFoundError, exit 2)."""
    sizes: dict[str, int] = {}
    problems = []
    for f in lock.files:
        info = (folder / f.path).stat()
        if not stat.S_ISREG(info.st_mode):
            raise ModelNotFoundError(
                f"the model file {f.path} in {folder} is {jsonio.kind(info.st_mode)}, not a "
                "regular file; refgen reads only regular files. Replace it with the file the "
                f"lock names: {fetch_hint(spec)}."
            )
        sizes[f.path] = info.st_size
        if f.size is not None and f.size != sizes[f.path]:
            problems.append(f"  {f.path}: {f.size} bytes in the lock, {sizes[f.path]} in the cache")
    if problems:
        raise IntegrityError(
            f"model files of {spec.repo}@{spec.revision} have other sizes than "
            f"{spec.lock_path.name} records:\n"
            + "\n".join(problems)
            + "\nEither the cached copy is damaged (delete it with `hf cache delete` and run "
            f"{fetch_hint(spec)}) or the lock's size is wrong (re-record it with "
            f"`nox -s lock-model -- --spec {spec.display}`)."
        )
    return sizes


# What every lock must name, present or not: without config.json transformers cannot know the
# model (it would fail, or fall back to a remote or default config).
REQUIRED = ("config.json",)


def check_lock_covers(spec: Spec, lock: ModelLock, folder: Path) -> None:
    """The lock names every file the loader would read (LockError, exit 2, before any compute).

    The loader sees only the locked files (:func:`verified_view`), so a file of the checkpoint
    that the lock leaves out is not read: a lock without ``tokenizer.json`` made transformers
    build an empty tokenizer and give a wrong reference. Refused: a lock without
    ``config.json``, and any file of the checkpoint that ``refgen lock`` would lock (config,
    tokenizer and generation files: :func:`refgen.weights.select`'s non-weight files) and the
    lock does not name. A tokenizer with no vocabulary file at all is refused once its class is
    known (:func:`check_tokenizer_files`)."""
    locked = {f.path for f in lock.files}
    present = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    read = sorted(
        name
        for name in present
        if name not in locked
        and not weights.is_weight_file(name)
        and name != weights.INDEX
        and not any(fnmatch.fnmatch(name, pattern) for pattern in IGNORED)
        and (folder / name).is_file()
    )
    lacking = [name for name in REQUIRED if name not in locked]
    unlocked = sorted({*lacking, *read})
    if unlocked:
        raise LockError(
            f"{spec.lock_path.name} does not name {', '.join(unlocked)}, which the loader reads "
            f"from {folder}: a run uses only locked files, and without "
            f"{'it' if len(unlocked) == 1 else 'them'} transformers would fall back to "
            "defaults (an empty tokenizer, no config) and give a wrong reference. Re-record the "
            f"lock with `refgen lock --spec {spec.display}` (or `nox -s lock-model`)."
        )


def read_verified(folder: Path, locked: LockedFile, limit: int = jsonio.MAX_BYTES) -> bytes:
    """The bytes of a small locked file (an index, a config), read once, bounded, and checked
    against every digest the lock has for it before anyone parses them (IntegrityError)."""
    try:
        data = jsonio.read_bytes(folder / locked.path, limit)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot read the model file {locked.path}: {exc.strerror}."
        ) from None
    digests = {a: hashing.hasher(a) for a in locked.algorithms}
    for digest in digests.values():
        digest.update(data)
    actual = {a: d.hexdigest() for a, d in digests.items()}
    result = check([locked], {locked.path: (actual, len(data))})
    if result.mismatched:
        raise IntegrityError(
            f"model file {locked.path} in {folder} does not match the lock: "
            f"{result.mismatched[0].describe()}. The copy is corrupt or was modified; "
            "replace it with the locked file."
        )
    return data


def check_tokenizer_files(spec: Spec, tokenizer: Any, locked: Iterable[str]) -> None:
    """The tokenizer was built from a vocabulary file the lock names (LockError otherwise).

    transformers builds a tokenizer of the class ``tokenizer_config.json`` names even when none
    of its vocabulary files is there: an empty one, which tokenizes a prompt to nothing or to
    special tokens alone. The class says which files it reads (``vocab_files_names``): its
    ``tokenizer.json``, or else every one of its own files (``vocab.json`` and ``merges.txt``
    for a byte-level BPE) must be locked."""
    names = dict(getattr(tokenizer, "vocab_files_names", {}) or {})
    present = set(locked)
    fast = names.pop("tokenizer_file", None)
    if fast is None and not names:  # a class that reads no file (byte-level: ByT5)
        return
    if fast in present or (names and all(n in present for n in names.values())):
        return
    wanted = (
        " or ".join(part for part in (fast, " and ".join(names.values())) if part)
        or "a vocabulary file"
    )
    raise LockError(
        f"{spec.lock_path.name} names no vocabulary file of the tokenizer "
        f"{type(tokenizer).__name__} ({wanted}): transformers would build an empty tokenizer and "
        "the reference would be wrong. Lock the checkpoint's tokenizer files (`refgen lock "
        f"--spec {spec.display}`); a checkpoint that ships none cannot make a reference."
    )


@dataclass(frozen=True)
class Inputs:
    """What a run reads, which no output may touch (refgen.paths.check_destinations)."""

    files: tuple[Path, ...]  # compared by path and by identity (a link or hard link to one)
    folders: tuple[Path, ...]  # nothing may be written inside these


def run_inputs(spec: Spec) -> Inputs:
    """The inputs of a spec's run: the spec, its lock, ``requirements.lock``, the Hugging Face
    cache, and a local checkpoint's whole folder with every file its lock names (a locked file
    may be a link out of the folder: its target is protected by identity)."""
    from refgen import manifest

    files = [spec.path, spec.lock_path, manifest.requirements_lock_path()]
    folders = [Path(cache_dir())]
    if spec.local_path is not None:
        folders.append(spec.local_path)
        with contextlib.suppress(RefgenError):  # an unreadable lock is refused later, by name
            files += [spec.local_path / f.path for f in read_lock(spec).files]
    return Inputs(tuple(files), tuple(folders))


def check_cache_dir() -> None:
    """HF_HUB_CACHE (or HF_HOME/hub) must be a folder, or not exist yet."""
    cache = Path(_cache_dir())
    if cache.exists() and not cache.is_dir():
        raise ModelNotFoundError(
            f"the Hugging Face cache {cache} is not a folder. Point HF_HUB_CACHE (or HF_HOME) "
            "at the cache folder."
        )


@contextlib.contextmanager
def verified_view(folder: Path, lock: ModelLock) -> Iterator[Path]:
    """A temporary folder holding only the locked files, so the loader can read nothing else."""
    with cleanup.temporary_directory(prefix="refgen-model-") as view:
        for f in lock.files:
            # read_lock refuses '..', absolute and empty components; checked again here because
            # this is where a bad path would create a link outside the view
            problem = entry_problem(vars(f))
            if problem is not None:
                raise LockError(f"lock entry {f.path!r}: {problem}")
            link = view / f.path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((folder / f.path).resolve())
        yield view


@dataclass(frozen=True)
class Fetched:
    folder: Path
    downloaded: bool  # False: every locked file was already in the cache (no network used)


def fetch(spec: Spec) -> Path:
    """Download exactly the locked files of the pinned revision, then verify them."""
    return fetch_model(spec).folder


def fetch_model(spec: Spec) -> Fetched:
    """The locked files of the pinned revision, from the cache when all are there (no network),
    else downloaded; verified against the lock either way."""
    lock = read_lock(spec)
    check_cache_dir()  # before the lookup: its ModelNotFoundError means 'download'
    try:
        folder: Path | None = cached_snapshot(spec, lock)
    except ModelNotFoundError:
        if spec.local_path is not None:  # a local folder has nothing to download
            raise
        folder = None
    downloaded = folder is None
    if folder is None:
        from huggingface_hub import snapshot_download

        with hub_errors(spec, "download"):
            folder = Path(
                snapshot_download(
                    spec.repo, revision=spec.revision, allow_patterns=[f.path for f in lock.files]
                )
            )
    verify_snapshot(spec, lock, folder)
    return Fetched(folder, downloaded)


@contextlib.contextmanager
def hub_errors(spec: Spec, action: str) -> Iterator[None]:
    """A Hub that cannot be reached or refuses becomes one HubError line: what failed, why (the
    innermost cause, not a chain of tracebacks) and what to do. huggingface_hub logs each retry
    on its own logger; :func:`log_retries_once` keeps those lines from being printed twice."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    what = f"cannot {action} {spec.repo}@{spec.revision} from {constants.ENDPOINT}"
    try:
        yield
    except LocalEntryNotFoundError as exc:
        raise HubError(
            f"{what}: the Hub is not reachable ({_root_cause(exc)}). Check the network "
            "connection (and HF_ENDPOINT or proxy settings) and run it again; without network, "
            "point HF_HOME at a cache that already holds the model."
        ) from None
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubError(
            f"{what}: the Hub refused ({first}). Check the spec's repo and revision, and "
            "HF_TOKEN for a gated or private repo."
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # huggingface_hub parses the Hub's JSON (the file listing, the model info) without
        # checking its shape: a malformed answer surfaces as one of these
        raise HubError(
            f"{what}: the Hub's answer is malformed ({_root_cause(exc)}). Check HF_ENDPOINT "
            "(and any proxy): it must be a Hugging Face Hub."
        ) from None


def log_retries_once() -> None:
    """huggingface_hub prints its records (retries) through its own handler and passes them on
    to the root logger, whose handler printed them a second time."""
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.disable_propagation()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def lock(spec: Spec, offline: bool) -> ModelLock:
    """Hash the files a loader reads (refgen.weights.select: config, tokenizer and the weights
    the checkpoint's index or single model.safetensors names) of the pinned revision: downloaded,
    already cached when offline, or the spec's local folder."""
    listing: list[str] = []
    if spec.local_path is not None or offline:
        folder = cached_snapshot(spec)
    else:
        folder, listing = _download_for_lock(spec)
    present = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(p.name, pattern) for pattern in IGNORED)
    ]
    files = []
    for rel in weights.select([*present, *listing], folder):
        # Both digests from one read of the same bytes: the SHA-256 is checked against the Hub's,
        # the BLAKE3 is what generate verifies (refgen.lock).
        digests, size = file_digests(folder / rel, ("sha256", "blake3"))
        files.append(LockedFile(rel, digests["sha256"], size, digests["blake3"]))
    if not offline and spec.local_path is None:
        _check_against_hub(spec, files)
    revision = spec.revision if spec.local_path is None else content_revision(files)
    assert revision is not None
    if spec.revision not in (None, revision):
        raise LockError(
            f"the files of {spec.local_path} have content revision {revision}, but "
            f"{spec.path.name} pins {spec.revision}: the checkpoint changed. Update the spec's "
            "revision if the change is intended."
        )
    result = ModelLock(spec.repo, revision, tuple(files))
    write_lock(spec, result)
    return result


def _download_for_lock(spec: Spec) -> tuple[Path, list[str]]:
    """Config, tokenizer and index first; then only the weights the checkpoint names (an extra
    consolidated.safetensors or pickle copy is never downloaded). Also the repo's file list."""
    from huggingface_hub import HfApi, snapshot_download

    skip = [*IGNORED, *weights.WEIGHT_PATTERNS]
    with hub_errors(spec, "download"):
        folder = Path(snapshot_download(spec.repo, revision=spec.revision, ignore_patterns=skip))
        info = HfApi().model_info(spec.repo, revision=spec.revision)
        listing = [
            name
            for name in _listed_names(spec, info.siblings)
            if not any(fnmatch.fnmatch(Path(name).name, pattern) for pattern in IGNORED)
        ]
    present = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    named = weights.named_weights([*present, *listing], folder)
    with hub_errors(spec, "download"):
        snapshot_download(spec.repo, revision=spec.revision, allow_patterns=named)
    return folder, listing


def _listed_names(spec: Spec, siblings: Any) -> list[str]:
    """The file names of the Hub's listing, each a relative POSIX path (HubError otherwise)."""
    names = [getattr(s, "rfilename", None) for s in siblings or []]
    for name in names:
        problem = relative_path_problem(name) if isinstance(name, str) else "is not a string"
        if problem is not None:
            raise HubError(
                f"the Hub's file listing of {spec.repo}@{spec.revision} is malformed: the name "
                f"{name!r} {problem}. Check HF_ENDPOINT: it must be a Hugging Face Hub."
            )
    return [str(n) for n in names]


def _check_against_hub(spec: Spec, files: list[LockedFile]) -> None:
    """Cross-check local hashes of LFS files with the SHA-256 the Hub itself publishes."""
    from huggingface_hub import HfApi

    with hub_errors(spec, "read the published hashes of"):
        info = HfApi().model_info(spec.repo, revision=spec.revision, files_metadata=True)
        _listed_names(spec, info.siblings)
        published = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs is not None}
    for f in files:
        expected = published.get(f.path)
        if expected is not None and expected != f.sha256:
            raise IntegrityError(
                f"downloaded {f.path} hashes to {f.sha256} but the Hub publishes {expected}; "
                "the download is corrupt. Delete it from the cache and lock again."
            )


def cache_dir() -> str:
    """The Hugging Face hub cache in use (HF_HUB_CACHE, else HF_HOME/hub)."""
    return _cache_dir()


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _other_revisions(spec: Spec) -> str:
    """Name the revisions that *are* cached, to make a wrong-revision mistake obvious."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except CacheNotFound:
        return "; the cache folder does not exist"
    for repo in info.repos:
        if repo.repo_id == spec.repo and repo.repo_type == "model":
            revisions = sorted(r.commit_hash for r in repo.revisions)
            return f"; cached revisions of this repo: {', '.join(revisions) or 'none'}"
    return "; the repo is not cached at all"
