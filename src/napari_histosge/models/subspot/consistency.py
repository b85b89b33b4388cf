"""Consistency with the measurement: the cells under each measured footprint scaled to reproduce it.

Each cell belongs to the footprint it lies in (the first, where footprints overlap). A
footprint's cells keep their relative pattern raised to the gene's ``detail`` (1: as
predicted; 0: flat, the footprint's value everywhere; between: the pattern damped) and
are scaled so that their mean is the footprint's target rate. Cells outside every
footprint keep their prediction.

The target is the measured rate itself (``exact``, the default), or the measurement read
through its counting noise (``counting``): a footprint that counted ``k`` molecules of a
gene where the model expects ``mu`` has the gamma-Poisson posterior mean
``mu * (alpha + k) / (alpha + mu)``, with ``alpha`` the gene's dispersion around the model
(fitted on the training footprints). Well-counted genes follow their measurement; a gene
counted zero or one time in a spot is not painted as a hole where the model and the
neighbours say it is expressed. The dispersion also holds the spots' real differences from
their neighbours, so ``counting`` pulls every spot toward its neighbours too.

Both scale each footprint's cells by one factor, so a map shows every measured footprint
as a disc or square with a step at its edge. :func:`smooth_field` instead corrects the
map by a smooth ratio: the kernel-weighted targets over the kernel-weighted means of the
footprints' cells (the prior's Gaussian kernel), which changes gradually across footprint
edges and between them. The map then agrees with the measurement in expectation (around
every position, at the kernel's scale, the footprints' means add up to their targets)
rather than reproducing each noisy value.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Rates are floored here before dividing (counts per 1e4).
RATE_FLOOR = 1e-6


def counting_targets(predicted: np.ndarray, measured: np.ndarray, depth: np.ndarray,
                     dispersion: np.ndarray) -> np.ndarray:
    """Footprint target rates: the gamma-Poisson posterior mean of each measured count.

    Parameters
    ----------
    predicted, measured
        ``(footprints, G)`` the model's and the measured rates (counts per 1e4).
    depth
        ``(footprints,)`` each footprint's total counts.
    dispersion
        ``(G,)`` each gene's ``alpha`` (larger: the measurement scatters less around the model).
    """
    per_count = np.asarray(depth, np.float64)[:, None] / 1e4
    mu, k = np.maximum(predicted, 0.0) * per_count, np.maximum(measured, 0.0) * per_count
    alpha = np.asarray(dispersion, np.float64)[None, :]
    posterior = np.where(mu > 0, mu * (alpha + k) / (alpha + mu), k)
    return posterior / np.maximum(per_count, 1e-12)


def fit_dispersion(predicted: np.ndarray, measured: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``(G,)`` ``alpha`` of each gene's measured counts around the model's (method of moments, clipped)."""
    per_count = np.asarray(depth, np.float64)[:, None] / 1e4
    mu, k = np.maximum(predicted, 0.0) * per_count, np.maximum(measured, 0.0) * per_count
    excess = ((k - mu) ** 2 - mu).sum(axis=0)  # the variance beyond Poisson
    return np.clip((mu**2).sum(axis=0) / np.maximum(excess, 1e-12), DISPERSION_RANGE[0], DISPERSION_RANGE[1])


#: ``alpha`` is kept in this range: from very loose to a nearly exact measurement.
DISPERSION_RANGE = (1e-2, 1e6)


