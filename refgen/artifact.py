"""A reference's file set: ``X.json`` and its siblings; reading, checking, committing them.

* :class:`Artifact` names the files (one table, :data:`SIBLINGS`; ``X.safetensors``, the probe
  file, is :data:`OPTIONAL`) and commits them as one atomic step.
* :func:`read_manifest`, :func:`check_integrity` - the committed files against what they claim:
  every output listed in the manifest (SHA-256, size), the ``X.sha256`` file (which also covers
  the manifest itself), and the provenance statement's subject and dependencies.
* :func:`check_inputs` - what is available now against what the manifest names: the spec, its
  model lock, optionally every model file in the local Hugging Face cache, ``requirements.lock``
  and the container image.
* :func:`is_up_to_date` - the same checks, cheap (no hashing of model files: the generator
  verifies them against the lock anyway), for ``generate`` to skip work when nothing changed.

The auditor (:mod:`refgen.verify`) runs these checks too, then rebuilds and compares.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import jsonio, manifestcheck, paths, probes, provenance
from refgen.atomic import write_files
from refgen.errors import ArtifactError, RefgenError
from refgen.hashing import sha256_file
from refgen.lock import LockedFile, ModelLock, check_folder
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

    def check_destination(self, spec: Spec, output_dir: Path | None = None) -> Artifact:
        """Refuse (OutputError) to write this set where a file is a symlink, a folder or an input
        of the run (spec, lock, ``requirements.lock``, the model cache), or where the folder
        is missing; an explicit ``--output-dir`` is created (:mod:`refgen.paths`)."""
        from refgen import hub

        inputs = hub.run_inputs(spec)  # what this run reads: refgen.hub owns the list
        paths.check_destinations(
            self.paths().values(),
            inputs=inputs.files,
            protected=inputs.folders,
            key="--output-dir" if output_dir else f"'reference.output' of {spec.path.name}",
            create=output_dir is not None,
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
        # Only JSON, not the full shape check of read_manifest: the names are compared with this
        # artifact's own sibling names, so nothing outside its folder can be named.
        try:
            data = jsonio.loads(self.manifest.read_bytes())
        except (OSError, ValueError):
            return set()
        outputs = data.get("outputs") if isinstance(data, Mapping) else None
        if not isinstance(outputs, list):
            return set()
        return {str(o.get("path")) for o in outputs if isinstance(o, Mapping)}


@dataclass(frozen=True)
class Finding:
    """A failed check: ``kind`` is integrity | input | rebuild; ``subject`` names the file."""

    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


# --- integrity of the committed files -------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict; a missing or malformed one is a :class:`VerifyError`."""
    try:
        data = jsonio.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"no manifest {path.name} next to the reference") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path.name}: {exc.strerror}") from None
    except ValueError as exc:
        raise ArtifactError(f"{path.name} is not valid JSON ({exc})") from None
    problems = manifestcheck.problems(data)
    if problems:
        raise ArtifactError(f"{path.name} is malformed: " + "; ".join(problems[:5]))
    assert isinstance(data, dict)  # checked by manifestcheck
    return data


def check_integrity(artifact: Artifact, manifest: Mapping[str, Any] | None) -> list[Finding]:
    """Committed files against the manifest, the sums file and the provenance statement."""
    found: list[Finding] = []
    folder = artifact.reference.parent
    if manifest is not None:
        outputs = manifest.get("outputs") or []
        if artifact.reference.name not in {o.get("path") for o in outputs}:
            found.append(
                Finding("integrity", artifact.manifest.name, "does not list the reference")
            )
        for out in outputs:
            found += _check_file(folder, out.get("path"), out.get("sha256"), out.get("size"))
    if _is_regular(artifact.sums):
        try:
            text = artifact.sums.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            text = ""
            found.append(Finding("integrity", artifact.sums.name, f"unreadable ({exc})"))
        for line_no, line in enumerate(text.splitlines(), 1):
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                found.append(Finding("integrity", artifact.sums.name, f"line {line_no} malformed"))
                continue
            found += _check_file(folder, name, digest, None, via=artifact.sums.name)
    elif os.path.lexists(artifact.sums):
        found.append(Finding("integrity", artifact.sums.name, "not a regular file"))
    else:
        found.append(Finding("integrity", artifact.sums.name, "missing"))
    if manifest is not None and artifact.statement.is_file():
        found += _check_statement(artifact, manifest)
    return dedupe(found)


def _is_regular(path: Path) -> bool:
    """A regular file, not a symbolic link (an artifact's files are never links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _check_file(
    folder: Path, name: Any, sha256: Any, size: Any, via: str = "manifest"
) -> list[Finding]:
    """One listed file; only a plain name in the artifact's folder is ever opened."""
    problem = paths.plain_name_problem(name) if isinstance(name, str) else "is not a string"
    if problem is not None:
        return [
            Finding(
                "integrity",
                str(name),
                f"listed in the {via} but {problem}; only files next to the reference are read",
            )
        ]
    path = folder / name
    if os.path.islink(path):
        return [Finding("integrity", name, f"is a symbolic link (listed in the {via})")]
    if not path.is_file():
        return [Finding("integrity", path.name, f"missing (listed in the {via})")]
    actual, actual_size = sha256_file(path, progress=False)
    if actual != sha256:
        return [
            Finding(
                "integrity",
                path.name,
                f"sha256 {actual} does not match the {via}'s {sha256}; the file was modified "
                "after it was generated",
            )
        ]
    if size is not None and actual_size != size:
        return [Finding("integrity", path.name, f"size {actual_size} != {size} in the {via}")]
    return []


