"""How far a port's tensor is from the reference's: numbers a porter can act on.

Every metric is computed in float64 from exactly widened values (:meth:`ProbeTensor.values`),
over the whole tensor and over each position (row) of a ``[positions, ...]`` tensor:

* ``max_abs``, ``mean_abs``: of the error ``port - reference``;
* ``err_rms``: the error's root mean square, the quantity the tolerance judges (it is what the
  reference's rounding floor records, so the two are compared like with like);
* ``nmse``: mean squared error over the reference's variance, as llama.cpp's
  ``examples/model-conversion`` computes it, and in decibels (``10 log10 nmse``);
* ``cosine``: cosine similarity of the flattened tensors (1 for a perfect port).

Logits get the token-level view too: top-1 agreement, the overlap of the top-k sets, and
candle-mi's acceptance test (the top-10 indices identical in order, and every one of those ten
logits within 1e-3 of the reference's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 10
"""The k of the top-k overlap and of candle-mi's criterion."""
CANDLE_MI_LOGIT_TOLERANCE = 1e-3
"""candle-mi's bar on |port logit - reference logit| over the reference's top 10."""

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Metrics:
    """The error of one tensor, or of one position of it."""

    max_abs: float
    mean_abs: float
    err_rms: float
    ref_rms: float
    nmse: float
    cosine: float

    @property
    def nmse_db(self) -> float:
        """NMSE in decibels; -inf for an exact match."""
        if self.nmse == 0:
            return -math.inf
        return 10 * math.log10(self.nmse) if math.isfinite(self.nmse) else self.nmse


@dataclass(frozen=True)
class LogitMetrics:
    """The token-level view of logits rows (one row for the last position, else every one)."""

    top1_agree: tuple[bool, ...]  # per row
    topk_overlap: tuple[float, ...]  # per row: |top-k(ref) & top-k(port)| / k
    candle_mi: tuple[bool, ...]  # per row: candle-mi's criterion holds

    @property
    def all_top1(self) -> bool:
        return all(self.top1_agree)

    @property
    def all_candle_mi(self) -> bool:
        return all(self.candle_mi)


def metrics(ref: Array, port: Array) -> Metrics:
    """The metrics of *port* against *ref* (same shape, float64) over all their elements."""
    return _metrics(ref.reshape(-1), port.reshape(-1))


def per_position(ref: Array, port: Array) -> tuple[Metrics, ...]:
    """One :class:`Metrics` per row of a ``[positions, ...]`` tensor; () for a 1-d tensor."""
    if ref.ndim < 2:
        return ()
    rows = ref.shape[0]
    return tuple(_metrics(ref[p].reshape(-1), port[p].reshape(-1)) for p in range(rows))


def _metrics(ref: Array, port: Array) -> Metrics:
    if ref.size == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = port - ref
        abs_err = np.abs(err)
        mse = float(np.mean(err * err))
        ref_ms = float(np.mean(ref * ref))
        variance = float(np.var(ref))
        # a constant reference (llama.cpp's convention): any error is infinitely large
        nmse = mse / variance if variance > 0 else 0.0 if mse == 0 else math.inf
        norms = float(np.linalg.norm(ref)) * float(np.linalg.norm(port))
        if norms > 0:
            cosine = float(np.dot(ref, port)) / norms
        else:  # both zero is a match; one zero has no direction to agree with
            cosine = 1.0 if not np.any(port) and not np.any(ref) else 0.0
        return Metrics(
            max_abs=float(np.max(abs_err)) if not np.isnan(abs_err).any() else math.nan,
            mean_abs=float(np.mean(abs_err)),
            err_rms=math.sqrt(mse) if not math.isnan(mse) else math.nan,
            ref_rms=math.sqrt(ref_ms),
            nmse=nmse if not math.isnan(mse) else math.nan,
            cosine=cosine if not math.isnan(mse) else math.nan,
        )


def logit_metrics(ref: Array, port: Array, k: int = TOP_K) -> LogitMetrics:
    """Token-level agreement of logits, ``[vocab]`` or ``[positions, vocab]``."""
    ref2, port2 = np.atleast_2d(ref), np.atleast_2d(port)
    k = min(k, ref2.shape[-1])
    top1: list[bool] = []
    overlap: list[float] = []
    candle: list[bool] = []
    for r, p in zip(ref2, port2, strict=True):
        # stable sorts, ties by index: the same order transformers' topk gives distinct values
        top_r = np.argsort(-r, kind="stable")[:k]
        top_p = np.argsort(-np.nan_to_num(p, nan=-np.inf), kind="stable")[:k]
        top1.append(bool(top_r[0] == top_p[0]) and not np.isnan(p).any())
        overlap.append(len(set(top_r.tolist()) & set(top_p.tolist())) / k)
        with np.errstate(invalid="ignore"):
            close = bool(np.all(np.abs(p[top_r] - r[top_r]) <= CANDLE_MI_LOGIT_TOLERANCE))
        candle.append(bool(np.array_equal(top_r, top_p)) and close)
    return LogitMetrics(tuple(top1), tuple(overlap), tuple(candle))
