"""The accumulators a walk over two references fills: differences, notes and float statistics
per field and per test case."""

from __future__ import annotations

import math
from typing import Any

from refgen.compare.results import Difference, FieldStats
from refgen.compare.verdict import Tolerance


class Stats:
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

    def add_many(
        self, count: int, max_abs: float, abs_path: str, max_rel: float, rel_path: str
    ) -> None:
        """A whole tensor's contribution, its maxima already found (by the probe file walk)."""
        self.count += count
        if max_abs > self.max_abs or math.isnan(max_abs):
            self.max_abs, self.max_abs_path = max_abs, abs_path
        if max_rel > self.max_rel or math.isnan(max_rel):
            self.max_rel, self.max_rel_path = max_rel, rel_path

    def freeze(self, name: str) -> FieldStats:
        return FieldStats(
            name, self.count, self.max_abs, self.max_abs_path, self.max_rel, self.max_rel_path
        )


class Collector:
    """What a walk over A and B found, in the order it found it."""

    def __init__(self, tolerance: Tolerance) -> None:
        self.tol = tolerance
        self.differences: list[Difference] = []
        self.notes: list[str] = []
        self.fields: dict[str, Stats] = {}
        self.cases: dict[int, dict[str, Stats]] = {}

    def diff(self, path: str, kind: str, a: Any, b: Any, detail: str) -> None:
        self.differences.append(Difference(path, kind, a, b, detail))

    def stats(self, fld: str, case: int | None) -> list[Stats]:
        """The accumulators a value of field *fld* (in test case *case*) goes into."""
        targets = [self.fields.setdefault(fld, Stats())]
        if case is not None:
            targets.append(self.cases.setdefault(case, {}).setdefault(fld, Stats()))
        return targets
