"""Walking the probe files beside two references (``X.safetensors``) tensor by tensor, in prompt
order and layers upwards: bytes first, then values against the tolerance, and per prompt the first
tensor that is not bit-identical (what an auditor looks at; a port's comparison is in
:mod:`refgen.compare.port`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refgen import probes
from refgen.compare.collect import Collector, Stats
from refgen.compare.results import FirstDifference, ProbeComparison

if TYPE_CHECKING:
    import numpy as np


def walk(found: Collector, a: Path | None, b: Path | None) -> ProbeComparison:
    """Tensor by tensor, in prompt order and layers upwards; each tensor's statistics go
    under its field (``hidden_states.layer7``) and its prompt's test case."""
    if a is None or b is None:
        there = a if a is not None else b
        assert there is not None
        kind, side = ("missing", "B") if b is None else ("extra", "A")
        found.diff(
            there.name,
            kind,
            there.name if a else None,
            there.name if b else None,
            f"probe file {there.name} beside {'A' if a else 'B'}, none beside {side}",
        )
        return ProbeComparison(a.name if a else None, b.name if b else None, "", "", 0, False, ())
    files = []
    for path in (a, b):
        try:
            files.append(probes.read(path))
        except probes.ProbeFileError as exc:
            found.diff(path.name, "unreadable", None, None, str(exc))
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for p in (a, b)]
    if len(files) < 2:
        return ProbeComparison(a.name, b.name, sha[0], sha[1], 0, False, ())
    fa, fb = files
    for key in sorted(set(fa.metadata) | set(fb.metadata)):
        va, vb = fa.metadata.get(key), fb.metadata.get(key)
        if va != vb:
            found.diff(f"{a.name}:metadata.{key}", "value", va, vb, f"{va!r} in A, {vb!r} in B")
    firsts: dict[int, FirstDifference] = {}
    compared = 0
    for name in sorted(set(fa.tensors) | set(fb.tensors), key=probes.sort_key):
        ta, tb = fa.tensors.get(name), fb.tensors.get(name)
        parsed = probes.parse_name(name)
        max_abs: float | None = None
        if ta is None or tb is None:
            kind = "missing" if tb is None else "extra"
            where = "present in A, missing in B" if tb is None else "missing in A, present in B"
            found.diff(name, kind, None, None, f"tensor {where}")
            differs, beyond = True, True
        elif ta.dtype != tb.dtype:
            found.diff(name, "type", ta.dtype, tb.dtype, f"dtype {ta.dtype} in A, {tb.dtype} in B")
            differs, beyond = True, True
        elif ta.shape != tb.shape:
            found.diff(
                name,
                "shape",
                list(ta.shape),
                list(tb.shape),
                f"shape {list(ta.shape)} in A, {list(tb.shape)} in B",
            )
            differs, beyond = True, True
        else:
            compared += 1
            differs = ta.data != tb.data
            max_abs, beyond = _walk_tensor(found, name, ta, tb, parsed, differs)
            differs = differs or beyond  # identical bytes holding NaN: never reproduced
        if differs and parsed is not None and parsed.prompt not in firsts:
            firsts[parsed.prompt] = FirstDifference(
                parsed.prompt,
                parsed.layer,
                name,
                max_abs,
                beyond,
                f"first difference at {parsed.describe()}",
            )
    return ProbeComparison(
        a.name,
        b.name,
        sha[0],
        sha[1],
        compared,
        fa.raw == fb.raw and not firsts,
        tuple(firsts[k] for k in sorted(firsts)),
    )


def _walk_tensor(
    found: Collector,
    name: str,
    ta: probes.ProbeTensor,
    tb: probes.ProbeTensor,
    parsed: probes.TensorName | None,
    differs: bool,
) -> tuple[float, bool]:
    """Statistics and the out-of-tolerance difference of one tensor; (max |diff|, beyond)."""
    import numpy as np  # here: a diff without probe files never needs it

    fld = probes.field_name(name)
    case = parsed.prompt if parsed is not None else None
    targets = found.stats(fld, case)
    count = int(np.prod(ta.shape, dtype=np.int64))

    def at(flat: int) -> str:
        index = np.unravel_index(flat, ta.shape)
        return f"{name}[{', '.join(str(int(i)) for i in index)}]"

    if ta.dtype not in FLOAT_DTYPES:
        return _walk_exact(found, name, ta, tb, differs, targets, count, at)
    va, vb = ta.values(), tb.values()
    if not differs:
        nan = np.flatnonzero(np.isnan(va))
        for stats in targets:
            stats.add_many(count, 0.0, "-", 0.0, "-")
        if nan.size:
            found.diff(
                at(int(nan[0])),
                "float",
                math.nan,
                math.nan,
                f"NaN in A and in B ({nan.size} of {count} values of the tensor): NaN never "
                "counts as reproduced, not even against the same bytes",
            )
            return math.nan, True
        return 0.0, False
    with np.errstate(invalid="ignore", over="ignore"):
        both_nan = np.isnan(va) & np.isnan(vb)
        same = (va == vb) | both_nan  # for the statistics; NaN is never within (below)
        diff = np.where(same, 0.0, np.abs(va - vb))  # NaN where only one side is NaN
        scale = np.maximum(np.abs(va), np.abs(vb))
        rel = np.where(same | (scale == 0), 0.0, diff / np.where(scale == 0, 1.0, scale))
        finite = np.isfinite(va) & np.isfinite(vb)
        ok = (va == vb) | (finite & (diff <= found.tol.atol + found.tol.rtol * np.abs(va)))

    def worst(values: Any) -> int:
        nan = np.flatnonzero(np.isnan(values))
        return int(nan[0]) if nan.size else int(np.argmax(values))

    i_abs, i_rel = worst(diff), worst(rel)
    max_abs, max_rel = float(diff.flat[i_abs]), float(rel.flat[i_rel])
    for stats in targets:
        stats.add_many(count, max_abs, at(i_abs), max_rel, at(i_rel))
    bad = np.flatnonzero(~ok)
    if bad.size:
        first = int(bad[0])
        x, y = float(va.flat[first]), float(vb.flat[first])
        why = (
            "NaN is never within tolerance"
            if math.isnan(x) or math.isnan(y)
            else f"|diff| {abs(x - y):.3g} > tolerance"
        )
        found.diff(
            at(first),
            "float",
            x,
            y,
            f"{x!r} in A, {y!r} in B ({why}; {bad.size} of {count} values of the tensor beyond it)",
        )
    return max_abs, bool(bad.size)


def _walk_exact(
    found: Collector,
    name: str,
    ta: probes.ProbeTensor,
    tb: probes.ProbeTensor,
    differs: bool,
    targets: list[Stats],
    count: int,
    at: Callable[[int], str],
) -> tuple[float, bool]:
    """An integer or boolean tensor (token ids): equal values or a difference, no tolerance."""
    import numpy as np

    va, vb = integers(ta), integers(tb)
    if not differs:
        for stats in targets:
            stats.add_many(count, 0.0, "-", 0.0, "-")
        return 0.0, False
    if va is None or vb is None:
        found.diff(name, "value", None, None, f"dtype {ta.dtype}: the bytes differ")
        return math.inf, True
    bad = np.flatnonzero(va.reshape(-1) != vb.reshape(-1))
    worst = int(np.max(np.abs(va - vb)))
    for stats in targets:
        stats.add_many(count, float(worst), at(int(bad[0])), 0.0, "-")
    first = int(bad[0])
    x, y = int(va.flat[first]), int(vb.flat[first])
    found.diff(
        at(first),
        "value",
        x,
        y,
        f"{x} in A, {y} in B ({ta.dtype}, compared exactly; {bad.size} of {count} values of "
        "the tensor differ)",
    )
    return float(worst), True


FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_INT_DTYPES = {"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def integers(t: probes.ProbeTensor) -> np.ndarray[Any, Any] | None:
    """An integer or boolean tensor's values as int64; None for any other dtype."""
    import numpy as np

    kind = _INT_DTYPES.get(t.dtype)
    if kind is None or len(t.data) != math.prod(t.shape) * np.dtype(kind).itemsize:
        return None
    return np.frombuffer(t.data, dtype=kind).astype(np.int64).reshape(t.shape)
