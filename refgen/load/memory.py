"""The in-memory strategy: the checkpoint in the run dtype, with the source pages never resident.

``from_pretrained`` on a BF16 checkpoint memory-maps the file and keeps its pages mapped next to
the F32 copy (peak RSS = F32 + BF16 = 1.5x the F32 weights), and verifying the lock before it
reads every byte once more, on the critical path. Here:

* the verifier (:mod:`refgen.load.verify`) hashes every locked file on its own thread, beside
  the import and the up-cast;
* the tensors are up-cast chunk by chunk, on two threads, straight from the mapped page cache
  (no copy through a buffer, :func:`refgen.load.files.read_tensor`); each chunk is unmapped
  (``MADV_DONTNEED``) as soon as it is used, and so is each block the hashing thread has hashed.
  The pages stay in the page cache, which is not our RSS, so the peak is the F32 weights plus a
  few chunks;
* transformers builds the model itself from that state dict (``from_pretrained(None,
  config=..., state_dict=...)`` assigns the tensors without copying), so module construction,
  buffers, weight tying and eval mode are exactly ``from_pretrained``'s and so is every output
  byte. The model is returned only after every file's digest matched the lock.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from refgen import lock
from refgen import weights as weight_files
from refgen.errors import IntegrityError, NonFiniteError
from refgen.load import files
from refgen.load import model as model_check
from refgen.load.verify import Verifier


def load_state_dict(paths: Iterable[Path], dtype: str, progress: bool = True) -> dict[str, Any]:
    """Every tensor of the safetensors files *paths*, floating ones up-cast to *dtype*.

    Each tensor gets its own freshly allocated tensor, as ``from_pretrained`` would give it;
    the file bytes only pass through per-thread staging buffers. A tensor that *dtype* cannot
    hold exactly (float32 bytes in a bfloat16 run, say) stays a view of the file as stored:
    transformers casts it once, to the run dtype or to the float32 it keeps some parameters in
    (:mod:`refgen.load.model`), exactly as ``from_pretrained`` casts it from the file.
    """
    import torch
    from tqdm.auto import tqdm

    target = getattr(torch, dtype)
    jobs = [(path, entry) for path in paths for entry in files.read_header(path)]

    def load(job: tuple[Path, files.TensorEntry]) -> tuple[str, Any]:
        path, entry = job
        if files.casts_exactly(entry.dtype, dtype):
            tensor = files.read_tensor(maps[path], entry, target, path)
        else:
            tensor = files.view_tensor(maps[path], entry, path)
        bar.update(entry.nbytes)
        return entry.name, tensor

    total = sum(entry.nbytes for _, entry in jobs)
    with contextlib.ExitStack() as stack:
        maps = {
            p: stack.enter_context(files.mapped(p, writable=True)) for p in {p for p, _ in jobs}
        }
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
            ThreadPoolExecutor(
                files.WORKERS, thread_name_prefix="refgen-load", initializer=yielding
            )
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


def start_reading(folder: Path, verifier: Verifier, dtype: str) -> Future[dict[str, Any]]:
    """:func:`load_state_dict` of the weights the checkpoint names, on a thread of its own,
    started now. It needs only torch, so it can run beside the import of transformers (the
    model is built from it only once every hash matched: :func:`load_verified_model`)."""
    names = weight_files.named_weights(verifier.expected, folder)
    paths = [folder / n for n in names if n.endswith(".safetensors")]
    pool = ThreadPoolExecutor(1, thread_name_prefix="refgen-read")
    reading = pool.submit(load_state_dict, paths, dtype)
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

    if not sys.stderr.isatty():  # transformers' own bar would fill CI logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    # The small files are hashed first: the config is read, and the model's code imported
    # (0.4 s for Qwen3), while the weights are still being read and hashed.
    verifier.verified((n for n in verifier.expected if not n.endswith(".safetensors")), hint)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model_class = model_check.causal_lm_class(config)
    try:
        state = reading.result()
    except (IntegrityError, NonFiniteError, ValueError, KeyError, TypeError, OSError, struct.error):
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
    model_check.check_loading_report(report)
    model.eval()
    return model, digests
