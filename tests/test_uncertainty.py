"""Scores for a prediction's spread (the uncertainty layer) against its actual error."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.errors import InputError
from napari_histosge.evaluation.uncertainty import format_uncertainty, uncertainty_metrics


def _noisy(spread: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Truth drawn around a prediction with exactly ``spread`` as its standard deviation."""
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=spread.shape)
    return pred + rng.normal(size=spread.shape) * spread, pred


def test_calibrated_spread_scores_as_calibrated() -> None:
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.1, 2.0, size=(4000, 5))
    truth, pred = _noisy(spread)
    u = uncertainty_metrics(truth, pred, spread)
    assert u["coverage_1sd"] == pytest.approx(0.683, abs=0.02)
    assert u["coverage_2sd"] == pytest.approx(0.954, abs=0.01)
    assert u["error_to_spread"] == pytest.approx(1.0, abs=0.05)
    assert u["gene_rank_corr"] > 0.3 and u["n_genes_ranked"] == 5
    assert u["spot_rank_corr"] > 0.3


def test_spots_are_ranked_by_rms_error_not_mean_absolute_error() -> None:
    """Sparse counts: a spot where a gene reads 0 mostly and sometimes jumps far has a wide
    spread but a small mean absolute error. Its spread is still right (its RMS error matches),
    so the spots must rank by RMS error: by mean |error| this calibrated spread ranks them
    backwards, as it did on a real her2st section."""
    rng = np.random.default_rng(3)
    n, g, p = 400, 500, 0.05
    spread = np.where(np.arange(n)[:, None] % 2 == 0, 2.0, 1.0) * np.ones((n, g))
    jump = rng.random((n, g)) < p  # sparse spots: error 0 or +-2/sqrt(p), RMS 2
    sparse = np.where(jump, rng.choice([-1.0, 1.0], size=(n, g)) * 2.0 / np.sqrt(p), 0.0)
    err = np.where(spread == 2.0, sparse, rng.normal(size=(n, g)))
    pred = np.zeros((n, g))
    mean_abs = np.abs(err).mean(axis=1)
    assert np.corrcoef(spread.mean(axis=1), mean_abs)[0, 1] < -0.5  # the backwards ranking
    u = uncertainty_metrics(err, pred, spread)
    assert u["spot_rank_corr"] > 0.5
    assert u["error_to_spread"] == pytest.approx(1.0, abs=0.1)


def test_uninformative_and_too_narrow_spreads() -> None:
    rng = np.random.default_rng(2)
    truth, pred = _noisy(rng.uniform(0.1, 2.0, size=(4000, 5)))
    shuffled = rng.uniform(0.1, 2.0, size=(4000, 5))  # unrelated to where the error is
    u = uncertainty_metrics(truth, pred, shuffled)
    assert abs(u["gene_rank_corr"]) < 0.05 and abs(u["spot_rank_corr"]) < 0.05
    narrow = uncertainty_metrics(truth, pred, np.full((4000, 5), 0.01))
    assert narrow["error_to_spread"] > 50 and narrow["coverage_2sd"] < 0.05
    assert narrow["n_genes_ranked"] == 0 and np.isnan(narrow["gene_rank_corr"])  # a constant spread ranks nothing


def test_zero_spread_and_exact_predictions() -> None:
    truth = np.arange(12.0).reshape(6, 2)
    u = uncertainty_metrics(truth, truth, np.zeros_like(truth))
    assert u["coverage_1sd"] == 1.0 and u["mean_abs_error"] == 0.0
    assert u["error_to_spread"] == float("inf")
    assert "rank corr per gene nan" in format_uncertainty(u)


@pytest.mark.parametrize(
    "shapes, spread_value, match",
    [
        (((5, 3), (5, 3), (5, 2)), 1.0, "one shape"),
        (((5,), (5,), (5,)), 1.0, "2-D"),
        (((1, 3), (1, 3), (1, 3)), 1.0, "at least 2 spots"),
        (((5, 3), (5, 3), (5, 3)), -1.0, "non-negative"),
        (((5, 3), (5, 3), (5, 3)), np.nan, "finite"),
    ],
)
def test_bad_input(shapes, spread_value, match) -> None:
    t, p, s = (np.zeros(shape) for shape in shapes)
    with pytest.raises(InputError, match=match):
        uncertainty_metrics(t, p, s + spread_value)
