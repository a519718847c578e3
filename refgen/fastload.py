"""Load a checkpoint in F32 with the BF16 pages never resident, verifying hashes alongside.

``from_pretrained`` on a BF16 checkpoint memory-maps the file and keeps its pages mapped next to
the F32 copy (peak RSS = F32 + BF16 = 1.5x the F32 weights), and verifying the lock before it
reads every byte once more, on the critical path. Here:

* a background thread hashes every locked file (BLAKE3 where the lock has it, else SHA-256).
  It starts before torch is imported, so hashing overlaps the import and the up-cast (both cores
  of a small machine busy) instead of adding to them;
* the tensors are up-cast chunk by chunk, on two threads, straight from the mapped page cache
  (no copy through a buffer); each chunk is unmapped (``MADV_DONTNEED``) as soon as it is used,
  and so is each block the hashing thread has hashed. The pages stay in the page cache, which is
  not our RSS, so the peak is the F32 weights plus a few chunks;
* transformers builds the model itself from that state dict (``from_pretrained(None,
  config=..., state_dict=...)`` assigns the tensors without copying), so module construction,
  buffers, weight tying and eval mode are exactly ``from_pretrained``'s and so is every output
  byte. The model is returned only after every file's digest matched the lock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import hashing, lock
from refgen import weights as weight_files
from refgen.errors import CheckpointError, IntegrityError

HASH_BLOCK = 8 * 1024 * 1024  # hashed, then unmapped, per step
CHUNK_BYTES = 16 * 1024 * 1024  # source bytes up-cast, then unmapped, per step
WORKERS = 2
MAX_HEADER = 100 * 1024 * 1024
# safetensors dtype names -> torch dtype attribute names
DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
ITEMSIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
ITEMSIZES |= {"U8": 1, "BOOL": 1}


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
                    with mapped(self.folder / name) as data:
                        for offset in range(0, len(data), HASH_BLOCK):
                            with memoryview(data)[offset : offset + HASH_BLOCK] as block:
                                for digest in digests.values():
                                    digest.update(block)  # releases the GIL: runs beside torch
                                drop_pages(data, offset, len(block))
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


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute, in the file
    nbytes: int


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of a safetensors file (u64 header size, JSON header, raw data), by offset.

    The header is checked against the file before anything is allocated from it: every tensor
    lies inside the data section, its byte count is prod(shape) x itemsize and no two tensors
    overlap. A damaged or hostile header (say, one announcing a 10^12-element shape) is an
    :class:`IntegrityError` naming the file, never an allocation.
    """
    import math

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{path}: not a valid safetensors file: {why}")

    file_size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise bad(f"{file_size} bytes, too short for the 8-byte header size")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER or 8 + size > file_size:
            raise bad(f"a header of {size} bytes is not plausible in a file of {file_size} bytes")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size = file_size - 8 - size
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise bad(f"tensor {name}: needs dtype, shape and two data_offsets") from None
        if dtype not in DTYPES:
            raise bad(f"tensor {name} has unsupported dtype {dtype!r}")
        numbers = (*shape, start, end)
        if not all(type(n) is int and n >= 0 for n in numbers):
            raise bad(f"tensor {name}: shape and offsets must be non-negative integers")
        if not start <= end <= data_size:
            raise bad(f"tensor {name}: bytes {start}..{end} outside the {data_size}-byte data")
        nbytes = math.prod(shape) * ITEMSIZES[dtype]
        if end - start != nbytes:
            raise bad(
                f"tensor {name}: shape {list(shape)} of {dtype} is {nbytes} bytes, "
                f"but its offsets span {end - start}"
            )
        entries.append(TensorEntry(name, dtype, shape, 8 + size + start, end - start))
    entries.sort(key=lambda e: (e.offset, e.nbytes))
    for before, after in itertools.pairwise(entries):
        if before.offset + before.nbytes > after.offset:
            raise bad(f"tensors {before.name} and {after.name} overlap")
    return entries


