"""Counting noise of a measured value on the log1p(normalize_total) scale.

A spot that counts ``c ~ Poisson(lam)`` transcripts of a gene out of ``D`` in all reads
``log1p(target_sum * c / D)``. For a gene counted a few times per spot that value is mostly
0 and sometimes large, so a measurement scatters widely around its expected value; how
widely depends on the gene's rate and on the spot's depth ``D``. The conditioned model adds
this scatter to the spread of its generator samples, so its uncertainty describes what a
spot measured at the position would read, not only how unsure the expected value is
(docs/benchmarks.md: without it, the spread was far narrower than the error and did not
rank where it was large).

The expected value ``E(lam)`` rises monotonically with ``lam``, so a predicted value fixes
``lam`` at the spot's depth; both moments are tabulated per spot over a grid of ``lam``
(exact Poisson sums up to :data:`_EXACT_MAX` expected counts, the delta method above) and
read off by interpolation.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...io.preprocess import TARGET_SUM

#: Expected counts per spot tabulated (log-spaced).
_LAMBDA_GRID = np.logspace(-4, 4, 161)
#: Up to this many expected counts the moments are exact Poisson sums, above it the delta method.
_EXACT_MAX = 30.0
#: The exact part sums the counts below this (P(c >= 90 | lam = 30) is below 1e-18).
_MAX_COUNT = 90
#: Spots per block of the moment tables (bounds memory on large super-resolution grids).
_BLOCK = 4096


def _moments(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``log1p(scale * c)``, ``c ~ Poisson(lam)``, over the ``lam`` grid.

    Parameters
    ----------
    scale
        ``(n,)`` factors ``target_sum / depth``, one per spot.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n, L)`` means and ``(n, L)`` variances, one column per ``lam`` of the grid.
    """
    k = scale[:, None]
    lam = _LAMBDA_GRID[None, :]
    exact = _LAMBDA_GRID <= _EXACT_MAX
    mean = np.empty((len(scale), len(_LAMBDA_GRID)))
    var = np.empty_like(mean)
    le = lam[:, exact]
    pmf = np.exp(-le) * np.ones_like(k)
    m1 = np.zeros_like(pmf)
    m2 = np.zeros_like(pmf)
    for c in range(1, _MAX_COUNT):  # c = 0 adds nothing; P(c) = P(c - 1) * lam / c
        pmf = pmf * le / c
        v = np.log1p(k * c)
        m1 += pmf * v
        m2 += pmf * v * v
    mean[:, exact], var[:, exact] = m1, np.maximum(m2 - m1 * m1, 0.0)
    ld = lam[:, ~exact]
    slope = k / (1.0 + k * ld)  # d log1p(k lam) / d lam
    mean[:, ~exact] = np.log1p(k * ld) - 0.5 * ld * slope**2
    var[:, ~exact] = ld * slope**2
    return mean, var


def counting_std(expected: np.ndarray, depth: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Standard deviation of a measured value whose expectation is ``expected``.

    Parameters
    ----------
    expected
        ``(n, G)`` expected log1p(normalize_total to ``target_sum``) values (non-negative).
    depth
        ``(n,)`` total counts of each spot (at least 1 is used).
    target_sum
        The normalisation's total.

    Returns
    -------
    numpy.ndarray
        ``(n, G)`` float32: the Poisson counting spread of the value a spot of that depth
        would measure; values beyond the tabulated range take its end.
    """
    expected = np.asarray(expected, np.float64)
    depth = np.maximum(np.asarray(depth, np.float64).reshape(-1), 1.0)
    if expected.ndim != 2 or len(depth) != len(expected):
        raise InputError(f"expected (n, G) values and (n,) depths, got {expected.shape} and {depth.shape}")
    out = np.zeros(expected.shape, np.float32)
    for start in range(0, len(depth), _BLOCK):
        rows = slice(start, start + _BLOCK)
        mean, var = _moments(float(target_sum) / depth[rows])
        for i, (m, v) in enumerate(zip(mean, var, strict=True)):
            out[start + i] = np.sqrt(np.interp(expected[start + i], m, v))
    return out
