"""The one writer of the Hugging Face cache layout, for checkpoints that do not come from the Hub.

huggingface_hub reads (``snapshot_download(local_files_only=True)``, ``scan_cache_dir``) a repo
folder laid out as::

    models--ORG--NAME/blobs/<blob>            file contents, named by hash
    models--ORG--NAME/snapshots/<REV>/<path>  relative symlinks into blobs/
    models--ORG--NAME/refs/main               the commit hash ``main`` points to

The tiny checkpoint (:mod:`refgen.tiny`), the benchmark's (:mod:`refgen.bench.checkpoint`) and the
image's staged cache (``docker/stage.py``) write it through :class:`SnapshotWriter`; the folder
name comes from huggingface_hub's own ``repo_folder_name``. Callers choose the blob names: the Hub
names LFS files by SHA-256 and small files by their git object id.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def repo_dir(hub_cache: Path, repo: str) -> Path:
    """``HUB_CACHE/models--ORG--NAME``, as huggingface_hub names it."""
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache / repo_folder_name(repo_id=repo, repo_type="model")


@dataclass(frozen=True)
class SnapshotWriter:
    """Blobs, snapshot links and refs of one revision of a model repo in a hub cache."""

    hub_cache: Path
    repo: str
    revision: str

    @property
    def repo_dir(self) -> Path:
        return repo_dir(self.hub_cache, self.repo)

    @property
    def blobs(self) -> Path:
        return self.repo_dir / "blobs"

    @property
    def snapshot(self) -> Path:
        return self.repo_dir / "snapshots" / self.revision

    def ref(self, name: str = "main") -> Path:
        return self.repo_dir / "refs" / name

    def has_ref(self, name: str = "main") -> bool:
        """Whether ``refs/NAME`` points at this revision (written last: the snapshot is whole)."""
        ref = self.ref(name)
        return ref.is_file() and ref.read_text() == self.revision

    def add_bytes(self, blob_name: str, data: bytes) -> Path:
        """A blob with these contents (kept if it exists: blobs are named by their content)."""
        blob = self.blobs / blob_name
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            partial = blob.with_name(blob.name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, blob)  # an interrupted write never leaves a short blob behind
        return blob

    def add_file(self, blob_name: str, source: Path) -> Path:
        """A blob from an existing file, hard-linked when possible, else copied."""
        blob = self.blobs / blob_name
        if not blob.exists():
            link_or_copy(source, blob)
        return blob

    def add_streamed(self, write: Callable[[Path], str]) -> Path:
        """A blob too large for memory: ``write(path)`` streams it and returns its name (its
        SHA-256); it is renamed into place only once complete."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        partial = self.blobs / f"{self.revision}.partial"
        blob = self.blobs / write(partial)
        os.replace(partial, blob)
        return blob

    def link(self, path_in_repo: str, blob: Path) -> None:
        """``snapshots/REV/<path_in_repo>`` -> the blob, as a relative symlink (replaced if any)."""
        link = self.snapshot / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))

    def set_ref(self, name: str = "main") -> None:
        ref = self.ref(name)
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(self.revision)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link *source* to *target*, or copy it where a link cannot cross (devices, perms)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, target)
