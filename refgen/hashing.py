"""SHA-256 of files, streamed, with a progress bar on a terminal only."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tqdm.auto import tqdm

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path, progress: bool = True) -> tuple[str, int]:
    """Hex digest and size, reading the file once in large chunks."""
    digest = hashlib.sha256()
    size = 0
    total = path.stat().st_size
    # disable=None: tqdm shows the bar only on a TTY, so CI logs stay quiet.
    show = None if progress and total > 64 * CHUNK else True
    with (
        path.open("rb") as f,
        tqdm(
            total=total, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=show
        ) as bar,
    ):
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
