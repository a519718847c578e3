"""Numeric comparison of two references of the same kind, with a verdict an auditor can act on.

Two honest rebuilds on different CPUs can differ in the last bit of a float; "different" is not
enough. This module says *how much* and *where*: bit for bit, within a tolerance far tighter than
the consumer's 1e-3 (with the largest absolute and relative difference per field and per test
case), or not reproduced (every difference by path, e.g. ``test_cases[1].top_10[3].index``, with
swapped top-k entries named).

Exit codes (also used by ``refgen verify``):

====  ======================================================================
 0    REPRODUCED BIT FOR BIT: same SHA-256
 10   REPRODUCED WITHIN TOLERANCE: same structure and indices, floats within tolerance
 11   NOT REPRODUCED: a structural, exact-value, index or out-of-tolerance difference
 2    could not compare (unreadable file, not JSON): a usage error
====  ======================================================================
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from refgen.errors import RefgenError

DEFAULT_TOLERANCE = 1e-6
"""Default for both the absolute and the relative part; the consumer's own bar is 1e-3."""

EXIT_ERROR = 2

# Keys kept for humans: they name the software that ran, so they differ between honest runs on
# other versions. A difference there is reported as a note, never as a failed reproduction.
INFO_KEYS = frozenset({"methodology", "torch_version", "transformers_version", "platform"})
REQUIRED_KEYS = (
    "model_repo",
    "hidden_size",
    "num_layers",
    "vocab_size",
    "head_dim",
    "use_qk_norm",
    "test_cases",
)
_TOP_K = re.compile(r"^top_\d+$")
MAX_REPORTED_DIFFERENCES = 200
"""Cap on the differences kept in a report (the total is always counted)."""


class CompareError(RefgenError):
    """A file to compare is missing, unreadable or not a reference."""


class Verdict(enum.Enum):
    """The outcome of a comparison; ``exit_code`` is the process exit status for it."""

    IDENTICAL = "reproduced bit for bit"
    WITHIN_TOLERANCE = "reproduced within tolerance"
    NOT_REPRODUCED = "not reproduced"

    @property
    def exit_code(self) -> int:
        return {"IDENTICAL": 0, "WITHIN_TOLERANCE": 10, "NOT_REPRODUCED": 11}[self.name]


