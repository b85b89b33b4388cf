"""The sequencing-depth term of the conditioned model: how a spot's depth moves its sparse genes.

On the log1p(normalize_total) scale a gene measured a few times per spot is mostly 0, and
where it is counted its value is large: its expected value rises with the spot's total
counts (its *depth*), for purely technical reasons. Depth varies smoothly over a section,
so the measured neighbours predict it well (docs/benchmarks.md), while kriging a sparse
gene on its own shrinks it almost to its mean, losing that shared signal.

The term kriges the z-scored log depth with its own kernel and adds ``slope_g`` times it to
every gene, after removing ``slope_g`` times the neighbours' own depth from their values
(so a gene whose own kriging already follows the depth gets nothing twice). ``slope_g`` is
not fitted per gene: on the training spots a sparse gene's correlation with depth is
biased down by the choice of highly variable genes on those same spots (a sparse gene
counts as highly variable when its few counts fell in shallow spots, where normalisation
inflates them). It is the slope of the expected value under Poisson counting at the
gene's mean rate, over the training spots' depths, and it is used only for genes with
fewer than :data:`MAX_MEAN_COUNTS` counts per spot on average, where counting noise rules;
for the others it is 0.
"""

from __future__ import annotations

import numpy as np

from ...io.preprocess import TARGET_SUM

#: Genes above this mean count per spot get no depth term: their own kriging carries it.
MAX_MEAN_COUNTS = 1.0
#: Counts summed over when taking the Poisson expectation (the genes concerned average < 1).
_MAX_COUNT = 60


def log_depth(depth: np.ndarray) -> np.ndarray:
    """``log`` of the total counts per spot (at least 1, so an empty spot stays finite)."""
    return np.log(np.maximum(np.asarray(depth, np.float64), 1.0))


def depth_slopes(targets: np.ndarray, depth: np.ndarray, gene_std: np.ndarray,
                 target_sum: float = TARGET_SUM) -> np.ndarray:
    """Per-gene slope of the z-scored expression on the z-scored log depth (0 for common genes).

    Parameters
    ----------
    targets
        ``(n, G)`` log1p(normalize_total to ``target_sum``) expression of the training spots.
    depth
        ``(n,)`` total counts of those spots.
    gene_std
        ``(G,)`` the genes' standard deviation (the z-scale's unit).
    target_sum
        The normalisation's total.

    Returns
    -------
    numpy.ndarray
        ``(G,)`` float32.
    """
    depth = np.maximum(np.asarray(depth, np.float64), 1.0)
    ell = log_depth(depth)
    centred = ell - ell.mean()
    spread = float(np.sqrt(np.mean(centred**2)))
    rate = np.expm1(np.asarray(targets, np.float64)).mean(axis=0) / target_sum  # share of a spot's counts
    slopes = np.zeros(rate.shape, np.float64)
    sparse = np.flatnonzero(rate * depth.mean() < MAX_MEAN_COUNTS)
    if spread == 0 or len(sparse) == 0:
        return slopes.astype(np.float32)
    lam = depth[:, None] * rate[None, sparse]
    expected = np.zeros_like(lam)
    pmf = np.exp(-lam)  # P(0); P(c) = P(c - 1) * lam / c, cheaper than evaluating each pmf anew
    for c in range(1, _MAX_COUNT):  # c = 0 adds log1p(0) = 0
        pmf *= lam / c
        expected += pmf * np.log1p(target_sum * c / depth[:, None])
    slope_log = centred @ expected / np.sum(centred**2)  # d E[value] / d log depth
    slopes[sparse] = slope_log * spread / np.asarray(gene_std, np.float64)[sparse]
    return slopes.astype(np.float32)


def standardise_depth(depth: np.ndarray) -> np.ndarray:
    """``(n,)`` float32 z-scored log depth of the training spots (0 where all are alike)."""
    ell = log_depth(depth)
    std = float(ell.std())
    return ((ell - ell.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
