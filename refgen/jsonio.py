"""Reading files someone else wrote (specs, locks, manifests, a model's JSON files, safetensors
headers): the one bounded reader and the one bounded JSON parser.

* :func:`open_regular` opens only a regular file (a link is followed to one): the open is
  non-blocking, so a FIFO never hangs it, and the type is checked with ``fstat`` on the opened
  descriptor, so what is checked is what is read. A FIFO, a device (``/dev/zero``), a socket or
  a folder is a :class:`NotRegularFileError`, an ``OSError`` whose ``strerror`` says what it is.
* :func:`read_bytes` reads a whole regular file of at most *limit* bytes (:class:`TooLargeError`
  beyond), never more than that however the file grows meanwhile.
* :func:`loads` parses JSON: invalid text, bad UTF-8 or nesting deeper than a limit is a
  ValueError. ``json.loads`` raises RecursionError on deeply nested input, and code that walks
  the result recursively would too; so nesting is bounded here, once, for every reader.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

# OSErrors raised here (errors.py holds every error class); callers catch them as jsonio.X
from refgen.errors import NotRegularFileError as NotRegularFileError
from refgen.errors import TooLargeError as TooLargeError

# refgen's own files nest at most 6 levels (a manifest's model.files[i].size); a model's JSON
# files a few (rope_scaling, quantization_config, a tokenizer's model.merges); 64 is generous.
MAX_DEPTH = 64
# The size limit of a file read whole: a spec with thousands of long prompts, a manifest of
# thousands of outputs, a Qwen3 tokenizer.json (11 MB) fit many times over.
MAX_BYTES = 256 * 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path) -> BinaryIO:
    """*path* opened for reading, when it is (or a link leads to) a regular file; else
    :class:`NotRegularFileError` (FileNotFoundError etc. as ``open`` raises them)."""
    # O_NONBLOCK: opening a FIFO for reading blocks until a writer comes, unless non-blocking.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = kind(mode)
            raise NotRegularFileError(errno.EINVAL, f"it is {what}, not a regular file", str(path))
        os.set_blocking(fd, True)  # no effect on a regular file's reads; the usual mode again
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The whole content of the regular file *path*, at most *limit* bytes
    (:class:`TooLargeError` beyond, :class:`NotRegularFileError` when not a regular file)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise TooLargeError(
                errno.EFBIG, f"it is {size} bytes, over the {limit}-byte limit", str(path)
            )
        data = f.read(size)
        if len(data) != size or f.read(1):  # never more than it held when opened
            raise OSError(errno.EAGAIN, "it changed while it was read", str(path))
    return data


def read_json(path: Path, limit: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """:func:`loads` of :func:`read_bytes`: OSError (the ones above included) or ValueError."""
    return loads(read_bytes(path, limit), max_depth)


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