@dataclass(frozen=True)
class Tolerance:
    """A float pair ``(a, b)`` matches when ``|a - b| <= atol + rtol * |a|`` (numpy's isclose).

    The relative part matters: a logit near 30 has a float32 spacing of about 2e-6, so a pure
    1e-6 absolute bar would reject a one-ulp difference there.
    """

    atol: float = DEFAULT_TOLERANCE
    rtol: float = DEFAULT_TOLERANCE

    def accepts(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= self.atol + self.rtol * abs(a)


@dataclass(frozen=True)
class Difference:
    """One place where B does not match A. ``kind`` is a short machine-readable tag."""

    path: str
    kind: str  # missing | extra | type | value | length | index | swap | float
    a: Any
    b: Any
    detail: str


@dataclass(frozen=True)
class FieldStats:
    """Largest float differences of one field (e.g. ``top_10.logit``) over the values compared."""

    field: str
    count: int
    max_abs: float
    max_abs_path: str
    max_rel: float
    max_rel_path: str


@dataclass(frozen=True)
class CaseStats:
    """Per test case: the prompt and the float statistics of each of its fields."""

    case: int
    prompt: str | None
    fields: tuple[FieldStats, ...]


@dataclass(frozen=True)
class Comparison:
    """The full result; ``differences`` is in document order, truncated to the cap."""

    verdict: Verdict
    a_name: str
    b_name: str
    a_sha256: str
    b_sha256: str
    tolerance: Tolerance
    fields: tuple[FieldStats, ...]
    cases: tuple[CaseStats, ...]
    differences: tuple[Difference, ...]
    difference_count: int
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    def summary(self) -> str:
        """The one-line verdict printed first."""
        head = self.verdict.value.upper()
        if self.verdict is Verdict.IDENTICAL:
            return f"{head}: {self.a_name} and {self.b_name} have the same SHA-256 {self.a_sha256}"
        if self.verdict is Verdict.WITHIN_TOLERANCE:
            worst = max(self.fields, key=lambda f: f.max_abs, default=None)
            where = (
                f"max |diff| {worst.max_abs:.3g} at {worst.max_abs_path}"
                if worst and worst.max_abs > 0
                else "values equal, bytes differ (formatting)"
            )
            return (
                f"{head}: {where} (atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g}); "
                "all top-k indices identical"
            )
        first = self.differences[0] if self.differences else None
        return f"{head}: {self.difference_count} difference(s)" + (
            f"; first at {first.path}: {first.detail}" if first else ""
        )

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (stable key order, plain JSON types)."""
        data = asdict(self)
        data["verdict"] = self.verdict.name
        data["verdict_text"] = self.verdict.value
        data["exit_code"] = self.exit_code
        data["summary"] = self.summary()
        safe: dict[str, Any] = _json_safe(data)
        return safe

    def render(self, max_differences: int = 20) -> str:
        """The human report: the one-line summary, then statistics, differences and notes."""
        lines = [self.summary(), ""]
        lines.append(f"A: {self.a_name}  sha256 {self.a_sha256}")
        lines.append(f"B: {self.b_name}  sha256 {self.b_sha256}")
        lines.append(f"tolerance: |a-b| <= {self.tolerance.atol:g} + {self.tolerance.rtol:g}*|a|")
        if self.fields:
            lines += ["", "Largest differences per field (all test cases):"]
            lines += [_stat_line(s) for s in self.fields]
        for case in self.cases:
            lines += ["", f"test_cases[{case.case}] ({case.prompt!r}):"]
            lines += [_stat_line(s) for s in case.fields]
        if self.differences:
            shown = self.differences[:max_differences]
            lines += ["", f"Differences ({self.difference_count}; first {len(shown)} shown):"]
            lines += [f"  {d.path}: {d.detail}" for d in shown]
        if self.notes:
            lines += ["", "Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _stat_line(s: FieldStats) -> str:
    return (
        f"  {s.field:<24} n={s.count:<6} max abs {s.max_abs:.3g} ({s.max_abs_path})  "
        f"max rel {s.max_rel:.3g} ({s.max_rel_path})"
    )


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    return value


class _Stats:
    """Mutable accumulator for one field; frozen into :class:`FieldStats` at the end."""

    def __init__(self) -> None:
        self.count = 0
        self.max_abs = 0.0
        self.max_abs_path = "-"
        self.max_rel = 0.0
        self.max_rel_path = "-"

    def add(self, a: float, b: float, path: str) -> None:
        self.count += 1
        if a == b or (math.isnan(a) and math.isnan(b)):
            return
        diff = abs(a - b)
        scale = max(abs(a), abs(b))
        rel = diff / scale if scale else 0.0
        if diff > self.max_abs or math.isnan(diff):
            self.max_abs, self.max_abs_path = diff, path
        if rel > self.max_rel or math.isnan(rel):
            self.max_rel, self.max_rel_path = rel, path

    def freeze(self, name: str) -> FieldStats:
        return FieldStats(
            name, self.count, self.max_abs, self.max_abs_path, self.max_rel, self.max_rel_path
        )


class _Walker:
    """Walks A and B in parallel, in A's document order, collecting everything."""

    def __init__(self, tolerance: Tolerance) -> None:
        self.tol = tolerance
        self.differences: list[Difference] = []
        self.notes: list[str] = []
        self.fields: dict[str, _Stats] = {}
        self.cases: dict[int, dict[str, _Stats]] = {}

    def diff(self, path: str, kind: str, a: Any, b: Any, detail: str) -> None:
        self.differences.append(Difference(path, kind, a, b, detail))

    def walk(self, a: Any, b: Any, path: str, fld: str, case: int | None) -> None:
        ta, tb = _kind(a), _kind(b)
        if ta != tb:
            self.diff(path, "type", _short(a), _short(b), f"type {ta} in A, {tb} in B")
        elif ta == "object":
            self.walk_object(a, b, path, case)
        elif ta == "array":
            self.walk_array(a, b, path, fld, case)
        elif ta == "float":
            self.walk_float(a, b, path, fld, case)
        elif a != b:
            self.diff(path, "value", a, b, f"{a!r} in A, {b!r} in B")

    def walk_object(
        self, a: dict[str, Any], b: dict[str, Any], path: str, case: int | None
    ) -> None:
        # A's own key order (the generator's: prompt, tokens, top-k, residual), then B's extras
        # sorted: deterministic, and the first difference shown is the most telling one.
        for key in [*a, *sorted(k for k in b if k not in a)]:
            sub = f"{path}.{key}" if path else key
            if key not in b:
                self.diff(sub, "missing", _short(a[key]), None, "present in A, missing in B")
            elif key not in a:
                self.diff(sub, "extra", None, _short(b[key]), "missing in A, present in B")
            elif not path and key in INFO_KEYS:
                if a[key] != b[key]:
                    self.notes.append(f"{key} differs (informational): {a[key]!r} vs {b[key]!r}")
            elif not path and key == "test_cases" and _kind(a[key]) == _kind(b[key]) == "array":
                self.walk_cases(a[key], b[key])
            elif _TOP_K.match(key) and _is_top_k(a[key]) and _is_top_k(b[key]):
                self.walk_top_k(a[key], b[key], sub, key, case)
            else:
                self.walk(a[key], b[key], sub, key, case)

    def walk_cases(self, a: list[Any], b: list[Any]) -> None:
        if len(a) != len(b):
            self.diff(
                "test_cases", "length", len(a), len(b), f"{len(a)} test cases in A, {len(b)} in B"
            )
        for i, (ca, cb) in enumerate(zip(a, b, strict=False)):
            self.cases.setdefault(i, {})
            self.walk(ca, cb, f"test_cases[{i}]", "test_cases", i)
        for i in range(len(b), len(a)):
            prompt = a[i].get("prompt") if isinstance(a[i], dict) else None
            self.diff(
                f"test_cases[{i}]", "missing", prompt, None, f"test case {prompt!r} missing in B"
            )
        for i in range(len(a), len(b)):
            prompt = b[i].get("prompt") if isinstance(b[i], dict) else None
            self.diff(f"test_cases[{i}]", "extra", None, prompt, f"test case {prompt!r} only in B")

    def walk_array(self, a: list[Any], b: list[Any], path: str, fld: str, case: int | None) -> None:
        if len(a) != len(b):
            self.diff(path, "length", len(a), len(b), f"length {len(a)} in A, {len(b)} in B")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            self.walk(x, y, f"{path}[{i}]", fld, case)

    def walk_top_k(
        self,
        a: list[dict[str, Any]],
        b: list[dict[str, Any]],
        path: str,
        key: str,
        case: int | None,
    ) -> None:
        """Indices must match rank by rank (the consumer's rule); name swaps; compare logits."""
        if len(a) != len(b):
            self.diff(path, "length", len(a), len(b), f"{len(a)} entries in A, {len(b)} in B")
        ia = [e["index"] for e in a]
        ib = [e["index"] for e in b]
        n = min(len(ia), len(ib))
        wrong = [r for r in range(n) if ia[r] != ib[r]]
        swapped: dict[int, int] = {}
        for r in wrong:
            for s in wrong:
                if (
                    s > r
                    and r not in swapped
                    and s not in swapped
                    and ia[r] == ib[s]
                    and ia[s] == ib[r]
                ):
                    swapped[r], swapped[s] = s, r
        for r in range(n):
            entry = f"{path}[{r}]"
            if ia[r] == ib[r]:
                extra = sorted(set(a[r]) ^ set(b[r]))
                if extra:
                    self.diff(entry, "type", sorted(a[r]), sorted(b[r]), f"keys differ: {extra}")
                self.walk(
                    a[r].get("logit"), b[r].get("logit"), f"{entry}.logit", f"{key}.logit", case
                )
                continue
            if r in swapped and r < swapped[r]:
                s = swapped[r]
                self.diff(
                    entry,
                    "swap",
                    [ia[r], ia[s]],
                    [ib[r], ib[s]],
                    f"ranks {r} and {s} swapped: index {ia[r]} and index {ia[s]} exchange places "
                    f"(B has {ib[r]} at rank {r}, {ib[s]} at rank {s})",
                )
            where = f"at rank {ib.index(ia[r])} in B" if ia[r] in ib else "not in B's top-k"
            self.diff(
                f"{entry}.index",
                "index",
                ia[r],
                ib[r],
                f"index {ia[r]} in A, {ib[r]} in B (A's index {ia[r]} is {where})",
            )

    def walk_float(self, a: float, b: float, path: str, fld: str, case: int | None) -> None:
        self.fields.setdefault(fld, _Stats()).add(a, b, path)
        if case is not None:
            self.cases.setdefault(case, {}).setdefault(fld, _Stats()).add(a, b, path)
        if not self.tol.accepts(a, b):
            diff = abs(a - b)
            self.diff(
                path, "float", a, b, f"{a!r} in A, {b!r} in B (|diff| {diff:.3g} > tolerance)"
            )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> Any:
    """A value small enough to print in a difference (containers are summarised)."""
    if isinstance(value, list):
        return f"<array of {len(value)}>"
    if isinstance(value, dict):
        return f"<object with {len(value)} keys>"
    return value


def _is_top_k(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, dict) and isinstance(e.get("index"), int) and not isinstance(e["index"], bool)
        for e in value
    )


