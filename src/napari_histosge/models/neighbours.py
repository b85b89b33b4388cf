"""Measured-neighbour context for the conditioned model: who the nearest measured spots are, and where.

The context of a query position is its ``k`` nearest spots of a *reference set* (the
measured spots the model was trained on), with their offsets in units of the median
spot spacing, so a hexagonal or square lattice shows up as a pattern of directions.
Training queries are reference spots themselves; their own row is always excluded, so
a spot's own expression never enters its context.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ..errors import InputError
from ..training.grouping import median_spacing

__all__ = ["GEO_DIM", "MIN_DIST", "median_spacing", "neighbour_context"]

#: Geometry channels per neighbour: dx, dy (spacing units), distance, log distance.
GEO_DIM = 4
#: Smallest distance (in spacings) used in the log term: a query on a measured spot stays finite.
MIN_DIST = 0.05


def neighbour_context(
    ref_positions: np.ndarray,
    query_positions: np.ndarray,
    k: int,
    *,
    spacing: float,
    exclude: np.ndarray | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
    tree: cKDTree | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and geometry of the ``k`` nearest reference spots of every query.

    Parameters
    ----------
    ref_positions
        ``(n, 2)`` reference (measured) spot positions.
    query_positions
        ``(m, 2)`` query positions.
    k
        Neighbours per query (fewer when the reference set is smaller).
    spacing
        Length unit for the offsets (median spot spacing of the reference set).
    exclude
        ``(m,)`` reference row to leave out per query (the query itself during training),
        or ``None``.
    dropout
        Probability of skipping each candidate neighbour (then the next-nearest fills in),
        so training contexts are as sparse as held-out ones; needs ``rng``.
    rng
        Random generator for ``dropout``.
    tree
        A prebuilt ``cKDTree`` of ``ref_positions``.

    Returns
    -------
    index : numpy.ndarray
        ``(m, k')`` int64 reference rows, nearest first among those kept.
    geo : numpy.ndarray
        ``(m, k', GEO_DIM)`` float32: ``dx, dy, d, log(max(d, MIN_DIST))`` in spacings.
    valid : numpy.ndarray
        ``(m, k')`` bool, ``False`` for padding slots (only when the reference set is tiny).
    """
    ref = np.asarray(ref_positions, np.float64)
    query = np.asarray(query_positions, np.float64)
    n, m = len(ref), len(query)
    if n == 0:
        raise InputError("the reference set of measured spots is empty")
    if int(k) < 1:
        raise InputError(f"the number of neighbours must be at least 1, got {k}")
    extra = 1 if exclude is not None else 0
    k_eff = max(1, min(int(k), n - extra))
    fetch = k_eff + extra
    if dropout > 0:
        # Enough candidates that k usually survive the drop.
        fetch = int(np.ceil((k_eff + 2) / (1.0 - dropout))) + extra
    fetch = min(fetch, n)
    tree = tree if tree is not None else cKDTree(ref)
    if m == 0:
        return np.zeros((0, k_eff), np.int64), np.zeros((0, k_eff, GEO_DIM), np.float32), np.zeros((0, k_eff), bool)
    _, idx = tree.query(query, k=fetch)
    idx = np.asarray(idx, np.int64).reshape(m, fetch)
    bad = idx >= n  # cKDTree pads with n when fewer points exist
    if exclude is not None:
        bad |= idx == np.asarray(exclude, np.int64)[:, None]
    order_key = np.broadcast_to(np.arange(fetch, dtype=np.int64), idx.shape).copy()
    if dropout > 0:
        if rng is None:
            raise InputError("neighbour dropout needs a random generator")
        order_key += fetch * (rng.random(idx.shape) < dropout)
    order_key += 2 * fetch * bad
    order = np.argsort(order_key, axis=1, kind="stable")[:, :k_eff]
    index = np.take_along_axis(idx, order, axis=1)
    valid = ~np.take_along_axis(bad, order, axis=1)
    index = np.where(valid, index, 0)
    offset = (ref[index] - query[:, None, :]) / float(spacing)
    dist = np.sqrt((offset**2).sum(-1))
    geo = np.concatenate([offset, dist[..., None], np.log(np.maximum(dist, MIN_DIST))[..., None]], axis=-1)
    geo[~valid] = 0.0
    return index, geo.astype(np.float32), valid
