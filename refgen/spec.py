"""The reference spec: a small TOML file that says what to build, so a new reference is a new file.

Example (the keys are documented in the README)::

    schema = 1
    [reference]
    name = "qwen3-1.7b-base-forward"
    output = "../scripts/qwen3_forward_reference.json"   # relative to this file's folder
    [model]
    repo = "Qwen/Qwen3-1.7B-Base"
    revision = "ea980cb0a6c2ae4b936e82123acc929f1cec04c1"
    dtype = "float32"                 # or "bfloat16", "float16"
    [run]
    prompts = ["The capital of France is"]
    top_k = 10
    load = "auto"              # or "memory", "stream" (layer by layer: models bigger than RAM)
    memory_budget = "16GB"     # optional; default 0.75 x the memory available at run time
    [verify]
    tolerance = 1e-6
    [probes]                         # optional; without it the run captures only the JSON
    hidden_states = "all"            # or [0, 1, 2]: hidden_states[j] as transformers numbers them
    positions = "last"               # or "all"
    logits = "last"                  # the full last-position logits vector
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import jsonio
from refgen.errors import SpecError
from refgen.paths import spec_output

SPEC_SCHEMA = 1
DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
# A local folder's revision is derived from its content: see ``hub.content_revision``.
_CONTENT_REVISION = re.compile(r"^[0-9a-f]{64}$")
_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
# How weights are loaded (refgen.streaming): in memory, layer-streamed, or chosen by size.
LOAD_MODES = ("auto", "memory", "stream")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}

_TYPE_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "a table",
    (str, list): '"all" or a list of layer indices',
}
# table -> key -> (type, required, default)
_KEYS: dict[str, dict[str, tuple[type | tuple[type, ...], bool, Any]]] = {
    "reference": {"name": (str, True, None), "output": (str, True, None)},
    "model": {
        "repo": (str, False, None),
        "revision": (str, False, None),
        "path": (str, False, None),
        "dtype": (str, False, "float32"),
        # None: what from_pretrained picks for the model (sdpa for most, eager for Gemma2)
        "attn_implementation": (str, False, None),
    },
    "run": {
        "prompts": (list, True, None),
        "top_k": (int, False, 10),
        "load": (str, False, "auto"),
        "memory_budget": ((str, int), False, None),
    },
    "verify": {"tolerance": ((float, int), False, 1e-6)},
    # What refgen.probes captures into X.safetensors; absent: nothing beyond the JSON.
    "probes": {
        "hidden_states": ((str, list), False, None),
        "positions": (str, False, None),
        "logits": (str, False, None),
    },
}
PROBE_POSITIONS = ("last", "all")
PROBE_LOGITS = ("last",)


@dataclass(frozen=True)
class Probes:
    """The spec's ``[probes]``: which hidden states (``"all"`` or layer indices as transformers'
    ``output_hidden_states`` numbers them), at which positions, and whether the full
    last-position logits are kept. Layer indices are checked against the model in
    :mod:`refgen.probes`, before the first forward."""

    hidden_states: str | tuple[int, ...] | None
    positions: str
    logits: str | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.hidden_states is not None:
            out["hidden_states"] = (
                self.hidden_states
                if isinstance(self.hidden_states, str)
                else list(self.hidden_states)
            )
            out["positions"] = self.positions
        if self.logits is not None:
            out["logits"] = self.logits
        return out


@dataclass(frozen=True)
class Spec:
    """A parsed, validated spec. ``path`` is absolute; ``sha256`` is of the file's bytes."""

    path: Path
    sha256: str
    name: str
    output: Path
    repo: str
    revision: str | None  # None only for a local folder whose lock pins its content
    dtype: str
    attn_implementation: str | None  # None: from_pretrained's own choice
    prompts: tuple[str, ...]
    top_k: int
    tolerance: float
    local_path: Path | None = None  # [model] path: a checkpoint folder outside the HF cache
    local_path_text: str | None = None  # as written in the spec (relative), for the manifest
    probes: Probes | None = None
    load: str = "auto"  # "auto", "memory" or "stream" (refgen.streaming)
    memory_budget: int | None = None  # bytes; None: derived from available memory
    # ``reference.output`` as checked, relative to the spec's folder (recorded in the manifest)
    output_relative: str = ""

    @property
    def display(self) -> str:
        """The spec's path as the user would type it from here (for messages only)."""
        try:
            return self.path.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return str(self.path)

    @property
    def lock_path(self) -> Path:
        """The model lock lives next to the spec: ``NAME.toml`` -> ``NAME.lock.json``."""
        return self.path.with_suffix(".lock.json")

    def as_dict(self) -> dict[str, Any]:
        """The spec's content as recorded in the manifest (no host paths)."""
        model: dict[str, Any] = {"repo": self.repo, "revision": self.revision}
        if self.local_path_text is not None:
            model["path"] = self.local_path_text
        model |= {"dtype": self.dtype, "attn_implementation": self.attn_implementation}
        content: dict[str, Any] = {
            "schema": SPEC_SCHEMA,
            "reference": {"name": self.name, "output": self.output_relative or self.output.name},
            "model": model,
            "run": {"prompts": list(self.prompts), "top_k": self.top_k, **self._loading()},
            "verify": {"tolerance": self.tolerance},
        }
        # Only when declared: a spec without [probes] records exactly what it did before.
        if self.probes is not None:
            content["probes"] = self.probes.as_dict()
        return content

    def _loading(self) -> dict[str, Any]:
        """The loading keys, only when set: specs without them keep their recorded content."""
        keys: dict[str, Any] = {"load": self.load} if self.load != "auto" else {}
        if self.memory_budget is not None:
            keys["memory_budget"] = self.memory_budget
        return keys


