"""The measured prior of the sub-spot model: the measured footprints, smoothed onto any position.

Each position takes a Gaussian-weighted mean of its nearest measured footprints, averaged
on the log1p scale and returned as rates (counts per 1e4): one footprint's burst of counts
does not dominate its neighbourhood, as it would in a mean of rates (the hold-out recovery
protocol scored the log1p mean clearly higher). The bandwidth is in footprint spacings, so
the prior follows the measurement between footprints and is smooth across their edges.
Aggregating cells over a footprint stays on the rate scale (:mod:`.consistency`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Footprints each position's prior is taken from.
NEIGHBOURS = 16


def prior_weights(xy: np.ndarray, footprint_xy: np.ndarray, bandwidth_px: float, *,
                  exclude: np.ndarray | None = None) -> sp.csr_matrix:
    """``(n, n_footprints)`` Gaussian weights of the nearest footprints, each row summing to one.

    Parameters
    ----------
    xy
        ``(n, 2)`` full-res positions.
    footprint_xy
        ``(m, 2)`` footprint centres.
    bandwidth_px
        Standard deviation of the Gaussian, full-res px.
    exclude
        ``(n,)`` footprint index each position must not draw on (``-1``: none): its own
        footprint, so the prior says what the neighbours alone would.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, np.float64)
    k = min(NEIGHBOURS + (exclude is not None), len(footprint_xy))
    dist, index = cKDTree(footprint_xy).query(xy, k=k)
    dist, index = dist.reshape(len(xy), k), index.reshape(len(xy), k)
    # Relative to the nearest distance: far from every footprint the weights stay defined.
    weight = np.exp(-0.5 * ((dist - dist[:, :1]) ** 2 + 2 * dist[:, :1] * (dist - dist[:, :1])) / bandwidth_px**2)
    if exclude is not None:
        weight[index == np.asarray(exclude)[:, None]] = 0.0
        weight[weight.sum(axis=1) == 0, :] = 1.0  # a lone footprint: fall back to every neighbour
    weight /= weight.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(len(xy)), k)
    return sp.csr_matrix((weight.ravel(), (rows, index.ravel())), shape=(len(xy), len(footprint_xy)))


def prior_rates(xy: np.ndarray, footprint_xy: np.ndarray, footprint_rates: np.ndarray, bandwidth_px: float, *,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """The prior at ``xy``: ``(n, G)`` float32 rates, their weighted mean on the log1p scale (:func:`prior_weights`)."""
    return smoothed_rates(prior_weights(xy, footprint_xy, bandwidth_px, exclude=exclude), footprint_rates)


def smoothed_rates(weights: sp.csr_matrix, footprint_rates: np.ndarray) -> np.ndarray:
    """``(n, G)`` float32: the footprints' rates averaged with ``weights`` (:func:`prior_weights`) on log1p."""
    logs = np.log1p(np.maximum(np.asarray(footprint_rates, np.float64), 0.0))
    return np.expm1(np.asarray(weights @ logs)).astype(np.float32)
