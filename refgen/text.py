"""Short renderings of user text (prompts) for logs and reports, shared by the generator and the
comparison (so neither imports the other)."""

from __future__ import annotations

from typing import Any

SHOWN_TEXT = 80
"""Characters of a prompt (or other long text) echoed in logs and reports; the length follows."""


def shorten(value: Any, limit: int = SHOWN_TEXT) -> str:
    """``repr`` of a value, cut to ``limit`` characters with the full length named."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)