def parse_size(text: str | int) -> int:
    """Bytes from ``6GB``, ``6G``, ``6GiB``, ``512M`` or a plain number (decimal units; ``i``
    for binary); ValueError when it is not a positive size."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ValueError(f"not a size: {text!r} (examples: 6GB, 6GiB, 512MB, 6000000000)")
        number, unit, binary = match.groups()
        value = int(float(number) * (1024 if binary else 1000) ** _UNITS[unit.lower()])
    if value <= 0:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return value


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec; each problem is a :class:`SpecError` naming the key and the fix."""
    path = Path(path).resolve()
    try:
        # a regular file only, bounded: a FIFO named x.toml in --specs-dir never blocks the run
        raw = jsonio.read_bytes(path)
    except FileNotFoundError:
        raise SpecError(
            f"spec file not found: {path}. Pass an existing TOML file to --spec."
        ) from None
    except OSError as exc:  # unreadable (permissions), a folder, a FIFO, a device, too large
        if path.is_dir():
            raise SpecError(
                f"spec {path} is a folder, not a file. Pass a TOML file to --spec, or the "
                "folder to --specs-dir."
            ) from None
        raise SpecError(
            f"cannot read the spec {path}: {exc.strerror}. Pass a readable TOML file to --spec."
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML ({exc}). Fix the syntax of the spec.") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise SpecError(f"{path}: not valid TOML (nested too deeply). Fix the spec.") from None
    return _validate(path, hashlib.sha256(raw).hexdigest(), data)


def _validate(path: Path, sha256: str, data: Mapping[str, Any]) -> Spec:
    where = path.name
    schema = data.get("schema")
    if schema != SPEC_SCHEMA:
        raise SpecError(
            f"{where}: 'schema' must be {SPEC_SCHEMA} (got {schema!r}). "
            f"Add `schema = {SPEC_SCHEMA}` at the top of the spec."
        )
    unknown = sorted(set(data) - set(_KEYS) - {"schema"})
    if unknown:
        raise SpecError(f"{where}: unknown table(s) {unknown}; allowed: {sorted(_KEYS)}.")
    values: dict[str, dict[str, Any]] = {}
    for table, keys in _KEYS.items():
        section = data.get(table, {})
        if not isinstance(section, dict):
            raise SpecError(f"{where}: [{table}] must be a table, got {type(section).__name__}.")
        extra = sorted(set(section) - set(keys))
        if extra:
            raise SpecError(
                f"{where}: unknown key(s) {extra} in [{table}]; allowed: {sorted(keys)}."
            )
        values[table] = {}
        for key, (kind, required, default) in keys.items():
            if key not in section:
                if required:
                    raise SpecError(
                        f"{where}: missing required key '{table}.{key}'. Add it to [{table}]."
                    )
                values[table][key] = default
                continue
            value = section[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                expected = _TYPE_NAMES.get(kind, "number")
                raise SpecError(
                    f"{where}: '{table}.{key}' must be {expected}, got "
                    f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({value!r})."
                )
            values[table][key] = value
    return _build(path, sha256, values)


def _build(path: Path, sha256: str, v: dict[str, dict[str, Any]]) -> Spec:
    where = path.name
    ref, model, run = v["reference"], v["model"], v["run"]
    local_path = None
    if model["path"] is not None:
        local_path = (path.parent / model["path"]).resolve()
        if model["repo"] is None:  # a name for the JSON's model_repo and the lock
            model["repo"] = "local/" + re.sub(r"[^\w.-]", "_", local_path.name)
        if model["revision"] is not None and not _CONTENT_REVISION.match(model["revision"]):
            raise SpecError(
                f"{where}: 'model.revision' of a local 'model.path' is the 64-character content "
                f"revision `refgen lock` prints (or leave it out), got {model['revision']!r}."
            )
    elif model["repo"] is None or model["revision"] is None:
        missing = "repo" if model["repo"] is None else "revision"
        raise SpecError(
            f"{where}: missing required key 'model.{missing}'. Add it to [model] (or give "
            "'model.path', a local checkpoint folder)."
        )
    elif not _REVISION.match(model["revision"]):
        raise SpecError(
            f"{where}: 'model.revision' must be a full 40-character commit hash, got "
            f"{model['revision']!r}. Pin the exact commit, not a branch or tag."
        )
    if not _REPO.match(model["repo"]) or _hub_rejects(model["repo"]):
        raise SpecError(
            f"{where}: 'model.repo' must be a Hugging Face repo id 'org/name' (letters, digits, "
            f"'-', '_', '.'; no '..' or '--'), got {model['repo']!r}."
        )
    if model["dtype"] not in DTYPES:
        raise SpecError(
            f"{where}: 'model.dtype' must be one of {list(DTYPES)}, got {model['dtype']!r}."
        )
    if model["attn_implementation"] not in (None, *ATTN_IMPLEMENTATIONS):
        raise SpecError(
            f"{where}: 'model.attn_implementation' must be one of {list(ATTN_IMPLEMENTATIONS)}, "
            f"got {model['attn_implementation']!r}."
        )
    prompts = run["prompts"]
    if not prompts:
        raise SpecError(f"{where}: 'run.prompts' is empty. List at least one prompt.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise SpecError(
                f"{where}: 'run.prompts[{i}]' must be a non-empty string, got {prompt!r}."
            )
    if run["load"] not in LOAD_MODES:
        raise SpecError(
            f"{where}: 'run.load' must be one of {list(LOAD_MODES)}, got {run['load']!r}."
        )
    budget = run["memory_budget"]
    if budget is not None:
        try:
            budget = parse_size(budget)
        except ValueError as exc:
            raise SpecError(f"{where}: 'run.memory_budget': {exc}.") from None
    if run["top_k"] < 1:
        raise SpecError(f"{where}: 'run.top_k' must be at least 1, got {run['top_k']}.")
    tolerance = float(v["verify"]["tolerance"])
    if not tolerance >= 0:
        raise SpecError(f"{where}: 'verify.tolerance' must be >= 0, got {tolerance}.")
    output = ref["output"]
    if not output.endswith(".json"):
        raise SpecError(f"{where}: 'reference.output' must name a .json file, got {output!r}.")
    destination, relative = spec_output(path, output)
    if not ref["name"]:
        raise SpecError(f"{where}: 'reference.name' must not be empty.")
    return Spec(
        path=path,
        sha256=sha256,
        name=ref["name"],
        output=destination,
        output_relative=relative,
        repo=model["repo"],
        revision=model["revision"],
        dtype=model["dtype"],
        attn_implementation=model["attn_implementation"],
        prompts=tuple(prompts),
        top_k=run["top_k"],
        tolerance=tolerance,
        local_path=local_path,
        local_path_text=model["path"],
        probes=_probes(where, v["probes"]),
        load=run["load"],
        memory_budget=budget,
    )


def _hub_rejects(repo: str) -> bool:
    """huggingface_hub's own rule (no '..', '--', leading '.', length), beside ours."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils._validators import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return True
    return False


def _probes(where: str, table: dict[str, Any]) -> Probes | None:
    hidden, positions, logits = table["hidden_states"], table["positions"], table["logits"]
    if hidden is None and logits is None:
        if positions is not None:
            raise SpecError(
                f"{where}: 'probes.positions' applies to 'probes.hidden_states', which is not set. "
                'Add hidden_states = "all" (or a list of layers) or remove positions.'
            )
        return None
    layers: str | tuple[int, ...] | None = None
    if isinstance(hidden, str):
        if hidden != "all":
            raise SpecError(
                f"{where}: 'probes.hidden_states' must be \"all\" or a list of layer indices, "
                f"got {hidden!r}."
            )
        layers = hidden
    elif hidden is not None:
        if not hidden:
            raise SpecError(
                f"{where}: 'probes.hidden_states' is an empty list. List layer indices "
                '(0 = embedding output) or write "all", or remove the key.'
            )
        for i, layer in enumerate(hidden):
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise SpecError(
                    f"{where}: 'probes.hidden_states[{i}]' must be a layer index >= 0 "
                    f"(0 = embedding output, N = final norm output), got {layer!r}."
                )
        if len(set(hidden)) != len(hidden):
            raise SpecError(f"{where}: 'probes.hidden_states' lists a layer twice: {hidden}.")
        layers = tuple(sorted(hidden))
    if positions is None:
        positions = "last"
    elif layers is None:
        raise SpecError(
            f"{where}: 'probes.positions' applies to 'probes.hidden_states', which is not set. "
            'Add hidden_states = "all" (or a list of layers) or remove positions.'
        )
    if positions not in PROBE_POSITIONS:
        raise SpecError(
            f"{where}: 'probes.positions' must be one of {list(PROBE_POSITIONS)}, "
            f"got {positions!r}."
        )
    if logits is not None and logits not in PROBE_LOGITS:
        raise SpecError(
            f"{where}: 'probes.logits' must be one of {list(PROBE_LOGITS)} (the full "
            f"last-position logits vector), got {logits!r}."
        )
    return Probes(hidden_states=layers, positions=positions, logits=logits)


def find_specs(folder: str | Path) -> list[Path]:
    """Every spec in a folder, sorted so that ``generate`` builds them in a stable order."""
    folder = Path(folder)
    specs = sorted(folder.glob("*.toml"))
    if not specs:
        raise SpecError(
            f"no spec (*.toml) found in {folder}. Pass --spec PATH or add a spec there."
        )
    return specs
