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
    logits = "last"                  # the full last-position logits vector, or "all" positions
    modules = ["model.layers.*", "model.layers.*.mlp"]  # outputs of modules, by path pattern
    rounding_floor = true            # also run in float64: the reference's own rounding error
    input_ids = true                 # alone: a probe file of the token ids only
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
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
# How weights are loaded (refgen.load.plan): in memory, layer-streamed, or chosen by size.
LOAD_MODES = ("auto", "memory", "stream")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}

_TYPE_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a float",
    bool: "a boolean",
    list: "a list",
    dict: "a table",
    (str, list): '"all" or a list of layer indices',
    (str, int): 'a size: a string such as "16GB" or an integer number of bytes',
    (float, int): "a number",
}
# The largest memory budget accepted (8 EiB, past any machine): a bound, so a 400-digit number
# is a clear refusal instead of an overflow further down.
MAX_SIZE = 2**63 - 1
# More layers than any model has (the largest have a few hundred): a longer probe list is a
# mistake, refused before anything loads.
MAX_PROBE_LAYERS = 10_000
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
        "modules": (list, False, None),
        "input_ids": (bool, False, None),
        "rounding_floor": (bool, False, None),
    },
}
PROBE_POSITIONS = ("last", "all")
PROBE_LOGITS = ("last", "all")
# A module path pattern: dotted names of ``named_modules()``, each part a name or a glob
# (``*`` matches one whole part, never a dot).
_MODULE_PATTERN = re.compile(r"^[\w*?\[\]!-]+(?:\.[\w*?\[\]!-]+)*$")


@dataclass(frozen=True)
class Probes:
    """The spec's ``[probes]``: which hidden states (``"all"`` or layer indices as transformers'
    ``output_hidden_states`` numbers them) and module outputs (path patterns over
    ``named_modules()``), at which positions; whether the full logits are kept (``"last"``
    position or ``"all"``); whether a float64 run records the reference's rounding floor. The
    token ids are always in the file; ``input_ids`` alone asks for a file of them only. Layer
    indices and patterns are checked against the model in :mod:`refgen.probes`, before the
    first forward."""

    hidden_states: str | tuple[int, ...] | None
    positions: str
    logits: str | None
    modules: tuple[str, ...] = ()
    input_ids: bool = False
    rounding_floor: bool = False

    @property
    def per_position(self) -> bool:
        """Whether ``positions`` applies: hidden states or modules are asked for."""
        return self.hidden_states is not None or bool(self.modules)

    def as_dict(self) -> dict[str, Any]:
        """As recorded in the manifest; keys a spec leaves out stay out (older records keep
        their bytes)."""
        out: dict[str, Any] = {}
        if self.hidden_states is not None:
            out["hidden_states"] = (
                self.hidden_states
                if isinstance(self.hidden_states, str)
                else list(self.hidden_states)
            )
        if self.per_position:
            out["positions"] = self.positions
        if self.logits is not None:
            out["logits"] = self.logits
        if self.modules:
            out["modules"] = list(self.modules)
        if self.input_ids:
            out["input_ids"] = True
        if self.rounding_floor:
            out["rounding_floor"] = True
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
    load: str = "auto"  # "auto", "memory" or "stream" (refgen.load.plan)
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
        match = _SIZE.match(str(text)) if len(str(text)) <= 64 else None
        if not match:
            raise ValueError(
                f"not a size: {_short(text)!r} (examples: 6GB, 6GiB, 512MB, 6000000000)"
            )
        number, unit, binary = match.groups()
        # exact decimal arithmetic: "1.1GB" is 1,100,000,000 bytes, and no float overflow
        value = int(Decimal(number) * (1024 if binary else 1000) ** _UNITS[unit.lower()])
    if value <= 0:
        raise ValueError(f"a memory budget must be positive, got {_short(text)!r}")
    if value > MAX_SIZE:
        raise ValueError(f"{_short(text)} bytes is more than any machine has (at most {MAX_SIZE})")
    return value


