"""Walking two reference JSONs in parallel (``refgen diff``, ``refgen verify``): every difference by
path (``test_cases[1].top_10[3].index``), swapped top-k entries named, float statistics per field
and per test case; the probe files beside them go to :mod:`refgen.compare.probefiles`."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from refgen import jsonio, probes
from refgen.compare.collect import Collector
from refgen.compare.probefiles import walk as walk_probe_files
from refgen.compare.results import CaseStats, CompareError, Comparison
from refgen.compare.verdict import Tolerance, Verdict
from refgen.text import shorten

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


class _Walker(Collector):
    """Walks A and B in parallel, in A's document order, collecting everything."""

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
            self.diff(path, "value", a, b, f"{shorten(a)} in A, {shorten(b)} in B")

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
                f"test_cases[{i}]",
                "missing",
                prompt,
                None,
                f"test case {shorten(prompt)} missing in B",
            )
        for i in range(len(a), len(b)):
            prompt = b[i].get("prompt") if isinstance(b[i], dict) else None
            self.diff(
                f"test_cases[{i}]", "extra", None, prompt, f"test case {shorten(prompt)} only in B"
            )

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
        for stats in self.stats(fld, case):
            stats.add(a, b, path)
        if not self.tol.accepts(a, b):
            if math.isnan(a) or math.isnan(b):
                why = "NaN is never within tolerance"
            else:
                why = f"|diff| {abs(a - b):.3g} > tolerance"
            self.diff(path, "float", a, b, f"{a!r} in A, {b!r} in B ({why})")

    # --- probe files (X.safetensors) -----------------------------------------------------------


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
    a_probes: Path | None = None,
    b_probes: Path | None = None,
) -> Comparison:
    """Compare two parsed references; pass the raw bytes too to allow the bit-for-bit verdict.

    ``a_probes``/``b_probes``: the probe files beside A and B, when either has one; one
    missing is a difference."""
    tol = tolerance or Tolerance()
    walker = _Walker(tol)
    walker.walk(a, b, "", "", None)
    probe_result = None
    if a_probes is not None or b_probes is not None:
        probe_result = walk_probe_files(walker, a_probes, b_probes)
    a_sha = hashlib.sha256(a_bytes).hexdigest() if a_bytes is not None else ""
    b_sha = hashlib.sha256(b_bytes).hexdigest() if b_bytes is not None else ""
    has_nan = any(d.kind == "float" and _is_nan_pair(d.a, d.b) for d in walker.differences)
    # (refgen never writes NaN, allow_nan=False: a file holding one is no reference, even when a
    # rebuild has the same bytes)
    if (
        a_bytes is not None
        and a_bytes == b_bytes
        and not has_nan
        and (probe_result is None or probe_result.identical)
    ):
        verdict = Verdict.IDENTICAL
    elif walker.differences:
        verdict = Verdict.NOT_REPRODUCED
    else:
        verdict = Verdict.WITHIN_TOLERANCE
    fields = tuple(walker.fields[k].freeze(k) for k in sorted(walker.fields, key=_natural))
    cases = tuple(
        CaseStats(
            i,
            _prompt(a, i),
            tuple(stats[k].freeze(k) for k in sorted(stats, key=_natural)),
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
        probes=probe_result,
    )


def _is_nan_pair(a: Any, b: Any) -> bool:
    return any(isinstance(x, float) and math.isnan(x) for x in (a, b))


def _natural(name: str) -> list[Any]:
    """``hidden_states.layer2`` before ``hidden_states.layer10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


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
        raw = jsonio.read_bytes(path)  # a regular file only: a FIFO never blocks
    except OSError as exc:
        raise CompareError(
            f"cannot read {path}: {exc.strerror}. Pass an existing reference JSON."
        ) from None
    try:
        doc = jsonio.loads(raw)  # too deep is a ValueError, never a RecursionError
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompareError(f"{path} is not valid JSON ({exc}); it cannot be a reference.") from None
    if not isinstance(doc, dict) or not any(k in doc for k in REQUIRED_KEYS):
        raise CompareError(
            f"{path} is not a reference (none of the keys {list(REQUIRED_KEYS)}); compare two "
            "reference JSON files of the same kind."
        )
    return doc, raw


def compare_files(
    a: str | Path,
    b: str | Path,
    tolerance: Tolerance | None = None,
    *,
    a_name: str | None = None,
    b_name: str | None = None,
) -> Comparison:
    """Compare two reference files on disk (bit for bit first, then numerically), with the
    probe files beside them (``X.safetensors``) when either has one."""
    doc_a, raw_a = load_reference(a)
    doc_b, raw_b = load_reference(b)
    pa, pb = probes.probe_path(Path(a)), probes.probe_path(Path(b))
    return compare_documents(
        doc_a,
        doc_b,
        tolerance=tolerance,
        a_bytes=raw_a,
        b_bytes=raw_b,
        a_name=str(a) if a_name is None else a_name,
        b_name=str(b) if b_name is None else b_name,
        a_probes=pa if pa.is_file() else None,
        b_probes=pb if pb.is_file() else None,
    )