def load_state_dict(files: Iterable[Path], dtype: str, progress: bool = True) -> dict[str, Any]:
    """Every tensor of the safetensors *files*, floating ones up-cast to *dtype*.

    Each tensor gets its own freshly allocated tensor, as ``from_pretrained`` would give it;
    the file bytes only pass through per-thread staging buffers.
    """
    import torch
    from tqdm.auto import tqdm

    target = getattr(torch, dtype)
    jobs = [(path, entry) for path in files for entry in read_header(path)]

    def load(job: tuple[Path, TensorEntry]) -> tuple[str, Any]:
        path, entry = job
        tensor = read_tensor(maps[path], entry, target, path)
        bar.update(entry.nbytes)
        return entry.name, tensor

    total = sum(entry.nbytes for _, entry in jobs)
    with contextlib.ExitStack() as stack:
        maps = {p: stack.enter_context(mapped(p, writable=True)) for p in {p for p, _ in jobs}}
        bar = stack.enter_context(
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc="load",
                disable=None if progress else True,
            )
        )
        pool = stack.enter_context(
            ThreadPoolExecutor(WORKERS, thread_name_prefix="refgen-load", initializer=yielding)
        )
        return dict(pool.map(load, jobs))


def yielding() -> None:
    """Lower the calling thread's priority (nice 10; its OpenMP threads inherit it). The up-cast
    runs beside the import of transformers, which is single-threaded and on the critical path:
    at equal priority the imports ended 5.3 to 5.5 s after the start, yielded 3.5 to 3.6 s
    (Qwen3-1.7B shape, 3 runs each). Linux only, where a thread has a nice value of its own; a
    no-op elsewhere."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def read_tensor(
    data: mmap.mmap | bytes, entry: TensorEntry, target: Any, path: Path, out: Any = None
) -> Any:
    """One tensor of a mapped safetensors file, floating ones up-cast to the torch dtype
    *target*, chunk by chunk; the pages read are unmapped as they are used.

    The values go into a fresh tensor, or into *out* when it has the right shape and dtype (a
    tensor released by a layer that already ran: new memory costs a page fault and the kernel's
    zeroing per 4 KiB page, 4.2 s against 0.8 s for a 5 GB shard measured at the 8B shape).
    """
    import torch

    if entry.offset + entry.nbytes > len(data):
        raise ValueError(f"{path.name} ends inside tensor {entry.name}")
    source_dtype = getattr(torch, DTYPES[entry.dtype])
    into = target if source_dtype.is_floating_point else source_dtype
    if out is not None and out.dtype == into and tuple(out.shape) == tuple(entry.shape):
        tensor = out
    else:
        tensor = torch.empty(entry.shape, dtype=into)
    flat = tensor.view(-1)
    itemsize = source_dtype.itemsize
    step = CHUNK_BYTES // itemsize
    for first in range(0, flat.numel(), step):
        count = min(step, flat.numel() - first)
        offset = entry.offset + first * itemsize
        source = torch.frombuffer(data, dtype=source_dtype, count=count, offset=offset)
        flat[first : first + count].copy_(source)  # the up-cast; releases the GIL
        del source
        drop_pages(data, offset, count * itemsize)
    return tensor


@contextlib.contextmanager
def mapped(path: Path, writable: bool = False) -> Iterator[mmap.mmap | bytes]:
    """The file's page-cache pages mapped into memory: read in place, never copied.

    ``writable`` gives a private (copy-on-write) mapping, which torch.frombuffer wants; nothing
    writes to it. Empty files cannot be mapped and come back as ``b""``.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        access = mmap.ACCESS_COPY if writable else mmap.ACCESS_READ
        data = mmap.mmap(f.fileno(), 0, access=access)
    try:
        data.madvise(mmap.MADV_SEQUENTIAL)
        yield data
    finally:
        with contextlib.suppress(BufferError):  # a tensor still views it (error path only)
            data.close()