def _check_statement(artifact: Artifact, manifest: Mapping[str, Any]) -> list[Finding]:
    """The statement must attest the same subject and dependencies the manifest records."""
    name = artifact.statement.name
    try:
        statement = jsonio.loads(artifact.statement.read_bytes())
        expected = provenance.build_statement(manifest, environ={})
        subject_ok = statement["subject"] == expected["subject"]
        deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        deps_ok = deps == expected["predicate"]["buildDefinition"]["resolvedDependencies"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RefgenError) as exc:
        return [Finding("integrity", name, f"unreadable or incomplete ({exc!r})")]
    found = []
    if not subject_ok:
        found.append(Finding("integrity", name, "subject does not match the manifest's outputs"))
    if not deps_ok:
        found.append(Finding("integrity", name, "resolvedDependencies differ from the manifest"))
    return found


def dedupe(found: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(found))


# --- inputs now vs. the manifest ------------------------------------------------------------------


def check_inputs(spec: Spec, manifest: Mapping[str, Any], *, model_files: bool) -> list[Finding]:
    """Current inputs against the manifest. ``model_files`` hashes the cached model files too."""
    from refgen import manifest as manifest_mod

    found: list[Finding] = []
    recorded_spec = manifest.get("spec") or {}
    if spec.sha256 != recorded_spec.get("sha256"):
        changed = dict_diff(recorded_spec.get("content"), spec.as_dict(), "")
        detail = (
            "changed: " + ", ".join(changed) if changed else "bytes changed (content is the same)"
        )
        found.append(Finding("input", f"spec {spec.path.name}", detail))
    model = manifest.get("model") or {}
    # A local folder's spec may leave the revision to its lock (whose hash is checked below).
    wanted = spec.revision or model.get("revision")
    if (model.get("repo"), model.get("revision")) != (spec.repo, wanted):
        found.append(
            Finding(
                "input",
                "model",
                f"manifest has {model.get('repo')}@{model.get('revision')}, "
                f"the spec asks for {spec.repo}@{spec.revision}",
            )
        )
    lock = spec.lock_path
    if not lock.is_file():
        found.append(Finding("input", f"model lock {lock.name}", "missing"))
    elif sha256_file(lock, progress=False)[0] != model.get("lock_sha256"):
        found.append(
            Finding("input", f"model lock {lock.name}", _lock_detail(lock, model.get("files")))
        )
    if model_files:
        found += _check_model_files(spec, model)
    req_recorded = manifest.get("requirements_lock") or {}
    req_now = manifest_mod.requirements_lock() or {}
    if req_recorded.get("sha256") != req_now.get("sha256"):
        found.append(
            Finding(
                "input",
                str(req_recorded.get("file") or "requirements.lock"),
                f"sha256 {req_now.get('sha256')} now, {req_recorded.get('sha256')} in the manifest",
            )
        )
    found += _check_container(manifest.get("container"), manifest_mod.container())
    return found


def _lock_detail(lock: Path, recorded: Any) -> str:
    try:
        files = {f["path"]: f["sha256"] for f in jsonio.loads(lock.read_bytes())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return "changed and no longer readable"
    before = {f.get("path"): f.get("sha256") for f in recorded or []}
    changed = sorted(p for p in set(files) | set(before) if files.get(p) != before.get(p))
    return "changed" + (f" (entries: {', '.join(map(str, changed))})" if changed else "")


def _check_model_files(spec: Spec, model: Mapping[str, Any]) -> list[Finding]:
    """Hash the cached files of the pinned revision; a missing model is an error, not a finding."""
    from refgen import hub

    recorded = ModelLock(
        spec.repo,
        spec.revision or str(model.get("revision")),
        tuple(
            LockedFile(str(f["path"]), str(f["sha256"]), f.get("size"), f.get("blake3"))
            for f in model.get("files") or []
        ),
    )
    folder = hub.cached_snapshot(spec, recorded)
    result = check_folder(recorded.files, folder, progress=False)
    return [
        Finding(
            "input",
            f"model file {m.path}",
            f"cached copy has {m.algorithm} {m.actual_digest} ({m.actual_size} bytes), the "
            f"manifest names {m.expected_digest} ({m.expected_size} bytes)",
        )
        for m in result.mismatched
    ]


def _check_container(recorded: Any, now: Any) -> list[Finding]:
    if (
        isinstance(recorded, Mapping)
        and isinstance(now, Mapping)
        and recorded.get("image_id") != now.get("image_id")
    ):
        return [
            Finding(
                "input",
                "container image",
                f"running in {now.get('image_id')}, the manifest names {recorded.get('image_id')}",
            )
        ]
    return []


def dict_diff(a: Any, b: Any, path: str) -> list[str]:
    """Paths where two JSON-like values differ (for naming what changed in a spec)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += dict_diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in dict_diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path or "(root)"]


# --- incremental runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpToDate:
    """Whether an artifact is current; ``reasons`` says why not (empty when current)."""

    current: bool
    reasons: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.current


def is_up_to_date(spec: Spec, manifest_path: Path) -> UpToDate:
    """True when the spec, its model lock, ``requirements.lock`` and the generator's sources are
    those the manifest records and the outputs it lists are intact; cheap (no model hashing)."""
    from refgen import manifest as manifest_mod

    try:
        recorded = read_manifest(manifest_path)
    except ArtifactError as exc:
        return UpToDate(False, (str(exc),))
    artifact = Artifact.of_manifest(manifest_path)
    reasons = [str(f) for f in check_inputs(spec, recorded, model_files=False)]
    reasons += [str(f) for f in check_integrity(artifact, recorded)]
    sources = (recorded.get("generator") or {}).get("sources_sha256")
    if sources != manifest_mod.generator_identity()["sources_sha256"]:
        reasons.append("generator sources changed since the manifest was written")
    return UpToDate(not reasons, tuple(reasons))
