"""Prediction in pieces: progress, cancel and scale-out without changing a single number.

A trained model predicts through a *plan*: the list of forward passes it runs
(:meth:`~napari_histosge.training.trained_model.TrainedModel.plan_batches`; for HisToSGE, spatial
attention groups packed into batches). Cutting the plan into consecutive runs of whole
passes and running each on its own rows gives exactly the single-call result, so the
same pieces serve the in-process path (progress events and cancel between pieces) and
:func:`napari_histosge.prediction.distributed.predict_distributed` (one piece per dask task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelToken, Progress, ProgressGenerator

#: Positions per piece (rounded to the forward pass that ends it).
DEFAULT_CHUNK = 20_000

Plan = Sequence[tuple[np.ndarray, np.ndarray]]


def plan_chunks(plan: Plan, chunk_size: int) -> list[tuple[int, int]]:
    """Split a forward-pass plan into consecutive ``[start, stop)`` runs of about ``chunk_size`` rows."""
    if int(chunk_size) < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}")
    runs, start, rows = [], 0, 0
    for i, (_index, mask) in enumerate(plan):
        rows += int((~mask).sum())
        if rows >= chunk_size:
            runs.append((start, i + 1))
            start, rows = i + 1, 0
    if start < len(plan):
        runs.append((start, len(plan)))
    return runs


def local_plan(plan: Plan) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The rows a piece of a plan reads (sorted), and the piece re-indexed into those rows."""
    rows = np.unique(np.concatenate([index[~mask] for index, mask in plan]))
    return rows, [(np.where(mask, 0, np.searchsorted(rows, index)), mask) for index, mask in plan]


def plan_pieces(model: Any, features, mean_rgb, positions, *, frame=None, chunk_size: int = DEFAULT_CHUNK):
    """``(rows, (inputs, local plan, first pass))`` per piece of ``model``'s plan at ``positions``."""
    positions = np.asarray(positions, np.float64)
    inputs = model.prediction_inputs(features, mean_rgb, positions, frame=frame)
    plan = model.plan_batches(positions)
    pieces = []
    for start, stop in plan_chunks(plan, chunk_size):
        rows, local = local_plan(plan[start:stop])
        pieces.append((rows, (tuple(a[rows] for a in inputs), local, start)))
    return pieces


def run_piece(piece: tuple, model: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict one piece: ``(pred, std)`` for its rows (also the dask worker task)."""
    inputs, plan, first_pass = piece
    return model.predict_planned(inputs, plan, first_batch=first_pass)


def assemble(n: int, n_genes: int, row_sets, results) -> tuple[np.ndarray, np.ndarray | None]:
    """Put the pieces' ``(pred, std)`` back in input order."""
    pred, std = np.zeros((n, n_genes), np.float32), None
    for rows, (p, s) in zip(row_sets, results, strict=True):
        pred[rows] = p
        if s is not None:
            std = np.zeros((n, n_genes), np.float32) if std is None else std
            std[rows] = s
    return pred, std


def predict_in_pieces(
    model: Any,
    features,
    mean_rgb,
    positions,
    *,
    frame=None,
    chunk_size: int = DEFAULT_CHUNK,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[tuple[np.ndarray, np.ndarray | None]]:
    """``model``'s predictions at ``positions`` in this process, piece by piece.

    Identical to ``model.predict`` (and ``return_std=True`` for sampling models), with a
    progress event after each piece and ``cancel`` checked between pieces.

    Yields
    ------
    Progress
        ``stage="predict"``, ``step`` = positions done.

    Returns
    -------
    tuple
        ``(pred, std)``: ``(n, G)`` float32, ``std`` ``None`` for models that do not sample.
    """
    n = len(np.asarray(positions))
    pieces = plan_pieces(model, features, mean_rgb, positions, frame=frame, chunk_size=chunk_size)
    yield Progress("predict", 0, n, f"{n} positions")
    results, done = [], 0
    for rows, piece in pieces:
        if cancel is not None:
            cancel.raise_if_cancelled()
        results.append(run_piece(piece, model))
        done += len(rows)
        yield Progress("predict", done, n, f"{done}/{n} positions")
    return assemble(n, len(model.genes), [rows for rows, _ in pieces], results)
