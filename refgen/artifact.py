"""A reference's file set: ``X.json`` and its siblings, named in one place and committed as one
atomic step.

:class:`Artifact` names the files (one table, :data:`SIBLINGS`; ``X.safetensors``, the probe
file, is :data:`OPTIONAL`), refuses destinations that are links, folders or inputs
(:meth:`Artifact.check_destination`, with the inputs the caller names) and commits the set
(:meth:`Artifact.commit`). Reading a set back and checking it (the auditor's checks and
``generate``'s up-to-date check) is :mod:`refgen.audit`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from refgen import atomic, cleanup, jsonio, paths, probes
from refgen.errors import OutputError
from refgen.spec import Spec

log = logging.getLogger("refgen")

# Suffix of each file of a reference ``X.json``, in the order they are committed: ``sha256sum -c``
# trusts the sums file, so it is renamed into place last.
SIBLINGS: dict[str, str] = {
    "reference": ".json",
    "probes": probes.SUFFIX,  # X.safetensors, only when the spec declares [probes]
    "manifest": ".manifest.json",
    "statement": ".intoto.json",  # in-toto Statement / SLSA provenance v1
    "sums": ".sha256",
}
OPTIONAL = frozenset({"probes"})
"""Kinds a reference may lack; every other kind is written by every commit."""
LOCK_SUFFIX = ".lock"
"""``.X.lock``, beside the set while a run holds it (see :meth:`Artifact.locked`)."""
JOURNAL_SUFFIX = ".commit.json"
"""``.X.commit.json``, beside the set while its commit swaps files (see
:func:`refgen.atomic.recover`)."""
DEFAULT_NAME_MAX = 255  # when the file system does not say (pathconf): ext4, xfs, btrfs, tmpfs

# The sets this process holds (a run locks its set once; generate inside it does not wait on it)
_held: set[Path] = set()


@dataclass(frozen=True)
class Artifact:
    """The files of one reference (``X.json`` and its siblings)."""

    reference: Path

    @classmethod
    def of(cls, spec: Spec, output_dir: Path | None = None) -> Artifact:
        """Where a spec's artifact goes: the spec's ``output``, or that name in ``output_dir``."""
        return cls((output_dir.resolve() / spec.output.name) if output_dir else spec.output)

    @classmethod
    def of_manifest(cls, manifest: Path) -> Artifact:
        stem = manifest.name.removesuffix(SIBLINGS["manifest"])
        return cls(manifest.with_name(stem + SIBLINGS["reference"]))

    @property
    def stem(self) -> str:
        return self.reference.name.removesuffix(SIBLINGS["reference"])

    def sibling(self, kind: str) -> Path:
        return self.reference.with_name(self.stem + SIBLINGS[kind])

    @property
    def manifest(self) -> Path:
        return self.sibling("manifest")

    @property
    def statement(self) -> Path:
        return self.sibling("statement")

    @property
    def sums(self) -> Path:
        return self.sibling("sums")

    def paths(self) -> dict[str, Path]:
        """Every file of the set by kind, in commit order."""
        return {kind: self.sibling(kind) for kind in SIBLINGS}

    @property
    def lock_file(self) -> Path:
        return self.reference.with_name(f".{self.stem}{LOCK_SUFFIX}")

    @property
    def journal(self) -> Path:
        return self.reference.with_name(f".{self.stem}{JOURNAL_SUFFIX}")

    def names(self) -> list[str]:
        """Every name this set puts in its folder: its files, its lock and its journal."""
        return [p.name for p in self.paths().values()] + [self.lock_file.name, self.journal.name]

    def check_destination(
        self,
        *,
        inputs: Iterable[Path],
        protected: Iterable[Path] = (),
        key: str,
        create: bool = False,
    ) -> Artifact:
        """Refuse (OutputError) to write this set where a file is a symlink, a folder, one of
        *inputs* or under a *protected* folder (the caller names what its run reads), where
        the folder is missing (*create* makes it instead: an explicit ``--output-dir``), or
        where the longest name the commit makes would pass the file system's name limit.
        See :func:`refgen.paths.check_destinations`."""
        self._check_name_length(key)
        paths.check_destinations(
            self.paths().values(), inputs=inputs, protected=protected, key=key, create=create
        )
        return self

    def _check_name_length(self, key: str) -> None:
        """ENAMETOOLONG is refused here, before any compute, not met at the commit."""
        longest = max(self.names(), key=lambda n: len(n.encode()))
        need = len(longest.encode()) + atomic.NAME_EXTRA
        limit = _name_max(self.reference.parent)
        if need > limit:
            room = limit - atomic.NAME_EXTRA - (len(longest.encode()) - len(self.stem.encode()))
            raise OutputError(
                f"the output name {self.reference.name[:60]!r}... (from {key}) is too long: "
                f"its longest companion, {longest[:40]!r}... with the suffix refgen adds while "
                f"writing, is {need} bytes, and this file system allows {limit} per name. "
                f"Shorten the name to at most {max(room, 0)} characters before '.json'."
            )

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this set's inter-process lock (``.X.lock`` beside it, through filelock) for the
        block: a second run writing the same set waits (logged) until the first has committed
        or failed, so the set is never mixed from two runs. Once held (no live run can own
        what a killed run left now), a commit killed half-way is repaired from its journal
        (the previous set restored, or the new one finished when it is whole) and the staged
        temporaries and backups left are removed, or named."""
        key = self.lock_file.resolve()
        if key in _held:  # this process already holds it (generate under the CLI's lock)
            yield
            return

        def waiting() -> None:
            log.info(
                "waiting for another refgen run writing %s to finish (it holds %s)",
                self.reference.name,
                self.lock_file.name,
            )

        with cleanup.held_lock(self.lock_file, waiting):
            _held.add(key)
            try:
                if self._recover():
                    self._remove_leftovers()
                yield
            finally:
                _held.discard(key)

    def _recover(self) -> bool:
        """Repair a commit killed half-way (its journal is there); False when that could not
        be proved safe, so nothing it left may be removed."""
        found = atomic.recover(self.journal, [p.name for p in self.paths().values()])
        if found is None:
            return True
        if found.action == "restored":
            log.warning(
                "a run was killed while committing %s: the previous set is restored from its "
                "backups (%s)",
                self.reference.name,
                ", ".join(found.targets),
            )
        elif found.action == "finished":
            log.warning(
                "a run was killed while committing %s after its new files were written: they "
                "match the SHA-256 its journal recorded, so that commit is finished (%s)",
                self.reference.name,
                ", ".join(found.targets),
            )
        else:
            kept = [self.journal.name]
            for target in self.paths().values():
                temporaries, backups = atomic.leftovers(target)
                kept += [p.name for p in temporaries + backups]
            log.warning(
                "a run was killed while committing %s and %s: nothing is removed, these are "
                "kept: %s; a new commit replaces the set",
                self.reference.name,
                found.reason,
                ", ".join(kept),
            )
        return found.action != "kept"

    def _remove_leftovers(self) -> None:
        for target in [*self.paths().values(), self.journal]:
            temporaries, backups = atomic.leftovers(target)
            for path in temporaries:
                path.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted run", path.name)
            for path in backups:
                if os.path.lexists(target) and os.path.samefile(path, target):
                    path.unlink()  # a second link to the file in place: nothing to keep
                    log.info("removed %s, left by an interrupted run", path.name)
                else:
                    log.warning(
                        "%s holds the previous %s of a run killed while committing; it is kept "
                        "until this run commits a whole new set",
                        path.name,
                        target.name,
                    )

    def commit(self, contents: Mapping[str, bytes]) -> None:
        """Write the whole set (``{kind: bytes}``, every kind of :data:`SIBLINGS` but the
        optional ones this reference lacks) as one step: a failed or interrupted run leaves the
        previous artifact as it was.

        An optional file the previous manifest listed and this set lacks (the spec no longer
        declares probes) is removed after the commit: left in place, ``diff`` and ``verify``
        would compare it as if it were current. A file the manifest did not list is not ours
        and stays."""
        required = [kind for kind in SIBLINGS if kind not in OPTIONAL]
        if not set(required) <= set(contents) <= set(SIBLINGS):
            raise ValueError(
                f"an artifact has the files {required} (optionally {sorted(OPTIONAL)}), "
                f"got {list(contents)}"
            )
        stale = [
            self.sibling(kind)
            for kind in sorted(OPTIONAL - set(contents))
            if self.sibling(kind).name in self._listed_outputs()
        ]
        atomic.write_files(
            {self.sibling(kind): contents[kind] for kind in SIBLINGS if kind in contents},
            journal=self.journal,
            remove=stale,
        )
        if self.lock_file.resolve() in _held:  # a whole new set is in place: old backups go
            for target in self.paths().values():
                for backup in atomic.leftovers(target)[1]:
                    backup.unlink(missing_ok=True)
                    log.info("removed %s: the set it was part of is replaced", backup.name)

    def _listed_outputs(self) -> set[str]:
        """The output names the current manifest lists (none when it is missing or unreadable)."""
        # Only JSON, not refgen.audit's full shape check: the names are compared with this
        # artifact's own sibling names, so nothing outside its folder can be named.
        try:
            data = jsonio.loads(self.manifest.read_bytes())
        except (OSError, ValueError):
            return set()
        outputs = data.get("outputs") if isinstance(data, Mapping) else None
        if not isinstance(outputs, list):
            return set()
        return {str(o.get("path")) for o in outputs if isinstance(o, Mapping)}


def _name_max(folder: Path) -> int:
    """The longest file name *folder*'s file system accepts (the nearest existing parent's)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX
