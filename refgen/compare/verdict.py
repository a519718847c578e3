"""The verdicts and the tolerances they are judged by."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path

from refgen.errors import ExitCode

DEFAULT_TOLERANCE = 1e-6
"""Default for both the absolute and the relative part; the consumer's own bar is 1e-3."""


class Verdict(enum.Enum):
    """The outcome of a comparison; ``exit_code`` is the process exit status for it."""

    IDENTICAL = "reproduced bit for bit"
    WITHIN_TOLERANCE = "reproduced within tolerance"
    NOT_REPRODUCED = "not reproduced"
    # verify only: this CPU cannot run the determinism profile (no AVX2), so no rebuild here
    # can confirm or refute the reference
    NOT_COMPARABLE = "not comparable"

    @property
    def exit_code(self) -> int:
        return int(ExitCode[self.name if self.name != "IDENTICAL" else "OK"])


@dataclass(frozen=True)
class Tolerance:
    """A float pair ``(a, b)`` matches when ``|a - b| <= atol + rtol * |a|`` (numpy's isclose).

    The relative part matters: a logit near 30 has a float32 spacing of about 2e-6, so a pure
    1e-6 absolute bar would reject a one-ulp difference there.
    """

    atol: float = DEFAULT_TOLERANCE
    rtol: float = DEFAULT_TOLERANCE

    def accepts(self, a: float, b: float) -> bool:
        # NaN is never a reproduced value, not even against NaN: a reference holding one is broken
        # (identical bytes are still the bit-for-bit verdict, decided before any value is looked at)
        if math.isnan(a) or math.isnan(b):
            return False
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= self.atol + self.rtol * abs(a)


def tolerance_from_spec(
    path: str | Path | None, atol: float | None, rtol: float | None
) -> Tolerance:
    """Explicit flags win; else the spec's ``[verify] tolerance`` for both parts; else 1e-6."""
    base = DEFAULT_TOLERANCE
    if path is not None:
        from refgen.spec import load_spec

        base = load_spec(path).tolerance
    return Tolerance(atol=base if atol is None else atol, rtol=base if rtol is None else rtol)


# --- a port against a reference (``refgen compare``) ----------------------------------------------

UNIT_ROUNDOFF = {"F64": 2.0**-53, "F32": 2.0**-24, "F16": 2.0**-11, "BF16": 2.0**-8}
"""Half the spacing of 1.0 in each float dtype: the relative error of storing a value in it."""
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_TORCH_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}

FLOOR_FACTOR = 8.0
"""k: a tensor is within tolerance when its error RMS against the reference is at most k times
the reference's own rounding error (its error RMS against a float64 run of the same checkpoint).
Measured on refgen's tiny Llama 3.1 (``tests/porter_table.py``, table in the README's "For
porters"): a correct NumPy port stays at or under 1.7x on every tensor and prompt in float32
(two float32 computations, each about 1x from float64) and 1.1x in bfloat16; in float32 the
planted bugs reach at least 1.1e4x where they are named and never fall under 960x after it. 8
leaves a margin of 4.7 over the correct port and of 120 under the bugs."""

DEFAULT_NMSE = {"F64": 1e-20, "F32": 1e-9, "F16": 1e-5, "BF16": 1e-3}
"""Without a rounding-floor record: a tensor is within tolerance when its NMSE (error variance
over the reference's variance) is at most this, for the coarser of the reference's and the
port's dtypes. Same measurement: the correct port's largest NMSE is 5.6e-13 in float32 and
2.1e-4 in bfloat16; the smallest bug's where it is named is 4.5e-7 in float32 (the norm
epsilon) and 2.7 in bfloat16 (the transposed weight; the rope and epsilon bugs are at or under
bfloat16's own rounding there, 1.2e-3 at most). float16 is bfloat16's band scaled by the squared
ratio of their unit roundoffs (1/64), rounded down."""


def dtype_code(name: str) -> str | None:
    """``"float32"`` or ``"F32"`` -> ``"F32"``; None for anything else."""
    return name if name in UNIT_ROUNDOFF else _TORCH_DTYPES.get(name)


def coarser(*dtypes: str) -> str:
    """The dtype with the largest unit roundoff (unknown ones count as float32)."""
    return max(dtypes, key=lambda d: UNIT_ROUNDOFF.get(d, UNIT_ROUNDOFF["F32"]))


@dataclass(frozen=True)
class Allowance:
    """What one tensor (or one position of it) is judged against.

    With a rounding-floor record, ``floor`` is the error RMS the reference itself has against
    float64 (raised to one unit roundoff of the port's dump dtype, so that merely storing an exact
    value as float16 is not a divergence) and ``ratio = err_rms / floor``, within when at most
    ``factor``. Without one, ``ratio = nmse / band`` and within when at most 1."""

    kind: str  # "floor" | "nmse"
    dtype: str  # the floor's dtype, or the band's
    floor: float  # err RMS of the reference's own rounding (kind floor), or the NMSE band
    factor: float  # k (kind floor), 1 (kind nmse)
    record_dtype: str | None = None  # the dtype of the run the floor was recorded for

    def ratio(self, err_rms: float, nmse: float) -> float:
        value = err_rms if self.kind == "floor" else nmse
        if math.isnan(value):
            return math.nan
        if self.floor == 0:
            return 0.0 if value == 0 else math.inf
        return value / self.floor

    def within(self, ratio: float) -> bool:
        return not math.isnan(ratio) and ratio <= self.factor

    def describe(self, ratio: float) -> str:
        """``"3.1x the float32 rounding"`` / ``"0.002x the float32 NMSE band"``."""
        what = "rounding" if self.kind == "floor" else "NMSE band"
        return f"{format_ratio(ratio)} the {DTYPE_NAMES.get(self.dtype, self.dtype)} {what}"

    def rule(self) -> str:
        name = DTYPE_NAMES.get(self.dtype, self.dtype)
        if self.kind == "floor" and self.record_dtype not in (None, self.dtype):
            recorded = DTYPE_NAMES.get(self.record_dtype, self.record_dtype)
            return (
                f"error RMS <= {self.factor:g}x the larger of the reference's own {recorded} "
                f"rounding error and one {name} rounding (the port's dtype) of the tensor"
            )
        if self.kind == "floor":
            return f"error RMS <= {self.factor:g}x the reference's own {name} rounding error"
        return f"NMSE <= {self.floor:g} (the {name} default; no rounding-floor record)"


def format_ratio(ratio: float) -> str:
    if math.isnan(ratio):
        return "NaN x"
    if math.isinf(ratio):
        return "inf x"
    return f"{ratio:.2g}x" if ratio < 100 else f"{ratio:.1e}x"


def allowance(
    record: dict[str, float] | None,
    ref_rms: float,
    ref_dtype: str,
    port_dtype: str,
    floor_dtype: str | None,
    factor: float = FLOOR_FACTOR,
) -> Allowance:
    """The allowance of one tensor (or position): *record* is its rounding-floor entry
    (``err_rms``), None without one."""
    if record is not None and floor_dtype is not None:
        floor = max(float(record["err_rms"]), UNIT_ROUNDOFF.get(port_dtype, 0.0) * ref_rms)
        dtype = coarser(floor_dtype, port_dtype)
        return Allowance("floor", dtype, floor, factor, floor_dtype)
    dtype = coarser(ref_dtype, port_dtype)
    return Allowance("nmse", dtype, DEFAULT_NMSE.get(dtype, DEFAULT_NMSE["F32"]), 1.0)