def compare_documents(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    tolerance: Tolerance | None = None,
    a_bytes: bytes | None = None,
    b_bytes: bytes | None = None,
    a_name: str = "A",
    b_name: str = "B",
) -> Comparison:
    """Compare two parsed references; pass the raw bytes too to allow the bit-for-bit verdict."""
    tol = tolerance or Tolerance()
    walker = _Walker(tol)
    walker.walk(a, b, "", "", None)
    a_sha = hashlib.sha256(a_bytes).hexdigest() if a_bytes is not None else ""
    b_sha = hashlib.sha256(b_bytes).hexdigest() if b_bytes is not None else ""
    if a_bytes is not None and a_bytes == b_bytes:
        verdict = Verdict.IDENTICAL
    elif walker.differences:
        verdict = Verdict.NOT_REPRODUCED
    else:
        verdict = Verdict.WITHIN_TOLERANCE
    fields = tuple(walker.fields[k].freeze(k) for k in sorted(walker.fields))
    cases = tuple(
        CaseStats(
            i,
            _prompt(a, i),
            tuple(stats[k].freeze(k) for k in sorted(stats)),
        )
        for i, stats in sorted(walker.cases.items())
    )
    return Comparison(
        verdict=verdict,
        a_name=a_name,
        b_name=b_name,
        a_sha256=a_sha,
        b_sha256=b_sha,
        tolerance=tol,
        fields=fields,
        cases=cases,
        differences=tuple(walker.differences[:MAX_REPORTED_DIFFERENCES]),
        difference_count=len(walker.differences),
        notes=tuple(walker.notes),
    )


