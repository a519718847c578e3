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
