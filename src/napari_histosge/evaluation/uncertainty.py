"""Does a prediction's spread say where it is wrong? Scores for the uncertainty layer.

A sampling model (the conditioned model) writes a per-spot, per-gene spread next to
its prediction (``layers["std"]``). A spread is only worth showing if it is larger where the
prediction is further off, so these scores compare it with the actual error on spots whose
expression was measured but hidden from training (the recovery protocol):

- ``gene_rank_corr``: per gene, the Spearman correlation over spots between the spread and
  the absolute error, averaged over genes (0: the map of the spread says nothing about where
  the gene is mispredicted);
- ``spot_rank_corr``: the same between each spot's root-mean-square spread and its
  root-mean-square error over genes (which spots to trust least). A spread is a standard
  deviation, so it predicts the RMS error; the mean absolute error of sparse genes mostly
  counts how many of them a spot detected (on a deeply sequenced section it grows with the
  depth while the counting noise shrinks), and ranked the spots of one real section backwards
  (docs/benchmarks.md, "Uncertainty");
- ``coverage_1sd`` / ``coverage_2sd``: the share of values within 1 / 2 spreads of the
  prediction (about 0.68 / 0.95 for a well-scaled Gaussian spread);
- ``error_to_spread``: root-mean-square error over root-mean-square spread (1 when the spread
  has the error's size, above 1 when it is too narrow).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..errors import InputError


def _mean_rank_corr(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Mean over columns of the Spearman correlation of ``a`` and ``b``.

    Columns where either is constant carry no ranking and are left out. Returns
    ``(mean, columns used)``.
    """
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    den = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    ok = den > 0
    if not ok.any():
        return float("nan"), 0
    corr = (ra[:, ok] * rb[:, ok]).sum(axis=0) / den[ok]
    return float(corr.mean()), int(ok.sum())


def uncertainty_metrics(y_true: Any, y_pred: Any, y_std: Any) -> dict[str, float | int]:
    """Score a predicted spread against the actual error on measured spots.

    Parameters
    ----------
    y_true, y_pred, y_std
        ``(n_spots, n_genes)`` arrays: measured values, predictions and the predictions'
        spread (standard deviation over samples), on the same scale.

    Returns
    -------
    dict
        ``gene_rank_corr`` and ``n_genes_ranked`` (genes whose spread and error both vary),
        ``spot_rank_corr``, ``coverage_1sd``, ``coverage_2sd``, ``error_to_spread``,
        ``mean_spread``, ``mean_abs_error``; see the module docstring.

    Raises
    ------
    InputError
        Shapes differ or are not 2-D, fewer than 2 spots, a negative or non-finite spread.
    """
    t, p, s = (np.asarray(a, np.float64) for a in (y_true, y_pred, y_std))
    if t.ndim != 2 or t.shape != p.shape or t.shape != s.shape:
        raise InputError(f"y_true, y_pred and y_std must be 2-D arrays of one shape, got {t.shape}, "
                         f"{p.shape} and {s.shape}")
    if t.shape[0] < 2:
        raise InputError(f"need at least 2 spots to score a spread, got {t.shape[0]}")
    if not np.all(np.isfinite(s)) or (s < 0).any():
        raise InputError("the spread (std) must be finite and non-negative")
    err = np.abs(t - p)
    gene_corr, n_ranked = _mean_rank_corr(s, err)
    # Per spot, RMS over genes: a spread is a standard deviation, so it predicts the RMS error.
    spot_spread = np.sqrt(np.mean(s**2, axis=1, keepdims=True))
    spot_error = np.sqrt(np.mean(err**2, axis=1, keepdims=True))
    spot_corr, _ = _mean_rank_corr(spot_spread, spot_error)
    rms_spread = float(np.sqrt(np.mean(spot_spread**2)))
    rms_error = float(np.sqrt(np.mean(spot_error**2)))
    return {
        "gene_rank_corr": gene_corr,
        "n_genes_ranked": n_ranked,
        "spot_rank_corr": spot_corr,
        "coverage_1sd": float(np.mean(err <= s)),
        "coverage_2sd": float(np.mean(err <= 2 * s)),
        "error_to_spread": rms_error / rms_spread if rms_spread > 0 else float("inf"),
        "mean_spread": float(s.mean()),
        "mean_abs_error": float(err.mean()),
    }


def format_uncertainty(u: dict[str, float | int]) -> str:
    """One line for the CLI: how far the spread follows the error, and its scale."""
    return (f"spread (std) vs error: rank corr per gene {u['gene_rank_corr']:.3f} "
            f"({u['n_genes_ranked']} genes), per spot {u['spot_rank_corr']:.3f}; within 1/2 spreads "
            f"{u['coverage_1sd']:.0%}/{u['coverage_2sd']:.0%}; RMS error / RMS spread {u['error_to_spread']:.2f}")
