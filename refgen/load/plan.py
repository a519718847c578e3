"""The planner: which strategy loads this run (in memory or streamed), decided before torch is
imported, and the one place that switches between them.

:func:`choose` makes the :class:`LoadPlan` (recorded in the manifest); :func:`start_reading`,
:func:`load_model` and :func:`forwards` run what it chose. The strategies never call each other:
both read through :mod:`refgen.load.files`, wait on one :class:`refgen.load.verify.Verifier` and
check the model through :mod:`refgen.load.model`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen.errors import CheckpointError, StreamingError
from refgen.load import files, memory, stream
from refgen.load.verify import Verifier

log = logging.getLogger("refgen")

# The automatic budget is this share of the memory the kernel reports available
# (MemAvailable, which counts reclaimable page cache). The in-memory path
# peaks at 1.06x the F32 weights plus about 0.5 GB for torch, the tokenizer and activations
# (measured at the Qwen3-1.7B shape: 7.27 GB for 6.88 GB of weights); the remaining quarter is
# for that overhead, for the page cache the weights are read through, and for other processes.
AVAILABLE_SHARE = 0.75


def available_memory() -> int:
    """The kernel's MemAvailable (free plus reclaimable page cache), as psutil reports it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget() -> int:
    return int(available_memory() * AVAILABLE_SHARE)


@dataclass(frozen=True)
class LoadOptions:
    """How to load, as asked (CLI over spec); ``None`` budget: derived from available memory."""

    mode: str = "auto"
    memory_budget: int | None = None


@dataclass(frozen=True)
class LoadPlan:
    """How this run loads, decided before torch is imported; recorded in the manifest."""

    mode: str  # "memory" or "stream"
    requested: str  # "auto", "memory" or "stream"
    weights_bytes: int  # the weights in the run dtype
    budget: int  # bytes the run may use
    budget_explicit: bool  # given by the spec or the CLI (else derived from available memory)

    @property
    def fits_in_memory(self) -> bool:
        """The in-memory peak, the weights plus the runtime (see AVAILABLE_SHARE), fits the
        budget."""
        return self.weights_bytes + stream.RUNTIME_BYTES // 2 <= self.budget

    def manifest(self) -> dict[str, Any]:
        """Host-independent unless the budget was derived: then only the rule is recorded."""
        return {
            "mode": self.mode,
            "requested": self.requested,
            "memory_budget_bytes": self.budget if self.budget_explicit else None,
            "memory_budget_rule": None
            if self.budget_explicit
            else f"available memory x {AVAILABLE_SHARE}",
            "weights_bytes": self.weights_bytes,
        }


def weights_bytes(paths: Sequence[Path], dtype: str = "float32") -> int:
    """Bytes of the weights once floating tensors are in *dtype*, from the (validated) headers."""
    size = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}[dtype]
    total = 0
    for path in paths:
        for entry in files.read_header(path):
            itemsize = files.ITEMSIZES[entry.dtype]
            floating = entry.dtype in files.FLOATING
            total += entry.nbytes // itemsize * size if floating else entry.nbytes
    return total


# ``auto`` streams, except for AUTO_MEMORY_PROMPTS prompts or more when the in-memory load fits
# the budget. Wall, streamed / in memory, on the idle 2-core machine, outputs byte-identical:
#   tiny Qwen3 (2 layers, hidden 64), medians of 3 alternating runs (`python -m refgen.bench
#   --shape tiny --runs 3 --no-scaling --cost-prompts 1,3,100 --cost-runs 3`): 1 prompt 0.99x,
#   3 prompts 1.01x, 100 prompts 0.99x, all-layer probes 0.99x (a tie: the imports dominate);
#   the Qwen3-1.7B shape, one run per mode (`make bench BENCH_ARGS="--shape 8b --runs 3
#   --cost-runs 1"`, README "Performance"): 1 prompt 0.58x, 3 prompts 0.77x, all-layer probes
#   0.99x, sub-layer probes 0.77x, 100 prompts 1.01x, 1,000 prompts 1.12x.
# Streaming saves the in-memory load's fresh pages (3.6 s at 1.7B) once, and costs a little per
# prompt (1.78 against 1.59 s of forward per prompt over 1,000 prompts: each wave of prompts reads
# the weights again and hands every layer from prompt to prompt); from about 100 prompts on the
# in-memory load is as fast or faster, and ``auto`` takes it when it fits. ``--load memory`` and
# ``--stream`` choose for themselves; ``auto`` also loads in memory a checkpoint the streamed
# strategy refuses when it fits (:func:`load_model`).
AUTO_MEMORY_PROMPTS = 100


def choose(paths: Sequence[Path], dtype: str, options: LoadOptions, prompts: int = 1) -> LoadPlan:
    """The strategy asked for, or (auto) streamed, unless the run has :data:`AUTO_MEMORY_PROMPTS`
    *prompts* or more and the in-memory load fits the budget. A streamed run keeps the
    embeddings and head resident when they fit the budget beside two layers, and streams them
    too otherwise (:func:`refgen.load.stream.load_streamed_model`)."""
    need = weights_bytes(paths, dtype)
    explicit = options.memory_budget is not None
    budget = options.memory_budget if options.memory_budget is not None else default_budget()
    plan = LoadPlan(options.mode, options.mode, need, budget, explicit)
    if options.mode == "auto":
        many = prompts >= AUTO_MEMORY_PROMPTS and plan.fits_in_memory
        plan = dataclasses.replace(plan, mode="memory" if many else "stream")
    log.info(
        "load: %s (%s; weights %.2f GB in %s, memory budget %.2f GB%s)",
        plan.mode,
        "asked" if options.mode != "auto" else "automatic",
        need / 1e9,
        dtype,
        budget / 1e9,
        "" if explicit else f" = {AVAILABLE_SHARE} x available",
    )
    return plan


def start_reading(
    folder: Path, verifier: Verifier, load_plan: LoadPlan, dtype: str = "float32"
) -> Future[dict[str, Any]] | None:
    """What can start once torch is imported: in memory, the up-cast of every weight
    (:func:`refgen.load.memory.start_reading`); streamed, nothing (each layer is read when it
    runs)."""
    return memory.start_reading(folder, verifier, dtype) if load_plan.mode == "memory" else None


def load_model(
    folder: Path,
    verifier: Verifier,
    load_plan: LoadPlan,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    hint: str = "",
    reading: Future[dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, dict[str, str]]]:
    """The model as the plan says: :func:`refgen.load.memory.load_verified_model` (from
    *reading*, when :func:`start_reading` started it) or a streamed one.

    A streamed load that ``auto`` chose falls back to memory, when the weights fit, if the
    streamed strategy refuses the checkpoint (a transformers checkpoint conversion it cannot
    apply, :mod:`refgen.load.keys`): the in-memory strategy hands it to ``from_pretrained``,
    whose loading report then decides.
    :func:`as_loaded` tells which strategy it was.
    """
    if load_plan.mode == "memory":
        return memory.load_verified_model(
            folder, verifier, dtype, attn_implementation, hint, reading
        )
    try:
        return stream.load_streamed_model(
            folder, verifier, dtype, attn_implementation, hint, load_plan.budget
        )
    except (CheckpointError, StreamingError) as exc:
        if load_plan.requested != "auto" or not load_plan.fits_in_memory:
            raise
        log.info("load: in memory after all: %s", str(exc).splitlines()[0])
        return memory.load_verified_model(folder, verifier, dtype, attn_implementation, hint)


def as_loaded(load_plan: LoadPlan, model: Any) -> LoadPlan:
    """*load_plan* with the strategy *model* was loaded by (see :func:`load_model`)."""
    return dataclasses.replace(load_plan, mode="stream" if stream.is_streamed(model) else "memory")


def forwards(
    model: Any,
    inputs: Sequence[Any],
    progress: bool = True,
    starting: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """``model(input_ids=x, **kwargs)`` for each of *inputs*, in order.

    In memory, one after the other as they are consumed; streamed, together layer by layer
    (:func:`refgen.load.stream.forwards`). ``starting(i)`` is called before prompt *i*'s
    forward begins (for the log: a line after it would come too late).
    """
    if not stream.is_streamed(model):
        for number, input_ids in enumerate(inputs):
            if starting is not None:
                starting(number)
            yield model(input_ids=input_ids, **kwargs)
        return
    if starting is not None:
        for number in range(len(inputs)):
            starting(number)
    yield from stream.forwards(model, inputs, progress, **kwargs)
