"""A reference's file set: ``X.json`` and its siblings, named in one place and committed as one
atomic step.

:class:`Artifact` names the files (one table, :data:`SIBLINGS`; ``X.safetensors``, the probe
file, is :data:`OPTIONAL`), refuses destinations that are links, folders or inputs
(:meth:`Artifact.check_destination`, with the inputs the caller names) and commits the set
(:meth:`Artifact.commit`). Reading a set back and checking it (the auditor's checks and
``generate``'s up-to-date check) is :mod:`refgen.audit`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from refgen import jsonio, paths, probes
from refgen.atomic import write_files
from refgen.spec import Spec

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

    def check_destination(
        self,
        *,
        inputs: Iterable[Path],
        protected: Iterable[Path] = (),
        key: str,
        create: bool = False,
    ) -> Artifact:
        """Refuse (OutputError) to write this set where a file is a symlink, a folder, one of
        *inputs* or under a *protected* folder (the caller names what its run reads), or where
        the folder is missing; *create* makes it instead (an explicit ``--output-dir``).
        See :func:`refgen.paths.check_destinations`."""
        paths.check_destinations(
            self.paths().values(), inputs=inputs, protected=protected, key=key, create=create
        )
        return self

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
        write_files({self.sibling(kind): contents[kind] for kind in SIBLINGS if kind in contents})
        for path in stale:
            path.unlink(missing_ok=True)

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
