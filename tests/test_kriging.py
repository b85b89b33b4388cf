"""Local kriging behind the conditioned model: weights, per-gene kernels, gene coupling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histosge.evaluation import knn_baseline
from napari_histosge.models import kriging as kr
from napari_histosge.models.neighbours import neighbour_context


def _lattice(n: int = 24) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(n), np.arange(n))
    return np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64) * 10.0  # spacing 10 px


def test_weights_solve_the_kriging_system() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 100, (40, 2))
    query = rng.uniform(20, 80, (3, 2))
    idx, geo, valid = neighbour_context(ref, query, 8, spacing=10.0)
    w = kr.kriging_weights(torch.from_numpy(geo), torch.from_numpy(valid)).numpy()
    assert w.shape == (3, 8, kr.N_CONFIGS)
    for c in (0, 7, kr.N_CONFIGS - 1):
        scale = kr.LENGTH_SCALES[c // len(kr.NOISE_RATIOS)]
        noise = kr.NOISE_RATIOS[c % len(kr.NOISE_RATIOS)]
        for q in range(3):
            pts = ref[idx[q]] / 10.0
            cov = np.exp(-np.linalg.norm(pts[:, None] - pts[None], axis=-1) / scale) + noise * np.eye(8)
            cross = np.exp(-np.linalg.norm(pts - query[q] / 10.0, axis=-1) / scale)
            np.testing.assert_allclose(w[q, :, c], np.linalg.solve(cov, cross), rtol=1e-4, atol=1e-6)


def test_padding_slots_get_no_weight() -> None:
    ref = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    _, geo, valid = neighbour_context(ref, np.array([[3.0, 4.0]]), 2, spacing=10.0)
    padded_geo = np.concatenate([geo, np.zeros((1, 2, geo.shape[2]), np.float32)], axis=1)
    padded_valid = np.concatenate([valid, np.zeros((1, 2), bool)], axis=1)
    w = kr.kriging_weights(torch.from_numpy(padded_geo), torch.from_numpy(padded_valid)).numpy()
    plain = kr.kriging_weights(torch.from_numpy(geo), torch.from_numpy(valid)).numpy()
    assert np.all(w[:, 2:] == 0)
    np.testing.assert_allclose(w[:, :2], plain, rtol=1e-5)


def test_krige_uses_each_columns_own_kernel() -> None:
    rng = np.random.default_rng(1)
    weights = torch.from_numpy(rng.random((5, 6, kr.N_CONFIGS)).astype(np.float32))
    values = torch.from_numpy(rng.normal(size=(5, 6, 4)).astype(np.float32))
    config = torch.tensor([3, 0, 3, 24])
    out = kr.krige(weights, values, config).numpy()
    for j, c in enumerate(config.tolist()):
        np.testing.assert_allclose(out[:, j], (weights[..., c] * values[..., j]).sum(1).numpy(), rtol=1e-5)


def test_each_gene_gets_a_kernel_that_suits_it() -> None:
    pos = _lattice()
    rng = np.random.default_rng(2)
    smooth = np.sin(pos[:, 0] / 40.0) + np.cos(pos[:, 1] / 55.0)
    noise = rng.normal(size=len(pos))
    y = np.stack([smooth, noise], 1)
    y = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
    fit = kr.fit_kriging(pos, y, k=16, spacing=10.0, rank=0)
    noise_of = lambda c: kr.NOISE_RATIOS[c % len(kr.NOISE_RATIOS)]  # noqa: E731
    assert noise_of(int(fit.gene_config[0])) <= 0.3  # a clean field is interpolated
    assert noise_of(int(fit.gene_config[1])) >= 30.0  # pure noise is shrunk to its mean
    assert fit.basis.shape == (2, 0)


def test_kriging_beats_six_nearest_neighbours_on_a_noisy_field() -> None:
    pos = _lattice(30)
    rng = np.random.default_rng(3)
    field = np.sin(pos[:, 0] / 45.0) * np.cos(pos[:, 1] / 60.0)
    y = np.stack([field + rng.normal(scale=s, size=len(pos)) for s in (0.1, 0.5, 1.0)], 1)
    train = rng.random(len(pos)) < 0.5
    mu, sd = y[train].mean(0), y[train].std(0)
    z = ((y[train] - mu) / sd).astype(np.float32)
    fit = kr.fit_kriging(pos[train], z, k=32, spacing=10.0, rank=0)
    idx, geo, valid = neighbour_context(pos[train], pos[~train], 32, spacing=10.0)
    w = kr.kriging_weights(torch.from_numpy(geo), torch.from_numpy(valid))
    est = kr.estimate(w, torch.from_numpy(z)[torch.from_numpy(idx)], torch.from_numpy(fit.gene_config),
                      torch.from_numpy(fit.basis), torch.from_numpy(fit.score_config)).numpy() * sd + mu
    knn = knn_baseline(pos[train], y[train], pos[~train], k=6)
    err_krig = np.square(est - field[~train, None]).mean(0)
    err_knn = np.square(knn - field[~train, None]).mean(0)
    assert np.all(err_krig < err_knn)


def test_genes_are_coupled_only_where_cross_validation_says_so() -> None:
    pos = _lattice(20)
    rng = np.random.default_rng(4)
    fields = np.stack([np.sin(pos[:, 0] / 30.0), np.cos(pos[:, 1] / 35.0)], 1)
    shared = fields @ rng.normal(size=(2, 60)) + rng.normal(scale=2.0, size=(len(pos), 60))
    independent = rng.normal(size=(len(pos), 60))
    for y, coupled in ((shared, True), (independent, False)):
        z = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
        fit = kr.fit_kriging(pos, z, k=16, spacing=10.0, rank=4)
        assert (fit.basis.shape[1] > 0) is coupled, fit.cv_error
        gain = 1 - fit.cv_error["with_coupling"] / fit.cv_error["without_coupling"]
        assert (gain > kr.COUPLING_MARGIN) is coupled
    assert kr.fit_kriging(pos, z, k=16, spacing=10.0, rank=0).basis.shape[1] == 0


@pytest.mark.parametrize("rank", [0, 3])
def test_estimate_is_exact_for_a_rank_preserving_identity(rank: int) -> None:
    """With every weight on one neighbour, the coupled and uncoupled estimates both return its values."""
    rng = np.random.default_rng(5)
    values = torch.from_numpy(rng.normal(size=(4, 3, 6)).astype(np.float32))
    weights = torch.zeros(4, 3, kr.N_CONFIGS)
    weights[:, 1, :] = 1.0
    basis = torch.from_numpy(np.linalg.qr(rng.normal(size=(6, rank)))[0].astype(np.float32)) if rank \
        else torch.zeros(6, 0)
    out = kr.estimate(weights, values, torch.arange(6) % kr.N_CONFIGS, basis, torch.zeros(rank, dtype=torch.long))
    np.testing.assert_allclose(out.numpy(), values[:, 1].numpy(), rtol=1e-5, atol=1e-5)


def test_large_sets_score_a_subset_of_spots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_SCORED spots the kernels are chosen on a random subset, with the same outcome here."""
    pos = _lattice(20)
    rng = np.random.default_rng(6)
    y = np.stack([np.sin(pos[:, 0] / 40.0) + 0.05 * rng.normal(size=len(pos)), rng.normal(size=len(pos))], 1)
    z = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
    full = kr.fit_kriging(pos, z, k=16, spacing=10.0, rank=1)
    monkeypatch.setattr(kr, "MAX_SCORED", 120)
    part = kr.fit_kriging(pos, z, k=16, spacing=10.0, rank=1)
    noise_of = lambda c: kr.NOISE_RATIOS[c % len(kr.NOISE_RATIOS)]  # noqa: E731
    for fit in (full, part):
        assert noise_of(int(fit.gene_config[0])) <= 0.3 and noise_of(int(fit.gene_config[1])) >= 30.0
    assert np.isfinite(list(part.cv_error.values())).all()
