"""Reading JSON that someone else wrote (locks, manifests): malformed input is a ValueError.

``json.loads`` raises RecursionError on deeply nested input, and code that walks the result
recursively would too; so nesting is bounded here, once, for every reader.
"""

from __future__ import annotations

import json
from typing import Any

# refgen's own files nest at most 6 levels (a manifest's model.files[i].size); 64 is generous.
MAX_DEPTH = 64


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON; invalid text, bad UTF-8 or nesting deeper than *max_depth* is a ValueError."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason})") from None
    if depth(data, max_depth) > max_depth:
        raise ValueError(f"nested more than {max_depth} levels deep")
    return data


def depth(data: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply lists and objects nest (0 for a scalar), without recursion; stops past *limit*."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest
