"""in-toto Statement v1 with a SLSA provenance v1 predicate, derived from a refgen manifest.

Why a second file next to the manifest: the manifest is our own format; the Statement is the one
supply-chain tools (slsa-verifier, in-toto, policy engines) already read. It says *what* was built
(``subject``: the reference JSON and its SHA-256), *from what* (``resolvedDependencies``: model
files, the spec and its model lock, ``requirements.lock``, the generator's sources, the base image
and image layers) and *how* (``buildType``, external and internal parameters, ``builder.id``).

The Statement is a pure function of the manifest (plus ``SOURCE_DATE_EPOCH`` and an optional
invocation id), so the same inputs give the same bytes: no clock, no host path, sorted keys.
Specs: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md and
https://slsa.dev/spec/v1.0/provenance
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from refgen.errors import ProvenanceError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:refgen:buildtype:forward-reference:v1"
"""The template: ``refgen generate --spec <externalParameters.spec>``, determinism profile on."""
BUILDER_LOCAL = "urn:refgen:builder:local:v1"
BUILDER_CONTAINER = "urn:refgen:builder:container:v1"
"""SLSA: each mode of a builder with different trust must have its own ``builder.id``."""
INVOCATION_ENV = "REFGEN_INVOCATION_ID"
_DIGEST = re.compile(r"(?:^|@)sha256:([0-9a-f]{64})\b")


def _need(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise ProvenanceError(
            f"manifest has no '{where}{key}'; regenerate the reference with `refgen generate` "
            "so that the manifest is complete."
        )
    return mapping[key]


def _sha256(entry: Mapping[str, Any], where: str) -> dict[str, str]:
    return {"sha256": str(_need(entry, "sha256", where))}


def _spec_name(spec: Mapping[str, Any]) -> str:
    """The spec's file as the manifest records it (``file``; ``path`` in early drafts)."""
    name = spec.get("file") or spec.get("path")
    if not name:
        raise ProvenanceError(
            "manifest has no 'spec.file'; regenerate the reference with `refgen generate`."
        )
    return str(name)


def _image_digest(ref: str) -> dict[str, str]:
    """``name@sha256:HEX``, ``sha256:HEX`` or ``name@sha256:HEX (image sha256:ID)`` (as the
    container runner records a base image) -> ``{"sha256": HEX}`` of the reference itself."""
    match = _DIGEST.search(ref)
    return {"sha256": match.group(1)} if match else {}


def _image_uri(ref: str) -> str:
    return "docker://" + ref.split()[0]


# The latest second a calendar date can name (9999-12-31T23:59:59Z): datetime's own limit.
MAX_EPOCH = 253_402_300_799
_EPOCH = re.compile(r"[0-9]{1,12}", re.ASCII)


def source_date_epoch(value: str | None) -> int | None:
    """``SOURCE_DATE_EPOCH`` as the reproducible-builds specification defines it: ASCII digits,
    seconds since 1970 (unset or empty: None); anything else is a :class:`ProvenanceError`
    (checked before a run computes anything)."""
    if value is None or value == "":
        return None
    if not _EPOCH.fullmatch(value) or int(value) > MAX_EPOCH:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ProvenanceError(
            f"SOURCE_DATE_EPOCH must be an integer number of seconds since 1970 in ASCII digits, "
            f"at most {MAX_EPOCH} (year 9999), got {shown!r}; unset it or set e.g. "
            "SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)."
        )
    return int(value)


