"""The auditor's checks: a reference's committed files read back and checked against what they
claim, and the inputs available now against what its manifest names.

* :func:`read_manifest` with :func:`manifest_problems` - the manifest's shape. A manifest is read
  from disk, so it may be anything: each problem is a sentence naming the key, and a manifest
  with problems is a finding (verify) or "out of date" (generate), never a crash further down.
  Output paths must be plain names in the artifact's folder and model-file paths follow the
  lock's rules (:mod:`refgen.lock`), so no reader is led outside those folders.
* :func:`check_integrity` - the committed files against what they claim: every output listed in
  the manifest (SHA-256, size), the ``X.sha256`` file (which also covers the manifest itself),
  and the provenance statement's subject and dependencies.
* :func:`check_inputs` - what is available now against what the manifest names: the spec, its
  model lock, optionally every model file in the local Hugging Face cache, ``requirements.lock``
  and the container image.
* :func:`is_up_to_date` - the same checks, cheap (no hashing of model files: the generator
  verifies them against the lock anyway), for ``generate`` to skip work when nothing changed.

The auditor (:mod:`refgen.verify`) runs these checks, then rebuilds and compares. The file set
itself (names, atomic commit) is :mod:`refgen.artifact`'s.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import hub, jsonio, paths, provenance
from refgen import manifest as manifests
from refgen.artifact import Artifact
from refgen.errors import ArtifactError, RefgenError
from refgen.hashing import sha256_file
from refgen.lock import SHA256, LockedFile, ModelLock, check_folder, entry_problem
from refgen.spec import Spec


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
    """The manifest as a dict; a missing or malformed one is an :class:`ArtifactError`."""
    try:
        data = jsonio.read_json(path)
    except FileNotFoundError:
        raise ArtifactError(f"no manifest {path.name} next to the reference") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path.name}: {exc.strerror}") from None
    except ValueError as exc:
        raise ArtifactError(f"{path.name} is not valid JSON ({exc})") from None
    problems = manifest_problems(data)
    if problems:
        raise ArtifactError(f"{path.name} is malformed: " + "; ".join(problems[:5]))
    assert isinstance(data, dict)  # checked by manifest_problems
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
            text = jsonio.read_bytes(artifact.sums).decode("utf-8")
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
    if os.path.lexists(artifact.journal):  # refgen.atomic.recover has not run since the kill
        found.append(
            Finding(
                "integrity",
                artifact.journal.name,
                "a run was killed while committing this set, which may be mixed; `refgen "
                "generate` for its spec repairs it (the previous set back, or the new one whole)",
            )
        )
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
        statement = jsonio.read_json(artifact.statement)
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


def check_inputs(spec: Spec, recorded: Mapping[str, Any], *, model_files: bool) -> list[Finding]:
    """Current inputs against the manifest. ``model_files`` hashes the cached model files too."""
    found: list[Finding] = []
    recorded_spec = recorded.get("spec") or {}
    if spec.sha256 != recorded_spec.get("sha256"):
        changed = dict_diff(recorded_spec.get("content"), spec.as_dict(), "")
        detail = (
            "changed: " + ", ".join(changed) if changed else "bytes changed (content is the same)"
        )
        found.append(Finding("input", f"spec {spec.path.name}", detail))
    model = recorded.get("model") or {}
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
    req_recorded = recorded.get("requirements_lock") or {}
    req_now = manifests.requirements_lock() or {}
    if req_recorded.get("sha256") != req_now.get("sha256"):
        found.append(
            Finding(
                "input",
                str(req_recorded.get("file") or "requirements.lock"),
                f"sha256 {req_now.get('sha256')} now, {req_recorded.get('sha256')} in the manifest",
            )
        )
    found += _check_container(recorded.get("container"), manifests.container())
    return found


def _lock_detail(lock: Path, recorded: Any) -> str:
    try:
        files = {f["path"]: f["sha256"] for f in jsonio.read_json(lock)["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return "changed and no longer readable"
    before = {f.get("path"): f.get("sha256") for f in recorded or []}
    changed = sorted(p for p in set(files) | set(before) if files.get(p) != before.get(p))
    return "changed" + (f" (entries: {', '.join(map(str, changed))})" if changed else "")


def _check_model_files(spec: Spec, model: Mapping[str, Any]) -> list[Finding]:
    """Hash the cached files of the pinned revision; a missing model is an error, not a finding."""
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
    try:
        recorded = read_manifest(manifest_path)
    except ArtifactError as exc:
        return UpToDate(False, (str(exc),))
    artifact = Artifact.of_manifest(manifest_path)
    reasons = [str(f) for f in check_inputs(spec, recorded, model_files=False)]
    reasons += [str(f) for f in check_integrity(artifact, recorded)]
    sources = (recorded.get("generator") or {}).get("sources_sha256")
    if sources != manifests.generator_identity()["sources_sha256"]:
        reasons.append("generator sources changed since the manifest was written")
    return UpToDate(not reasons, tuple(reasons))


# --- the manifest's shape -------------------------------------------------------------------------

SCHEMA_PREFIX = "refgen.manifest/"
_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list", type(None): "null"}


def _type_name(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


# key -> accepted types; None in the tuple: may be null. Keys absent from a manifest are fine
# unless listed in REQUIRED (older manifests of the same schema lack some sections).
_TOP: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "spec": (dict,),
    "model": (dict,),
    "requirements_lock": (dict, type(None)),
    "generator": (dict,),
    "packages": (dict,),
    "torch_build": (dict,),
    "platform": (dict,),
    "determinism": (dict,),
    "container": (dict, type(None)),
    "outputs": (list,),
    "source_date_epoch": (int,),
    "build_time": (str,),
}
REQUIRED = ("schema", "spec", "model", "outputs")
_SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "spec": {"file": (str,), "sha256": (str,), "content": (dict,)},
    "model": {
        "repo": (str,),
        "revision": (str,),
        "lock_file": (str,),
        "lock_sha256": (str,),
        "files": (list,),
    },
    "requirements_lock": {"file": (str,), "sha256": (str,), "size": (int,)},
    "generator": {"sources_sha256": (str, type(None))},
    "container": {"image_id": (str,), "base_image": (str, type(None)), "layers": (list,)},
}


def manifest_problems(data: Any) -> list[str]:
    """Everything wrong with a manifest's shape (empty when it can be read safely)."""
    if not isinstance(data, Mapping):
        return [f"the manifest must be a JSON object, got {_type_name(data)}"]
    found: list[str] = []
    schema = data.get("schema")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        found.append(f"'schema' must be '{SCHEMA_PREFIX}N', got {schema!r}")
    for key in REQUIRED:
        if key not in data:
            found.append(f"'{key}' is missing")
    for key, kinds in _TOP.items():
        if key in data and not _is(data[key], kinds):
            found.append(f"'{key}' must be {_expected(kinds)}, got {_type_name(data[key])}")
    for section, keys in _SECTIONS.items():
        value = data.get(section)
        if not isinstance(value, Mapping):
            continue
        for key, kinds in keys.items():
            if key in value and not _is(value[key], kinds):
                found.append(
                    f"'{section}.{key}' must be {_expected(kinds)}, got {_type_name(value[key])}"
                )
    model = data.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("files"), list):
        for i, entry in enumerate(model["files"]):
            problem = entry_problem(entry)
            if problem is not None:
                found.append(f"'model.files[{i}]' {problem}")
    outputs = data.get("outputs")
    if isinstance(outputs, list):
        for i, out in enumerate(outputs):
            found += _output_problems(i, out)
    return found


def _output_problems(i: int, out: Any) -> list[str]:
    where = f"'outputs[{i}]'"
    if not isinstance(out, Mapping):
        return [f"{where} must be an object with path, sha256 and size, got {_type_name(out)}"]
    path = out.get("path")
    if not isinstance(path, str):
        return [f"{where}.path must be a string, got {_type_name(path)}"]
    found = []
    problem = paths.plain_name_problem(path)
    if problem is not None:
        found.append(f"{where}.path {path!r} {problem}")
    digest = out.get("sha256")
    if not isinstance(digest, str) or not SHA256.match(digest):
        found.append(f"{where}.sha256 must be 64 lowercase hexadecimal digits, got {digest!r}")
    size = out.get("size")
    if size is not None and (not _is(size, (int,)) or size < 0):
        found.append(f"{where}.size must be an integer >= 0, got {size!r}")
    return found


def _expected(kinds: tuple[type, ...]) -> str:
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
