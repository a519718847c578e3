"""Reports: plain-JSON conversion shared by every report."""

from __future__ import annotations

import enum
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    return value