def _short(value: object) -> str:
    """A value for a message: at most 40 characters of it."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


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
    # an integer, exactly: `true` and `1.0` compare equal to 1 in Python, and are not schema 1
    if type(schema) is not int or schema != SPEC_SCHEMA:
        raise SpecError(
            f"{where}: 'schema' must be the integer {SPEC_SCHEMA} (got {_short(repr(schema))}). "
            f"Add `schema = {SPEC_SCHEMA}` at the top of the spec."
        )
    for name in sorted(set(data) - set(_KEYS) - {"schema"}, key=str):
        if isinstance(data[name], dict):
            raise SpecError(f"{where}: unknown table [{_short(name)}]; allowed: {sorted(_KEYS)}.")
        home = [table for table, keys in _KEYS.items() if name in keys]
        fix = (
            f"It belongs in [{home[0]}]: move it below that table's header."
            if home
            else f"The top level holds only 'schema' and the tables {sorted(_KEYS)}."
        )
        raise SpecError(f"{where}: unknown top-level key '{_short(name)}'. {fix}")
    values: dict[str, dict[str, Any]] = {}
    for table, keys in _KEYS.items():
        section = data.get(table, {})
        if not isinstance(section, dict):
            raise SpecError(f"{where}: [{table}] must be a table, got {type(section).__name__}.")
        extra = sorted(set(section) - set(keys))
        if extra:
            shown = [_short(k) for k in extra[:5]]
            raise SpecError(
                f"{where}: unknown key(s) {shown} in [{table}]; allowed: {sorted(keys)}."
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
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                expected = _TYPE_NAMES[kind]
                got = _TYPE_NAMES.get(type(value), type(value).__name__)
                raise SpecError(
                    f"{where}: '{table}.{key}' must be {expected}, got {got} "
                    f"({_short(repr(value))})."
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
    try:
        tolerance = float(v["verify"]["tolerance"])
    except OverflowError:  # an integer past float's range
        tolerance = math.inf
    if not (math.isfinite(tolerance) and tolerance >= 0):
        why = " (it would call any rebuild reproduced)" if tolerance == math.inf else ""
        raise SpecError(
            f"{where}: 'verify.tolerance' must be a finite number >= 0, got "
            f"{_short(v['verify']['tolerance'])}{why}."
        )
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
    modules = _modules(where, table["modules"])
    ids, floor = table["input_ids"], table["rounding_floor"]
    if ids is False:
        raise SpecError(
            f"{where}: 'probes.input_ids' cannot be false: a probe file always holds the token "
            "ids (prompt{i}.input_ids). Remove the key, or write true for a file of ids only."
        )
    if hidden is None and logits is None and not modules and ids is None:
        if positions is not None or floor is not None:
            key = "positions" if positions is not None else "rounding_floor"
            raise SpecError(
                f"{where}: 'probes.{key}' applies to probe tensors, and [probes] asks for none. "
                'Add hidden_states = "all", modules = [...] or logits = "last", or remove it.'
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
        if len(hidden) > MAX_PROBE_LAYERS:
            raise SpecError(
                f"{where}: 'probes.hidden_states' lists {len(hidden)} layers; a model has at "
                f'most a few hundred. List at most {MAX_PROBE_LAYERS}, or write "all".'
            )
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
        seen: set[int] = set()
        for layer in hidden:
            if layer in seen:
                raise SpecError(
                    f"{where}: 'probes.hidden_states' lists layer {_short(layer)} twice."
                )
            seen.add(layer)
        layers = tuple(sorted(hidden))
    if positions is None:
        positions = "last"
    elif layers is None and not modules:
        raise SpecError(
            f"{where}: 'probes.positions' applies to 'probes.hidden_states' and "
            "'probes.modules', and neither is set. Add hidden_states = \"all\" (or a list of "
            "layers) or modules, or remove positions."
        )
    if positions not in PROBE_POSITIONS:
        raise SpecError(
            f"{where}: 'probes.positions' must be one of {list(PROBE_POSITIONS)}, "
            f"got {positions!r}."
        )
    if logits is not None and logits not in PROBE_LOGITS:
        raise SpecError(
            f"{where}: 'probes.logits' must be one of {list(PROBE_LOGITS)} (the full logits "
            f"vector at the last position, or at every position), got {logits!r}."
        )
    if floor and layers is None and logits is None and not modules:
        raise SpecError(
            f"{where}: 'probes.rounding_floor' measures float tensors, and [probes] asks only "
            'for the token ids. Add hidden_states = "all", modules or logits, or remove it.'
        )
    return Probes(
        hidden_states=layers,
        positions=positions,
        logits=logits,
        modules=modules,
        input_ids=bool(ids),
        rounding_floor=bool(floor),
    )


def _modules(where: str, patterns: list[Any] | None) -> tuple[str, ...]:
    """``probes.modules``: path patterns, checked for form here and against the model's
    ``named_modules()`` before the first forward (:mod:`refgen.probes`)."""
    if patterns is None:
        return ()
    if not patterns:
        raise SpecError(
            f"{where}: 'probes.modules' is an empty list. List module path patterns "
            '(e.g. "model.layers.*.mlp") or remove the key.'
        )
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not _MODULE_PATTERN.match(pattern):
            raise SpecError(
                f"{where}: 'probes.modules[{i}]' must be a module path as named_modules() "
                'names it, with * for a whole part (e.g. "model.layers.*.self_attn"), '
                f"got {_short(repr(pattern))}."
            )
    if len(patterns) > MAX_PROBE_LAYERS:
        raise SpecError(
            f"{where}: 'probes.modules' lists {len(patterns)} patterns; one pattern with * covers "
            f"every layer. List at most {MAX_PROBE_LAYERS}."
        )
    twice = sorted(p for p, n in Counter(patterns).items() if n > 1)
    if twice:
        raise SpecError(f"{where}: 'probes.modules' lists pattern {_short(repr(twice[0]))} twice.")
    return tuple(patterns)


def find_specs(folder: str | Path) -> list[Path]:
    """Every spec in a folder, sorted so that ``generate`` builds them in a stable order."""
    folder = Path(folder)
    specs = sorted(folder.glob("*.toml"))
    if not specs:
        raise SpecError(
            f"no spec (*.toml) found in {folder}. Pass --spec PATH or add a spec there."
        )
    return specs