def consistent_rates(rates: np.ndarray, weights: sp.csr_matrix, measured: np.ndarray,
                     detail: np.ndarray | None = None, *, depth: np.ndarray | None = None,
                     dispersion: np.ndarray | None = None) -> np.ndarray:
    """``rates`` ``(cells, G)`` made consistent with ``measured`` ``(footprints, G)``.

    Parameters
    ----------
    rates
        Predicted cell rates.
    weights
        ``(footprints, cells)``: each footprint's cells with weights summing to one (an
        empty row is a footprint with no cell here, left alone).
    measured
        Each footprint's measured rate.
    detail
        ``(G,)`` exponent of each gene's within-footprint pattern; ``None`` is 1 for all.
    depth, dispersion
        ``(footprints,)`` total counts and ``(G,)`` dispersions: the targets are then the
        measurement read through its counting noise (:func:`counting_targets`); ``None``
        reproduces ``measured`` exactly.
    """
    rates = np.asarray(rates, np.float64)
    member = (weights != 0).T.tocsr()  # (cells, footprints)
    covered = np.flatnonzero(np.diff(member.indptr) > 0)
    if len(covered) == 0:
        return rates.astype(np.float32)
    owner = member.indices[member.indptr[covered]]  # the first footprint of each covered cell
    mean = np.asarray(weights @ rates)
    if depth is not None and dispersion is not None:
        measured = counting_targets(mean, measured, depth, dispersion)
    pattern = rates[covered] / np.maximum(mean[owner], RATE_FLOOR)
    if detail is not None:
        pattern = np.maximum(pattern, RATE_FLOOR) ** np.asarray(detail, np.float64)[None, :]
    full = np.zeros_like(rates)
    full[covered] = pattern
    pattern_mean = np.asarray(weights @ full)
    out = rates.copy()
    out[covered] = np.maximum(measured[owner], 0.0) * pattern / np.maximum(pattern_mean[owner], RATE_FLOOR)
    return out.astype(np.float32)


#: Passes of the smooth correction: each corrects what the previous passes left.
FIELD_PASSES = 2
#: Kernel-weighted sums below this are treated as empty (no correction there).
FIELD_FLOOR = 1e-9


def smooth_field(footprint_cells: sp.csr_matrix, cell_prior: np.ndarray, cell_kernel: sp.csr_matrix,
                 measured: np.ndarray, passes: int = FIELD_PASSES) -> list[np.ndarray]:
    """The footprints' means at each pass of a smooth ratio correction (read with :func:`field_factor`).

    At a position with kernel weights ``k`` of the footprints, the correction multiplies
    the rate by ``(k @ measured) / (k @ means)``: the kernel-weighted measurement over
    the kernel-weighted means of the footprints' cells. So around every position the map's
    footprint means add up to the measurement's, at the kernel's scale (the map agrees
    with the measurement in expectation), while each footprint's own noise is spread over
    its neighbours instead of stamped on its cells. Each further pass corrects what the
    previous left.

    Parameters
    ----------
    footprint_cells
        ``(F, n)``: each footprint's cells (weights summing to one; an empty row is a
        footprint without cells, whose mean is then its measurement).
    cell_prior
        ``(n, G)`` the rates of those cells before the correction.
    cell_kernel
        ``(n, F)`` the cells' kernel weights of the footprints.
    measured
        ``(F, G)`` each footprint's target rate.
    passes
        How many corrections are chained.

    Returns
    -------
    list of numpy.ndarray
        ``(F, G)`` the footprints' means before each pass.
    """
    target = np.maximum(np.asarray(measured, np.float64), 0.0)
    rates = np.maximum(np.asarray(cell_prior, np.float64), 0.0)
    has_cells = (np.diff(footprint_cells.indptr) > 0)[:, None]
    means = []
    for _ in range(max(int(passes), 1)):
        means.append(np.where(has_cells, np.asarray(footprint_cells @ rates), target))
        rates = rates * field_factor(cell_kernel, target, means[-1:])
    return means


def field_factor(kernel: sp.csr_matrix, measured: np.ndarray, means: list[np.ndarray]) -> np.ndarray:
    """``(n, G)`` the smooth correction at positions with ``kernel`` weights ``(n, F)`` (:func:`smooth_field`)."""
    wanted = np.asarray(kernel @ np.maximum(np.asarray(measured, np.float64), 0.0))
    factor = np.ones_like(wanted)
    for mean in means:
        have = np.asarray(kernel @ mean)
        factor *= np.where(have > FIELD_FLOOR, wanted / np.maximum(have, FIELD_FLOOR), 1.0)
    return factor
