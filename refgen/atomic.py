"""Atomic writes of a set of files: readers see the whole previous set or the whole new one.

1. **Stage**: every new file is written to a temporary sibling (``.NAME.*.tmp``) and fsynced. A
   failure or an interruption here removes the temporaries; nothing else was touched.
2. **Swap**, with SIGINT, SIGTERM, SIGHUP and SIGQUIT held back (delivered right after, so
   Ctrl-C cannot land half-way): each existing file is hard-linked to a backup (``.NAME.*.bak``;
   the file itself stays in place), a *journal* (when the caller names one) records every
   target with its staged file, its backup and the SHA-256 of its new content, then each
   temporary is renamed over its target (``rename`` is atomic on POSIX). If any step fails,
   every target already replaced is restored from its backup (or removed, if it did not exist
   before), so the previous set is back byte for byte.
3. **Clean up**: the folder is fsynced (a failure there rolls back too), the files the new set
   drops are removed, then the backups and last the journal.

Targets are checked again right before the swap: a symbolic link, a folder or anything but a
regular file at a target is refused (``rename`` would replace a link, never follow it, but a
refgen output is never a link). A SIGKILL or a crash of the machine inside the swap cannot be
held back; the journal is what lets the next run (:func:`recover`, under the set's lock) put
the previous set back whole, or finish the new one when all of it is already in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import cleanup, jsonio
from refgen.errors import OutputError

TEMPORARY_SUFFIX = ".tmp"
BACKUP_SUFFIX = ".bak"
_BACKUP_TOKEN_BYTES = 6
NAME_EXTRA = len("..") + 2 * _BACKUP_TOKEN_BYTES + len(BACKUP_SUFFIX)
"""Characters a backup's name (``.NAME.<12 hex digits>.bak``) adds to its target's name; a
staged temporary (``.NAME.<8 characters>.tmp``, tempfile's) adds fewer. A target whose name
plus this exceeds the file system's limit would fail only at the commit."""
JOURNAL_FORMAT = 1
_JOURNAL_LIMIT = 1024 * 1024  # a journal names a handful of files: a few hundred bytes

KILL_AT_VARIABLE = "REFGEN_TEST_KILL_AT_COMMIT_STEP"
"""For tests only: ``N`` makes a process SIGKILL itself right after the N-th step of its
commits (staging a file, linking a backup, writing the journal, a rename, ...), as a kill at
that instant would; the tests kill a real ``refgen generate`` at every step this way."""
_step_count = itertools.count(1)


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


def write_files(
    files: Mapping[Path, bytes], *, journal: Path | None = None, remove: Iterable[Path] = ()
) -> None:
    """Write several files as one step, in the order given (put the file readers trust last),
    and remove the files in *remove* (ones the new set no longer has) once they are in place.

    *journal* (a file in the targets' folder) records the commit while it is under way, so
    that :func:`recover` can repair a commit killed half-way; without one, a kill inside the
    swap can leave a mixed set."""
    targets = list(files)
    temps: dict[Path, Path] = {}
    keys: list[int] = []
    # only for a journal: a repair checks each new file against it before keeping it
    digests = {t: hashlib.sha256(d).hexdigest() for t, d in files.items()} if journal else {}
    try:
        for target in targets:
            _check_target(target)
        for target, data in files.items():
            temps[target], key = _stage(target, data)
            keys.append(key)
            _step(f"staged {temps[target].name}")
        # The CLI's signal path (refgen.cleanup) waits for the whole swap, rollback included;
        # a caller on the main thread has those signals held back for it.
        with cleanup.critical(), _signals_held():
            _swap(targets, temps, digests, journal, list(remove))
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


def _step(what: str) -> None:
    """The test-only fault injection (:data:`KILL_AT_VARIABLE`); nothing when it is unset."""
    wanted = os.environ.get(KILL_AT_VARIABLE)
    if not wanted:
        return
    step = next(_step_count)
    if str(step) == wanted.strip():
        os.write(2, f"refgen: test: SIGKILL after commit step {step}: {what}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


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


def _swap(
    targets: list[Path],
    temps: Mapping[Path, Path],
    digests: Mapping[Path, str],
    journal: Path | None,
    remove: list[Path],
) -> None:
    backups: dict[Path, Path] = {}
    replaced: list[Path] = []
    try:
        for target in targets:
            _check_target(target)
            if os.path.lexists(target):
                backups[target] = _link_backup(target)
                _step(f"linked {backups[target].name}")
        if journal is not None:
            _write_journal(journal, targets, temps, backups, digests, remove)
            _step(f"wrote {journal.name}")
        for target in targets:
            _check_target(target)  # again: nothing may have appeared since
            os.replace(temps[target], target)
            replaced.append(target)
            _step(f"renamed {temps[target].name} to {target.name}")
        for folder in dict.fromkeys(t.parent for t in targets):
            _fsync_dir(folder)  # the renames are on disk before the backups go
        _step("synced the folder")
    except BaseException:
        stuck = _roll_back(replaced, backups)
        for target, backup in backups.items():
            if target not in stuck:  # a backup that could not be put back is kept, and named
                backup.unlink(missing_ok=True)
        if stuck:  # the journal stays too: the next run's recover() tries again
            raise OutputError(
                "could not restore the previous files: " + "; ".join(stuck.values())
            ) from None
        if journal is not None:
            journal.unlink(missing_ok=True)
        raise
    # The new set is in place: what is left is cleaning up, and a failure there must not be
    # reported as a failed write (the next run under the set's lock finishes it from the journal).
    with contextlib.suppress(OSError):
        for path in remove:
            path.unlink(missing_ok=True)
            _step(f"removed {path.name}")
        for backup in backups.values():
            backup.unlink(missing_ok=True)
            _step(f"removed {backup.name}")
        if journal is not None:
            journal.unlink(missing_ok=True)
            _step(f"removed {journal.name}")


def _write_journal(
    journal: Path,
    targets: list[Path],
    temps: Mapping[Path, Path],
    backups: Mapping[Path, Path],
    digests: Mapping[Path, str],
    remove: list[Path],
) -> None:
    """The commit's plan, renamed into place whole (a reader never sees half a journal) and
    on disk before the first target is replaced."""
    folder = journal.parent
    if any(p.parent != folder for p in [*targets, *remove]):
        raise ValueError("a journaled commit writes and removes files of its journal's folder")
    record = {
        "refgen_commit": JOURNAL_FORMAT,
        "files": [
            {
                "target": target.name,
                "staged": temps[target].name,
                "backup": backups[target].name if target in backups else None,
                # the previous file's identity: once moved back, the target is that inode
                "inode": os.lstat(backups[target]).st_ino if target in backups else None,
                "sha256": digests[target],
            }
            for target in targets
        ],
        "remove": [path.name for path in remove],
    }
    tmp, key = _stage(journal, (json.dumps(record, indent=1) + "\n").encode())
    try:
        os.replace(tmp, journal)
        _fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
        cleanup.forget(key)


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did with the journal of a commit that was killed half-way."""

    action: str
    """``restored`` (the previous files are back, the new ones gone), ``finished`` (every new
    file matched its recorded SHA-256 and is now in place) or ``kept`` (neither could be proved
    whole: nothing was touched)."""
    targets: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class _Entry:
    target: str
    staged: str
    backup: str | None
    inode: int | None
    sha256: str


def recover(journal: Path, targets: Collection[str]) -> Recovery | None:
    """Repair the commit *journal* records, when a run was killed in its swap (None: there is
    no journal). Call it only while holding the lock of the set: no live run may own it.

    The previous set is put back when every file of it is still there (each replaced target's
    backup, or its previous inode back in place by a repair killed half-way; a target that did
    not exist before is removed). When every target already holds its new content, the new set
    is whole: the commit is finished instead (its backups removed), and likewise when the
    backups are gone but every new file is in place or staged. Otherwise nothing is touched.
    The journal may name only *targets* (the set's own file names) and their ``.NAME.*``
    temporaries and backups: a tampered one cannot reach other files."""
    try:
        info = os.lstat(journal)
    except FileNotFoundError:
        return None
    folder = journal.parent
    try:
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"it is {jsonio.kind(info.st_mode)}")
        entries, remove = _read_journal(journal, targets)
    except (OSError, ValueError) as exc:
        return Recovery("kept", (), f"{journal.name} is not a journal refgen can use ({exc})")
    names = tuple(e.target for e in entries)
    try:
        new = {e.target: _holds(folder / e.target, e.sha256) for e in entries}
        if all(new.values()):
            action = "finished"
        elif all(_previous_there(folder, e, new[e.target]) for e in entries):
            for e in entries:
                _restore(folder, e)
            action = "restored"
        elif all(new[e.target] or _holds(folder / e.staged, e.sha256) for e in entries):
            for e in entries:
                if not new[e.target]:
                    os.replace(folder / e.staged, folder / e.target)
            action = "finished"
        else:
            return Recovery(
                "kept", names, "neither the previous files nor the new ones are all there"
            )
        _fsync_dir(folder)
        if action == "finished":
            for name in remove:
                (folder / name).unlink(missing_ok=True)
        for e in entries:
            (folder / e.staged).unlink(missing_ok=True)
            if e.backup is not None:
                (folder / e.backup).unlink(missing_ok=True)
        journal.unlink()
        _fsync_dir(folder)
    except OSError as exc:
        return Recovery("kept", names, f"the repair failed ({exc}); run again to retry")
    return Recovery(action, names)


def _previous_there(folder: Path, entry: _Entry, new: bool) -> bool:
    """The file *entry*'s target held before the commit can be put back: its backup is there,
    or it is back in place already (a repair killed half-way); a target that did not exist
    before is absent, or holds the new content (removed then)."""
    if entry.backup is None:
        return new or not os.path.lexists(folder / entry.target)
    return _is_regular(folder / entry.backup) or _inode(folder / entry.target) == entry.inode


def _restore(folder: Path, entry: _Entry) -> None:
    target = folder / entry.target
    if entry.backup is None:
        target.unlink(missing_ok=True)  # new in this commit (checked: it holds the new content)
    elif _inode(target) != entry.inode:  # else never replaced, or already moved back
        os.replace(folder / entry.backup, target)


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def _read_journal(journal: Path, targets: Collection[str]) -> tuple[list[_Entry], list[str]]:
    data: Any = jsonio.read_json(journal, _JOURNAL_LIMIT)
    if not isinstance(data, dict) or data.get("refgen_commit") != JOURNAL_FORMAT:
        raise ValueError(f"not a format-{JOURNAL_FORMAT} commit journal")
    files, remove = data.get("files"), data.get("remove")
    if not isinstance(files, list) or not files or not isinstance(remove, list):
        raise ValueError("'files' and 'remove' must be lists")
    entries: list[_Entry] = []
    for item in files:
        if not isinstance(item, dict):
            raise ValueError("an entry of 'files' is not an object")
        target, staged, backup = item.get("target"), item.get("staged"), item.get("backup")
        digest = item.get("sha256")
        if not isinstance(target, str) or target not in targets:
            raise ValueError(f"it names {target!r}, not a file of this set")
        _check_own(staged, target, TEMPORARY_SUFFIX)
        inode = item.get("inode")
        if backup is not None:
            _check_own(backup, target, BACKUP_SUFFIX)
            if not isinstance(inode, int) or isinstance(inode, bool):
                raise ValueError(f"the backup of {target!r} has no inode number")
        elif inode is not None:
            raise ValueError(f"{target!r} has an inode number but no backup")
        if not (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)):
            raise ValueError(f"the SHA-256 of {target!r} is not 64 hex digits")
        entries.append(_Entry(target, str(staged), backup, inode, digest))
    if len({e.target for e in entries}) != len(entries):
        raise ValueError("a target is named twice")
    if not all(isinstance(name, str) and name in targets for name in remove):
        raise ValueError("'remove' names a file that is not of this set")
    return entries, [str(name) for name in remove]


def _check_own(name: object, target: str, suffix: str) -> None:
    """*name* is one of *target*'s temporaries or backups: ``.TARGET.<token>SUFFIX``."""
    token = (
        name.removeprefix(f".{target}.").removesuffix(suffix)
        if isinstance(name, str) and name.startswith(f".{target}.") and name.endswith(suffix)
        else ""
    )
    if not token or not token.isascii() or not token.replace("_", "").isalnum():
        raise ValueError(f"{name!r} is not a temporary or backup of {target!r}")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _holds(path: Path, sha256: str) -> bool:
    """*path* is a regular file (not through a link) whose content has this SHA-256."""
    if not _is_regular(path):
        return False
    digest = hashlib.sha256()
    with jsonio.open_regular(path) as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest() == sha256


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
