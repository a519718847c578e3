"""The one verifier: every locked file hashed on a background thread, beside the loading.

It starts before torch is imported, so hashing overlaps the import and the up-cast (both cores
of a small machine busy) instead of adding to them. Each hashed block is unmapped as soon as it
is hashed. Both loading strategies wait on it before they use a file's content: the in-memory
load for every file, the streamed one file by file (:meth:`Verifier.verified`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

from refgen import hashing, lock
from refgen.errors import IntegrityError
from refgen.load import files

HASH_BLOCK = 8 * 1024 * 1024  # hashed, then unmapped, per step


class Verifier:
    """Hashes the locked files of a snapshot on a background thread, started at construction.

    Each file is hashed with the digests :attr:`refgen.lock.LockedFile.verified_with` names (a
    weight file with the lock's BLAKE3 alone when it has one). Small files come first, then the
    weights in name order (shards are numbered in the order a forward uses them), so a streamed
    run can start on the first shard while the later ones are still being hashed.
    :meth:`verified` waits for some files, :meth:`result` for all; both raise
    :class:`IntegrityError` naming each file whose digest differs from the lock, with the
    expected and the actual digest.
    """

    def __init__(
        self, folder: Path, expected: Iterable[lock.LockedFile], progress: bool = True
    ) -> None:
        self.folder = folder
        self.expected = {
            f.path: f
            for f in sorted(expected, key=lambda f: (f.path.endswith(".safetensors"), f.path))
        }
        self.actual: dict[str, dict[str, str]] = {}  # {path: {algorithm: hex digest}}
        self.sizes: dict[str, int] = {}
        self._error: BaseException | None = None
        self._done = threading.Condition()
        self._progress = progress
        self.hashing_s = 0.0  # how long the thread hashed (overlapped with other work)
        self.waited_s = 0.0  # how long timed waits blocked: what hashing added to the wall
        self._thread = threading.Thread(target=self._run, name="refgen-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            from tqdm.auto import tqdm

            total = sum((self.folder / n).stat().st_size for n in self.expected)
            # disable=None: a bar on a terminal, nothing in CI logs.
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc="verify",
                disable=None if self._progress else True,
            ) as bar:
                for name, locked in self.expected.items():
                    digests = {a: hashing.hasher(a) for a in locked.verified_with}
                    with files.mapped(self.folder / name) as data:
                        for offset in range(0, len(data), HASH_BLOCK):
                            with memoryview(data)[offset : offset + HASH_BLOCK] as block:
                                for digest in digests.values():
                                    digest.update(block)  # releases the GIL: runs beside torch
                                files.drop_pages(data, offset, len(block))
                                bar.update(len(block))
                        size = len(data)
                    with self._done:
                        self.sizes[name] = size
                        self.actual[name] = {a: d.hexdigest() for a, d in digests.items()}
                        self._done.notify_all()
        except BaseException as exc:  # re-raised by verified() and result()
            with self._done:
                self._error = exc
                self._done.notify_all()
        self.hashing_s = time.perf_counter() - start

    def verified(
        self, names: Iterable[str], hint: str = "", timed: bool = True
    ) -> dict[str, dict[str, str]]:
        """The actual digests of the locked files *names*, once each is hashed and matches.

        *timed*: the wait is on the run's critical path and counts in :attr:`waited_s` (a
        loader reading ahead of the forward passes False).
        """
        wanted = list(names)
        start = time.perf_counter()
        with self._done:
            while self._error is None and not all(n in self.actual for n in wanted):
                self._done.wait()
        if timed:
            self.waited_s += time.perf_counter() - start
        if self._error is not None:
            raise self._error
        self._check(wanted, hint)
        return {name: self.actual[name] for name in wanted}

    def result(self, hint: str = "") -> dict[str, dict[str, str]]:
        """The actual digest of every locked file, once all match; else IntegrityError."""
        digests = self.verified(self.expected, hint)
        self._thread.join()
        return digests

    def _check(self, names: list[str], hint: str) -> None:
        result = lock.check(
            (self.expected[name] for name in names),
            {name: (self.actual[name], self.sizes[name]) for name in names},
        )
        problems = [f"  {m.path}: {m.describe()}" for m in result.mismatched]
        if problems:
            raise IntegrityError(
                f"model files in {self.folder} do not match the lock:\n"
                + "\n".join(problems)
                + (f"\n{hint}" if hint else "")
            )