def _started_on(value: str | None) -> str | None:
    seconds = source_date_epoch(value)
    if seconds is None:
        return None
    moment = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def resolved_dependencies(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every input whose content could change the output, as ResourceDescriptors, sorted."""
    deps: list[dict[str, Any]] = []
    model = _need(manifest, "model", "")
    repo, revision = _need(model, "repo", "model."), _need(model, "revision", "model.")
    for f in _need(model, "files", "model."):
        path = str(_need(f, "path", "model.files[]."))
        dep: dict[str, Any] = {
            "name": f"{repo}/{path}",
            "uri": f"hf://{repo}@{revision}/{path}",
            "digest": _sha256(f, "model.files[]."),
        }
        if "size" in f:
            dep["annotations"] = {"size": f["size"]}
        deps.append(dep)
    spec = _need(manifest, "spec", "")
    deps.append({"name": _spec_name(spec), "digest": _sha256(spec, "spec.")})
    if model.get("lock_sha256"):
        lock_name = str(model.get("lock_file") or "model-lock")
        deps.append({"name": lock_name, "digest": {"sha256": str(model["lock_sha256"])}})
    req = manifest.get("requirements_lock")
    if isinstance(req, Mapping) and req.get("sha256"):
        name = str(req.get("file") or req.get("path") or "requirements.lock")
        deps.append({"name": name, "digest": _sha256(req, "")})
    gen = manifest.get("generator")
    if isinstance(gen, Mapping):
        digest: dict[str, str] = {}
        if gen.get("git_commit"):
            digest["gitCommit"] = str(gen["git_commit"])
        if gen.get("sources_sha256"):
            digest["sha256"] = str(gen["sources_sha256"])
        if digest:
            deps.append(
                {
                    "name": "refgen",
                    "digest": digest,
                    "annotations": {
                        "version": gen.get("version"),
                        "gitDirty": gen.get("git_dirty"),
                        "sha256Of": "the generator's source files (see the manifest)",
                    },
                }
            )
    container = manifest.get("container")
    if isinstance(container, Mapping):
        deps.extend(_container_dependencies(container))
    return sorted(deps, key=lambda d: (d.get("name", ""), d.get("uri", "")))


def _container_dependencies(container: Mapping[str, Any]) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = []
    base = container.get("base_image")
    if base:
        entry: dict[str, Any] = {"name": f"base-image:{base}", "uri": _image_uri(str(base))}
        if _image_digest(str(base)):
            entry["digest"] = _image_digest(str(base))
        deps.append(entry)
    image = container.get("image_id")
    if image:
        entry = {"name": "image", "uri": _image_uri(str(image))}
        if _image_digest(str(image)):
            entry["digest"] = _image_digest(str(image))
        deps.append(entry)
    for i, layer in enumerate(container.get("layers") or []):
        digest = _image_digest(str(layer))
        if digest:
            deps.append({"name": f"image-layer-{i:03d}", "digest": digest})
    return deps


def build_statement(
    manifest: Mapping[str, Any],
    *,
    manifest_name: str | None = None,
    manifest_sha256: str | None = None,
    invocation_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Statement for a manifest; ``environ`` (default ``os.environ``) supplies
    ``SOURCE_DATE_EPOCH`` and ``REFGEN_INVOCATION_ID``, the only time-like inputs allowed."""
    env = os.environ if environ is None else environ
    outputs = _need(manifest, "outputs", "")
    if not outputs:
        raise ProvenanceError("manifest lists no outputs; there is nothing to attest.")
    subject = sorted(
        (
            {
                "name": PurePosixPath(str(_need(o, "path", "outputs[]."))).name,
                "digest": _sha256(o, "outputs[]."),
            }
            for o in outputs
        ),
        key=lambda s: str(s["name"]),
    )
    spec = _need(manifest, "spec", "")
    model = _need(manifest, "model", "")
    external: dict[str, Any] = {
        "spec": _spec_name(spec),
        "model": str(_need(model, "repo", "model.")),
        "revision": str(_need(model, "revision", "model.")),
    }
    content = spec.get("content")
    if isinstance(content, Mapping):
        external["specContent"] = dict(content)
    internal = {
        key: manifest[key]
        for key in ("determinism", "packages", "torch_build", "platform")
        if manifest.get(key) is not None
    }
    gen_entry = manifest.get("generator")
    gen: Mapping[str, Any] = gen_entry if isinstance(gen_entry, Mapping) else {}
    container = manifest.get("container")
    builder: dict[str, Any] = {
        "id": BUILDER_CONTAINER if isinstance(container, Mapping) else BUILDER_LOCAL,
        "version": {"refgen": str(gen.get("version", "unknown"))},
    }
    metadata: dict[str, str] = {}
    invocation = invocation_id or env.get(INVOCATION_ENV)
    if invocation:
        metadata["invocationId"] = invocation
    started = _started_on(env.get("SOURCE_DATE_EPOCH"))
    if started:
        metadata["startedOn"] = started
    run_details: dict[str, Any] = {"builder": builder}
    if metadata:
        run_details["metadata"] = metadata
    if manifest_sha256:
        run_details["byproducts"] = [
            {"name": manifest_name or "manifest", "digest": {"sha256": manifest_sha256}}
        ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": resolved_dependencies(manifest),
            },
            "runDetails": run_details,
        },
    }


def render(statement: Mapping[str, Any]) -> bytes:
    """Canonical bytes: sorted keys, 2-space indent, UTF-8, final newline."""
    return (json.dumps(statement, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def statement_bytes(manifest: Mapping[str, Any], **kwargs: Any) -> bytes:
    """``render(build_statement(manifest, **kwargs))``: the bytes of ``X.intoto.json``."""
    return render(build_statement(manifest, **kwargs))
