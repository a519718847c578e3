"""The in-toto Statement / SLSA provenance v1: validated against the published specs' rules.

The JSON Schema below is transcribed from the published texts, not from our code:
- in-toto Statement v1 (attestation/spec/v1/statement.md): ``_type`` (always
  https://in-toto.io/Statement/v1), ``subject`` (ResourceDescriptors, each MUST have ``digest``)
  and ``predicateType`` are required; ``predicate`` is an object.
- ResourceDescriptor (spec/v1/resource_descriptor.md): all fields optional but one of ``uri``,
  ``digest`` or ``content`` MUST be set; DigestSet (digest_set.md): algorithm -> lowercase hex.
- SLSA provenance v1 (slsa.dev/spec/v1.0/provenance): Provenance requires ``buildDefinition`` and
  ``runDetails``; BuildDefinition requires ``buildType`` (TypeURI) and ``externalParameters``
  (object); ``internalParameters`` object; ``resolvedDependencies`` array of ResourceDescriptor;
  RunDetails requires ``builder``; Builder requires ``id`` (TypeURI), ``version`` is a string map;
  BuildMetadata fields ``invocationId`` (string), ``startedOn``/``finishedOn`` (Timestamp).
  Extension fields are named ``<vendor>_<field>``; standard field names never contain ``_``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from refgen import provenance
from refgen.errors import ProvenanceError

HEX = {"type": "string", "pattern": "^[a-f0-9]+$"}
URI = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9+.-]*:"}
TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"}
EXTENSION: dict[str, Any] = {"^[a-z0-9]+_[A-Za-z0-9]+$": {}}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "DigestSet": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                alg: HEX
                for alg in ("sha256", "sha224", "sha384", "sha512", "sha1", "gitCommit", "gitTree")
            },
            "additionalProperties": {"type": "string"},
        },
        "ResourceDescriptor": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "uri": URI,
                "digest": {"$ref": "#/$defs/DigestSet"},
                "content": {"type": "string"},
                "downloadLocation": URI,
                "mediaType": {"type": "string"},
                "annotations": {"type": "object"},
            },
            "anyOf": [{"required": ["uri"]}, {"required": ["digest"]}, {"required": ["content"]}],
            "patternProperties": EXTENSION,
            "additionalProperties": False,
        },
        "Subject": {
            "allOf": [{"$ref": "#/$defs/ResourceDescriptor"}, {"required": ["digest"]}],
        },
        "BuildDefinition": {
            "type": "object",
            "required": ["buildType", "externalParameters"],
            "properties": {
                "buildType": URI,
                "externalParameters": {"type": "object"},
                "internalParameters": {"type": "object"},
                "resolvedDependencies": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/ResourceDescriptor"},
                },
            },
            "patternProperties": EXTENSION,
            "additionalProperties": False,
        },
        "RunDetails": {
            "type": "object",
            "required": ["builder"],
            "properties": {
                "builder": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {
                        "id": URI,
                        "version": {"type": "object", "additionalProperties": {"type": "string"}},
                        "builderDependencies": {
                            "type": "array",
                            "items": {"$ref": "#/$defs/ResourceDescriptor"},
                        },
                    },
                    "patternProperties": EXTENSION,
                    "additionalProperties": False,
                },
                "metadata": {
                    "type": "object",
                    "properties": {
                        "invocationId": {"type": "string"},
                        "startedOn": TIMESTAMP,
                        "finishedOn": TIMESTAMP,
                    },
                    "patternProperties": EXTENSION,
                    "additionalProperties": False,
                },
                "byproducts": {"type": "array", "items": {"$ref": "#/$defs/ResourceDescriptor"}},
            },
            "patternProperties": EXTENSION,
            "additionalProperties": False,
        },
    },
    "type": "object",
    "required": ["_type", "subject", "predicateType"],
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v1"},
        "subject": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Subject"}},
        "predicateType": {"const": "https://slsa.dev/provenance/v1"},
        "predicate": {
            "type": "object",
            "required": ["buildDefinition", "runDetails"],
            "properties": {
                "buildDefinition": {"$ref": "#/$defs/BuildDefinition"},
                "runDetails": {"$ref": "#/$defs/RunDetails"},
            },
            "patternProperties": EXTENSION,
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

SHA_A, SHA_B, SHA_C, SHA_D, SHA_E = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
REV = "ea980cb0a6c2ae4b936e82123acc929f1cec04c1"


def sample_manifest(container: bool = False) -> dict[str, Any]:
    """A manifest of the shape refgen writes (schema refgen.manifest/1)."""
    return {
        "schema": "refgen.manifest/1",
        "spec": {
            "file": "qwen3.toml",
            "sha256": SHA_A,
            "content": {"run": {"prompts": ["The capital of France is"], "top_k": 10}},
        },
        "model": {
            "repo": "Qwen/Qwen3-1.7B-Base",
            "revision": REV,
            "lock_file": "qwen3.lock.json",
            "lock_sha256": SHA_E,
            "files": [
                {"path": "model.safetensors", "sha256": SHA_B, "size": 123},
                {"path": "config.json", "sha256": SHA_C, "size": 4},
            ],
        },
        "requirements_lock": {"file": "requirements.lock", "sha256": SHA_D, "size": 5},
        "generator": {
            "version": "0.1.0",
            "git_commit": "1" * 40,
            "git_dirty": False,
            "sources_sha256": "f" * 64,
        },
        "packages": {"torch": "2.13.0+cpu"},
        "platform": {"machine": "x86_64"},
        "determinism": {"threads": 1},
        "container": (
            {
                "image_id": "sha256:" + "9" * 64,
                # as docker/run.sh records it: reference, then the local image ID
                "base_image": "python:3.11-slim@sha256:"
                + "8" * 64
                + " (image sha256:"
                + "5" * 64
                + ")",
                "layers": ["sha256:" + "7" * 64, "sha256:" + "6" * 64],
            }
            if container
            else None
        ),
        "outputs": [{"path": "qwen3_forward_reference.json", "sha256": "0" * 64, "size": 10}],
    }


def validate(statement: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(statement)


@pytest.mark.parametrize("container", [False, True])
def test_statement_matches_published_schema(container: bool) -> None:
    statement = provenance.build_statement(
        sample_manifest(container), manifest_name="x.manifest.json", manifest_sha256="2" * 64
    )
    validate(statement)
    # and the exact bytes we write parse back to the same object
    assert json.loads(provenance.render(statement)) == statement


@pytest.mark.parametrize(
    "breakage",
    [
        lambda s: s.pop("_type"),
        lambda s: s.__setitem__("_type", "https://in-toto.io/Statement/v0.1"),
        lambda s: s.pop("subject"),
        lambda s: s["subject"][0].pop("digest"),
        lambda s: s["subject"].clear(),
        lambda s: s.pop("predicateType"),
        lambda s: s["predicate"].pop("runDetails"),
        lambda s: s["predicate"]["buildDefinition"].pop("buildType"),
        lambda s: s["predicate"]["buildDefinition"].pop("externalParameters"),
        lambda s: s["predicate"]["runDetails"]["builder"].pop("id"),
        lambda s: (
            s["predicate"]["buildDefinition"]["resolvedDependencies"][0].pop("digest")
            and s["predicate"]["buildDefinition"]["resolvedDependencies"][0].pop("uri")
        ),
        lambda s: s["predicate"]["buildDefinition"].__setitem__("systemParameters", {}),
    ],
)
def test_schema_rejects_statements_missing_required_fields(breakage: Any) -> None:
    """The schema is strict enough to fail: each published REQUIRED field is enforced."""
    statement = provenance.build_statement(sample_manifest())
    broken = copy.deepcopy(statement)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_subject_and_dependencies_carry_the_manifest_hashes() -> None:
    manifest = sample_manifest(container=True)
    statement = provenance.build_statement(manifest, environ={})
    assert statement["subject"] == [
        {"name": "qwen3_forward_reference.json", "digest": {"sha256": "0" * 64}}
    ]
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    weights = deps["Qwen/Qwen3-1.7B-Base/model.safetensors"]
    assert weights["uri"] == f"hf://Qwen/Qwen3-1.7B-Base@{REV}/model.safetensors"
    assert weights["digest"] == {"sha256": SHA_B}
    assert weights["annotations"] == {"size": 123}
    assert deps["Qwen/Qwen3-1.7B-Base/config.json"]["digest"] == {"sha256": SHA_C}
    assert deps["qwen3.toml"]["digest"] == {"sha256": SHA_A}
    assert deps["qwen3.lock.json"]["digest"] == {"sha256": SHA_E}
    assert deps["requirements.lock"]["digest"] == {"sha256": SHA_D}
    assert deps["refgen"]["digest"] == {"gitCommit": "1" * 40, "sha256": "f" * 64}
    assert deps["image"]["digest"] == {"sha256": "9" * 64}
    (base,) = [d for d in deps.values() if d["name"].startswith("base-image:")]
    assert base["digest"] == {"sha256": "8" * 64}
    assert base["uri"] == "docker://python:3.11-slim@sha256:" + "8" * 64
    assert deps["image-layer-000"]["digest"] == {"sha256": "7" * 64}
    assert deps["image-layer-001"]["digest"] == {"sha256": "6" * 64}
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"] == provenance.BUILDER_CONTAINER
    assert "metadata" not in run  # no clock is read without SOURCE_DATE_EPOCH
    params = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert params == {
        "spec": "qwen3.toml",
        "model": "Qwen/Qwen3-1.7B-Base",
        "revision": REV,
        "specContent": {"run": {"prompts": ["The capital of France is"], "top_k": 10}},
    }


def test_local_builder_without_container() -> None:
    statement = provenance.build_statement(sample_manifest(), environ={})
    assert statement["predicate"]["runDetails"]["builder"]["id"] == provenance.BUILDER_LOCAL
    names = [d["name"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]]
    assert names == sorted(names)
    assert not any(n.startswith("image") for n in names)


def test_bytes_are_deterministic_and_independent_of_input_order() -> None:
    one = provenance.statement_bytes(sample_manifest(True), environ={})
    shuffled = sample_manifest(True)
    shuffled["model"]["files"].reverse()
    shuffled = dict(reversed(list(shuffled.items())))
    assert provenance.statement_bytes(shuffled, environ={}) == one
    assert one.endswith(b"\n")


def test_started_on_only_from_source_date_epoch() -> None:
    env = {"SOURCE_DATE_EPOCH": "1700000000", "REFGEN_INVOCATION_ID": "ci-run-42"}
    statement = provenance.build_statement(sample_manifest(), environ=env)
    validate(statement)
    assert statement["predicate"]["runDetails"]["metadata"] == {
        "invocationId": "ci-run-42",
        "startedOn": "2023-11-14T22:13:20Z",
    }
    with pytest.raises(ProvenanceError, match="SOURCE_DATE_EPOCH"):
        provenance.build_statement(sample_manifest(), environ={"SOURCE_DATE_EPOCH": "yesterday"})


def test_incomplete_manifest_is_a_clear_error() -> None:
    manifest = sample_manifest()
    del manifest["model"]["revision"]
    with pytest.raises(ProvenanceError, match=r"model\.revision"):
        provenance.build_statement(manifest)
    manifest = sample_manifest()
    manifest["outputs"] = []
    with pytest.raises(ProvenanceError, match="no outputs"):
        provenance.build_statement(manifest)
