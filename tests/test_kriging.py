"""Local kriging behind the conditioned model: weights, per-gene kernels and estimators, the image trend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histosge.errors import InputError
from napari_histosge.evaluation.metrics import knn_baseline
from napari_histosge.models.conditioned import kriging as kr
from napari_histosge.models.conditioned import kriging_fit as kf
from napari_histosge.models.conditioned.image_trend import fit_image_trend
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
    fit = kf.fit_kriging(pos, y, k=16, spacing=10.0, rank=0)
    noise_of = lambda c: kr.NOISE_RATIOS[c % len(kr.NOISE_RATIOS)]  # noqa: E731
    assert noise_of(int(fit.plain_config[0])) <= 0.3  # a clean field is interpolated
    assert noise_of(int(fit.plain_config[1])) >= 30.0  # pure noise is shrunk to its mean
    assert fit.basis.shape == (2, 0) and np.all(fit.choice == kr.PLAIN) and fit.trend is None


def _estimate(fit: kf.KrigingFit, ref: np.ndarray, z: np.ndarray, query: np.ndarray, k: int,
              image: np.ndarray | None = None, query_image: np.ndarray | None = None) -> np.ndarray:
    idx, geo, valid = neighbour_context(ref, query, k, spacing=10.0)
    w = kr.kriging_weights(torch.from_numpy(geo), torch.from_numpy(valid))
    r = fit.basis.shape[1]
    nb_drift = torch.from_numpy(fit.drift(image) if image is not None else np.zeros((len(ref), r), np.float32))
    q_drift = torch.from_numpy(fit.drift(query_image) if query_image is not None else np.zeros((len(query), r),
                                                                                                   np.float32))
    return kr.estimate(w, torch.from_numpy(z)[torch.from_numpy(idx)], fit.plan(), nb_drift[torch.from_numpy(idx)],
                       q_drift).numpy()


def test_kriging_beats_six_nearest_neighbours_on_a_noisy_field() -> None:
    pos = _lattice(30)
    rng = np.random.default_rng(3)
    field = np.sin(pos[:, 0] / 45.0) * np.cos(pos[:, 1] / 60.0)
    y = np.stack([field + rng.normal(scale=s, size=len(pos)) for s in (0.1, 0.5, 1.0)], 1)
    train = rng.random(len(pos)) < 0.5
    mu, sd = y[train].mean(0), y[train].std(0)
    z = ((y[train] - mu) / sd).astype(np.float32)
    fit = kf.fit_kriging(pos[train], z, k=32, spacing=10.0, rank=0)
    est = _estimate(fit, pos[train], z, pos[~train], 32) * sd + mu
    knn = knn_baseline(pos[train], y[train], pos[~train], k=6)
    err_krig = np.square(est - field[~train, None]).mean(0)
    err_knn = np.square(knn - field[~train, None]).mean(0)
    assert np.all(err_krig < err_knn)


def _three_kinds_of_gene(rng: np.random.Generator, pos: np.ndarray):
    """Genes driven by what the image shows, genes sharing one noisy smooth field, and the image inputs."""
    n = len(pos)
    tissue = rng.normal(size=n)  # what the image shows at each spot: no spatial structure to krige
    field = np.sin(pos[:, 0] / 30.0) + np.cos(pos[:, 1] / 35.0)
    seen = tissue[:, None] * rng.uniform(1, 2, (1, 30)) + rng.normal(scale=1.0, size=(n, 30))
    shared = field[:, None] * rng.uniform(0.5, 1, (1, 30)) + rng.normal(scale=2.0, size=(n, 30))
    y = np.concatenate([seen, shared], 1)
    y = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
    image = np.stack([tissue, rng.normal(size=n), *rng.normal(size=(3, n))], 1)  # 2 features + RGB
    return y, ((image - image.mean(0)) / image.std(0)).astype(np.float32)


@pytest.mark.slow
def test_each_gene_takes_the_estimator_that_cross_validates_best() -> None:
    pos = _lattice(20)
    y, image = _three_kinds_of_gene(np.random.default_rng(4), pos)
    fit = kf.fit_kriging(pos, y, k=16, spacing=10.0, rank=4, image=image, n_features=2)
    assert fit.trend is not None and set(fit.cv_pcc) == {"plain", "coupled", "drift"}
    assert np.mean(fit.choice[:30] == kr.DRIFT) > 0.8  # only the image can predict these
    assert np.mean(fit.choice[30:] != kr.PLAIN) > 0.8  # these borrow strength from each other
    assert abs(sum(fit.share.values()) - 1) < 1e-9
    no_image = kf.fit_kriging(pos, y, k=16, spacing=10.0, rank=4)
    assert no_image.trend is None and kr.DRIFT not in no_image.choice and "drift" not in no_image.cv_pcc
    constant = kf.fit_kriging(pos, y, k=16, spacing=10.0, rank=4, image=np.zeros_like(image), n_features=2)
    assert constant.trend is None
    assert np.all(kf.fit_kriging(pos, y, k=16, spacing=10.0, rank=0, image=image, n_features=2).choice == kr.PLAIN)


@pytest.mark.slow
def test_the_image_trend_predicts_held_out_spots() -> None:
    pos = _lattice(20)
    rng = np.random.default_rng(7)
    y, image = _three_kinds_of_gene(rng, pos)
    train = rng.random(len(pos)) < 0.5
    fit = kf.fit_kriging(pos[train], y[train], k=16, spacing=10.0, rank=4, image=image[train], n_features=2)
    with_image = _estimate(fit, pos[train], y[train], pos[~train], 16, image[train], image[~train])
    without = _estimate(fit, pos[train], y[train], pos[~train], 16)  # drift genes without the query's image
    corr = [np.corrcoef(p[:, g], y[~train, g])[0, 1] for p in (with_image, without) for g in range(30)]
    assert np.mean(corr[:30]) > 0.4 > np.mean(corr[30:]) + 0.2


@pytest.mark.parametrize("rank", [0, 3])
def test_estimate_is_exact_for_a_rank_preserving_identity(rank: int) -> None:
    """With every weight on one neighbour, every estimator returns its values (plus the drift's change)."""
    rng = np.random.default_rng(5)
    values = torch.from_numpy(rng.normal(size=(4, 3, 6)).astype(np.float32))
    weights = torch.zeros(4, 3, kr.N_CONFIGS)
    weights[:, 1, :] = 1.0
    basis = torch.from_numpy(np.linalg.qr(rng.normal(size=(6, rank)))[0].astype(np.float32)) if rank \
        else torch.zeros(6, 0)
    nb_drift = torch.from_numpy(rng.normal(size=(4, 3, rank)).astype(np.float32))
    q_drift = torch.from_numpy(rng.normal(size=(4, rank)).astype(np.float32))
    configs = torch.arange(6) % kr.N_CONFIGS
    for choice in ([kr.PLAIN] * 6, [kr.PLAIN, kr.COUPLED, kr.DRIFT] * 2 if rank else [kr.PLAIN] * 6):
        choice = torch.tensor(choice)
        plan = kr.KrigingPlan(configs, configs.flip(0), basis, torch.arange(rank), torch.arange(rank) + 2, choice)
        out = kr.estimate(weights, values, plan, nb_drift, q_drift).numpy()
        expect = values[:, 1].numpy().copy()
        drift = (choice == kr.DRIFT).numpy()
        expect[:, drift] += ((q_drift - nb_drift[:, 1]) @ basis.T).numpy()[:, drift]
        np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


def test_drift_genes_without_an_image_trend_are_refused() -> None:
    rng = np.random.default_rng(9)
    values = torch.from_numpy(rng.normal(size=(2, 3, 4)).astype(np.float32))
    weights = torch.full((2, 3, kr.N_CONFIGS), 1.0 / 3)
    basis = torch.from_numpy(np.linalg.qr(rng.normal(size=(4, 2)))[0].astype(np.float32))
    configs = torch.zeros(4, dtype=torch.long)
    coupled = kr.KrigingPlan(configs, configs, basis, torch.zeros(2, dtype=torch.long),
                             torch.zeros(2, dtype=torch.long), torch.tensor([kr.PLAIN, kr.COUPLED] * 2))
    assert kr.estimate(weights, values, coupled, None, None).shape == (2, 4)  # no drift gene: none needed
    drift = coupled._replace(choice=torch.tensor([kr.PLAIN, kr.DRIFT] * 2))
    with pytest.raises(InputError, match="drift genes"):
        kr.estimate(weights, values, drift, None, None)
    with pytest.raises(InputError, match="drift genes"):
        kr.estimate(weights, values, drift, torch.zeros(2, 3, 2), None)


@pytest.mark.slow
def test_large_sets_score_a_subset_of_spots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_SCORED spots the kernels are chosen on a random subset, with the same outcome here."""
    pos = _lattice(20)
    rng = np.random.default_rng(6)
    y = np.stack([np.sin(pos[:, 0] / 40.0) + 0.05 * rng.normal(size=len(pos)), rng.normal(size=len(pos))], 1)
    z = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
    full = kf.fit_kriging(pos, z, k=16, spacing=10.0, rank=1)
    monkeypatch.setattr(kf, "MAX_SCORED", 120)
    part = kf.fit_kriging(pos, z, k=16, spacing=10.0, rank=1)
    noise_of = lambda c: kr.NOISE_RATIOS[c % len(kr.NOISE_RATIOS)]  # noqa: E731
    for fit in (full, part):
        # a clean field is interpolated, noise shrunk (120 noisy spots cannot pin the nugget closer)
        assert noise_of(int(fit.plain_config[0])) <= 0.3 and noise_of(int(fit.plain_config[1])) >= 3.0
    assert np.isfinite(list(part.cv_pcc.values())).all()


def test_image_trend_recovers_a_linear_map_and_skips_a_blank_image() -> None:
    rng = np.random.default_rng(8)
    image = rng.normal(size=(200, 7)).astype(np.float32)  # 4 features + RGB
    scores = image[:, [0, 5]] @ np.array([[1.0, -0.5], [2.0, 1.0]]) + 3.0
    trend = fit_image_trend(image, scores, 4, ridge=1e-4)
    np.testing.assert_allclose(trend(image), scores, atol=0.05)
    assert fit_image_trend(np.zeros_like(image), scores, 4) is None
    assert fit_image_trend(image, scores[:, :0], 4) is None
