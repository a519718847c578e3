"""What a comparison of two references returns: frozen values, no computation (the walk is in
:mod:`refgen.compare.documents` and :mod:`refgen.compare.probefiles`, the report is its
methods)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from refgen.compare.report import json_safe
from refgen.compare.verdict import Tolerance, Verdict
from refgen.errors import CompareError as CompareError  # the package exports it
from refgen.text import shorten


@dataclass(frozen=True)
class Difference:
    """One place where B does not match A. ``kind`` is a short machine-readable tag."""

    path: str
    kind: str  # missing | extra | type | value | length | shape | index | swap | float | unreadable
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
class FirstDifference:
    """The first probe tensor of one prompt that is not bit-identical (layers upwards, then the
    logits); ``beyond_tolerance`` says whether it also fails the tolerance."""

    prompt: int
    layer: int | None  # None: the last-position logits
    tensor: str
    max_abs: float | None  # None when the tensor is missing, or differs in dtype or shape
    beyond_tolerance: bool
    text: str  # "first difference at layer 7 of prompt 2"


@dataclass(frozen=True)
class ProbeComparison:
    """The probe files beside A and B (``X.safetensors``), compared tensor by tensor."""

    a_name: str | None  # None: A has no probe file
    b_name: str | None
    a_sha256: str
    b_sha256: str
    tensors: int  # tensors compared (present in both)
    identical: bool  # same bytes
    first_differences: tuple[FirstDifference, ...]  # one per prompt that differs, prompt order

    @property
    def first(self) -> FirstDifference | None:
        """The earliest prompt's first differing layer: what the summary line names."""
        return self.first_differences[0] if self.first_differences else None


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
    probes: ProbeComparison | None = None  # when A or B has a probe file beside it

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def first_probe_difference(self) -> str | None:
        """ "first difference at layer 7 of prompt 2", when the probe files differ."""
        first = self.probes.first if self.probes is not None else None
        return first.text if first is not None else None

    def summary(self) -> str:
        """The one-line verdict printed first."""
        head = self.verdict.value.upper()
        layer = f"; {self.first_probe_difference}" if self.first_probe_difference else ""
        if self.verdict is Verdict.IDENTICAL:
            also = (
                f" (probe files too: {self.probes.a_sha256})"
                if self.probes is not None and self.probes.identical
                else ""
            )
            return (
                f"{head}: {self.a_name} and {self.b_name} have the same SHA-256 "
                f"{self.a_sha256}{also}"
            )
        if self.verdict is Verdict.WITHIN_TOLERANCE:
            worst = max(self.fields, key=lambda f: f.max_abs, default=None)
            where = (
                f"max |diff| {worst.max_abs:.3g} at {worst.max_abs_path}"
                if worst and worst.max_abs > 0
                else "values equal, bytes differ (formatting)"
            )
            return (
                f"{head}: {where} (atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g}); "
                f"all top-k indices identical{layer}"
            )
        first = self.differences[0] if self.differences else None
        return (
            f"{head}: {self.difference_count} difference(s)"
            + (f"; first at {first.path}: {first.detail}" if first else "")
            + layer
        )

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (stable key order, plain JSON types)."""
        data = asdict(self)
        data["verdict"] = self.verdict.name
        data["verdict_text"] = self.verdict.value
        data["exit_code"] = self.exit_code
        data["summary"] = self.summary()
        data["first_probe_difference"] = self.first_probe_difference
        safe: dict[str, Any] = json_safe(data)
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
            lines += ["", f"test_cases[{case.case}] ({shorten(case.prompt)}):"]
            lines += [_stat_line(s) for s in case.fields]
        if self.probes is not None:
            lines += ["", _probe_heading(self.probes)]
            for first in self.probes.first_differences:
                size = "" if first.max_abs is None else f", max |diff| {first.max_abs:.3g}"
                verdict = "beyond tolerance" if first.beyond_tolerance else "within tolerance"
                lines.append(f"  {first.text} ({first.tensor}{size}, {verdict})")
        if self.differences:
            shown = self.differences[:max_differences]
            lines += ["", f"Differences ({self.difference_count}; first {len(shown)} shown):"]
            lines += [f"  {d.path}: {d.detail}" for d in shown]
        if self.notes:
            lines += ["", "Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _probe_heading(p: ProbeComparison) -> str:
    names = f"{p.a_name or '(none)'} (A) vs {p.b_name or '(none)'} (B)"
    if p.identical:
        return f"Probe files {names}: identical, {p.tensors} tensors"
    if not p.first_differences:
        return f"Probe files {names}: {p.tensors} tensors compared, all values equal"
    return f"Probe files {names}: {p.tensors} tensors compared; first difference per prompt:"


def _stat_line(s: FieldStats) -> str:
    return (
        f"  {s.field:<24} n={s.count:<6} max abs {s.max_abs:.3g} ({s.max_abs_path})  "
        f"max rel {s.max_rel:.3g} ({s.max_rel_path})"
    )