def drop_pages(data: mmap.mmap | bytes, start: int, length: int) -> None:
    """Unmap pages already used, so they leave our RSS (they stay in the page cache)."""
    if isinstance(data, mmap.mmap) and length:
        first = start - start % mmap.PAGESIZE
        data.madvise(mmap.MADV_DONTNEED, first, start + length - first)


def start_reading(folder: Path, verifier: Verifier, dtype: str) -> Future[dict[str, Any]]:
    """:func:`load_state_dict` of the weights the checkpoint names, on a thread of its own,
    started now. It needs only torch, so it can run beside the import of transformers (the
    model is built from it only once every hash matched: :func:`load_verified_model`)."""
    names = weight_files.named_weights(verifier.expected, folder)
    files = [folder / n for n in names if n.endswith(".safetensors")]
    pool = ThreadPoolExecutor(1, thread_name_prefix="refgen-read")
    reading = pool.submit(load_state_dict, files, dtype)
    pool.shutdown(wait=False)  # the thread ends with its one job
    return reading


def load_verified_model(
    folder: Path,
    expected: Iterable[lock.LockedFile] | Verifier,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    hint: str = "",
    reading: Future[dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, dict[str, str]]]:
    """The causal LM of *folder* in *dtype*, built as ``AutoModelForCausalLM.from_pretrained``
    builds it, and the actual digest of every locked file; IntegrityError on any mismatch.

    Only the weight files the checkpoint names are read (refgen.weights), and the model is
    refused (CheckpointError) when transformers' loading report has any parameter left to be
    newly initialised, any checkpoint tensor unused, or a shape mismatch: no model with random
    weights is ever returned. ``attn_implementation`` None is from_pretrained's own choice.

    Pass a :class:`Verifier` started earlier (before importing torch) to overlap the hashing
    with the import, and *reading* (:func:`start_reading`) to overlap the up-cast with the
    import of transformers; locked files start a verifier now.
    """
    verifier = expected if isinstance(expected, Verifier) else Verifier(folder, expected)
    reading = reading or start_reading(folder, verifier, dtype)
    import torch
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if not sys.stderr.isatty():  # transformers' own bar would fill CI logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    # The small files are hashed first: the config is read, and the model's code imported
    # (0.4 s for Qwen3), while the weights are still being read and hashed.
    verifier.verified((n for n in verifier.expected if not n.endswith(".safetensors")), hint)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    try:
        state = reading.result()
    except (IntegrityError, ValueError, KeyError, TypeError, OSError, struct.error):
        verifier.result(hint)  # a damaged file: report its hash, the real cause
        raise
    digests = verifier.result(hint)  # no weight is used before this
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model, report = model_class.from_pretrained(
        None,
        config=config,
        state_dict=state,
        dtype=getattr(torch, dtype),
        local_files_only=True,
        output_loading_info=True,
        **kwargs,
    )
    check_loading_report(report)
    model.eval()
    return model, digests


def check_loading_report(report: Mapping[str, Any]) -> None:
    """CheckpointError naming every parameter transformers would newly initialise, every
    checkpoint tensor it would leave unused and every shape mismatch."""
    kinds = {
        "missing_keys": "model parameters not in the checkpoint (would be randomly initialised)",
        "unexpected_keys": "checkpoint tensors the model does not use",
        "mismatched_keys": "tensors whose shape differs from the model's",
        "error_msgs": "loading errors",
        "conversion_errors": "weight conversion errors",
    }
    problems = []
    for key, what in kinds.items():
        found = report.get(key) or ()
        if found:
            listed = sorted(str(k) for k in (found.items() if isinstance(found, dict) else found))
            shown = ", ".join(listed[:8]) + (
                f" (+{len(listed) - 8} more)" if len(listed) > 8 else ""
            )
            problems.append(f"  {what}: {shown}")
    if problems:
        raise CheckpointError(
            "the checkpoint does not fit its model class exactly, so a "
            "reference from it would not be the checkpoint's model:\n"
            + "\n".join(problems)
            + "\nUse a complete checkpoint whose config.json matches its weights."
        )
