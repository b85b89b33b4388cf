"""Poisson counting noise on the log1p(normalize_total) scale, against simulation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.errors import InputError
from napari_histosge.models.conditioned.counting_noise import counting_std


@pytest.mark.parametrize("depth", [300.0, 3000.0, 20000.0])
def test_counting_std_matches_simulated_measurements(depth: float) -> None:
    rng = np.random.default_rng(0)
    lams = [0.05, 0.5, 3.0, 25.0, 100.0, 2000.0]  # sparse genes to very common ones
    draws = [np.log1p(1e4 * rng.poisson(lam, 200_000) / depth) for lam in lams]
    expected = np.array([[d.mean() for d in draws]])
    simulated = np.array([d.std() for d in draws])
    got = counting_std(expected, np.array([depth]))[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, simulated, rtol=0.02)


def test_counting_std_shape_range_and_shallow_spots() -> None:
    expected = np.array([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]])
    spread = counting_std(expected, np.array([500.0, 50_000.0]))
    assert spread.shape == (2, 3) and np.all(spread >= 0) and np.all(spread[:, 0] < 0.05)
    assert np.all(spread[0, 1:] > spread[1, 1:])  # the same expected value is noisier at a shallow spot
    beyond = counting_std(np.array([[1e3]]), np.array([1000.0]))  # off the table: its end, finite
    assert np.isfinite(beyond).all()
    with pytest.raises(InputError, match=r"\(n, G\)"):
        counting_std(np.zeros((3, 2)), np.ones(2))
