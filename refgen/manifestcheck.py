"""The shape of a manifest as read back (by ``verify`` and ``generate``'s up-to-date check).

A manifest is read from disk, so it may be anything: each problem is a sentence naming the key,
and a manifest with problems is a finding (verify) or "out of date" (generate), never a crash
further down. Output paths must be plain names in the artifact's folder and model-file paths
follow the lock's rules (:mod:`refgen.lock`), so no reader is led outside those folders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refgen.lock import SHA256, entry_problem
from refgen.paths import plain_name_problem

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


def problems(data: Any) -> list[str]:
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
    problem = plain_name_problem(path)
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