def _prompt(doc: dict[str, Any], i: int) -> str | None:
    cases = doc.get("test_cases")
    if isinstance(cases, list) and i < len(cases) and isinstance(cases[i], dict):
        prompt = cases[i].get("prompt")
        return prompt if isinstance(prompt, str) else None
    return None


def load_reference(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Read a reference JSON; a missing file or a file that is not a reference is a CompareError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CompareError(
            f"cannot read {path}: {exc.strerror}. Pass an existing reference JSON."
        ) from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompareError(f"{path} is not valid JSON ({exc}); it cannot be a reference.") from None
    if not isinstance(doc, dict) or not any(k in doc for k in REQUIRED_KEYS):
        raise CompareError(
            f"{path} is not a reference (none of the keys {list(REQUIRED_KEYS)}); compare two "
            "reference JSON files of the same kind."
        )
    return doc, raw


def compare_files(a: str | Path, b: str | Path, tolerance: Tolerance | None = None) -> Comparison:
    """Compare two reference files on disk (bit for bit first, then numerically)."""
    doc_a, raw_a = load_reference(a)
    doc_b, raw_b = load_reference(b)
    return compare_documents(
        doc_a,
        doc_b,
        tolerance=tolerance,
        a_bytes=raw_a,
        b_bytes=raw_b,
        a_name=str(a),
        b_name=str(b),
    )


def tolerance_from_spec(
    path: str | Path | None, atol: float | None, rtol: float | None
) -> Tolerance:
    """Explicit flags win; else the spec's ``[verify] tolerance`` for both parts; else 1e-6."""
    base = DEFAULT_TOLERANCE
    if path is not None:
        from refgen.spec import load_spec

        base = load_spec(path).tolerance
    return Tolerance(atol=base if atol is None else atol, rtol=base if rtol is None else rtol)
