"""The conditioned model's sequencing-depth term: slopes from Poisson counting, and what it adds."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.errors import InputError
from napari_histosge.models import train, train_config
from napari_histosge.models.conditioned.sequencing_depth import (
    MAX_MEAN_COUNTS,
    depth_slopes,
    standardise_depth,
)
from napari_histosge.progress import run_to_end
from napari_histosge.training.inputs import TrainingData

SMALL = dict(model="conditioned", dim=32, distill_dim=16, neighbours=12, batch_size=64, diffusion_steps=20,
             sample_steps=4, n_samples=2, device="cpu", epochs=1, histosge_weight=0.0, kriging_rank=0)


def _section(n_side: int = 30, seed: int = 0):
    """A square grid whose depth varies smoothly; sparse genes have a flat rate, so only the
    depth moves their values; common genes follow their own smooth pattern."""
    rng = np.random.default_rng(seed)
    ys, xs = np.divmod(np.arange(n_side * n_side), n_side)
    pos = np.c_[xs, ys].astype(float) * 100.0
    depth = 800.0 * np.exp(0.8 * np.sin(xs / 6.0) + 0.6 * np.cos(ys / 5.0))
    sparse = np.full(40, 2e-4)  # about 0.2 counts per spot
    common = 2e-2 * np.exp(0.5 * np.sin(xs[:, None] / 4.0 + np.arange(5)))
    rate = np.c_[np.broadcast_to(sparse, (len(pos), 40)), common]
    rate = rate / rate.sum(1, keepdims=True) * (sparse.sum() + common.mean(0).sum())
    other = depth * (1 - rate.sum(1))  # counts of the genes not modelled
    counts = rng.poisson(depth[:, None] * rate).astype(np.float64)
    totals = counts.sum(1) + rng.poisson(other)
    values = np.log1p(1e4 * counts / totals[:, None]).astype(np.float32)
    return pos, values, totals


def _hold_out_half(section, seed: int):
    """Hide half of a :func:`_section`'s spots: ``(values, features, rgb, positions, totals,
    hidden rows, TrainingData of the rest)``, with random image features."""
    pos, values, totals = section
    n, g = values.shape
    rows = np.arange(n)
    test = rows[(rows * 7) % 10 < 5]
    train_rows = np.setdiff1d(rows, test)
    rng = np.random.default_rng(seed)
    feats, rgb = rng.normal(size=(n, 4)).astype(np.float32), np.full((n, 3), 150.0, np.float32)
    data = TrainingData(feats[train_rows], rgb[train_rows], pos[train_rows], values[train_rows],
                        [f"s{i}" for i in train_rows], [f"G{j}" for j in range(g)], total_counts=totals[train_rows])
    return values, feats, rgb, pos, totals, test, data


def test_slopes_follow_poisson_counting():
    _, values, totals = _section()
    std = values.std(0)
    slopes = depth_slopes(values, totals, std)
    assert slopes.shape == (values.shape[1],) and slopes.dtype == np.float32
    assert np.all(slopes[:40] > 0.1)  # sparse genes: deeper spots count them more often
    mean_counts = (np.expm1(values).mean(0) / 1e4) * totals.mean()
    assert np.all(slopes[mean_counts >= MAX_MEAN_COUNTS] == 0)  # common genes: their kriging carries it
    # Every spot equally deep: nothing to add.
    assert np.all(depth_slopes(values, np.full(len(totals), 1000.0), std) == 0)
    z = standardise_depth(totals)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    assert np.all(standardise_depth(np.zeros(5)) == 0)  # empty spots stay finite


@pytest.mark.slow
def test_the_depth_term_lifts_sparse_genes_on_hidden_spots():
    values, feats, rgb, pos, _, test, data = _hold_out_half(_section(), seed=1)
    g = values.shape[1]

    def held_out_pcc(model):
        pred = model.predict(feats[test], rgb[test], pos[test])
        return np.array([np.corrcoef(pred[:, j], values[test, j])[0, 1] if pred[:, j].std() > 0 else 0.0
                         for j in range(g)])

    on = run_to_end(train(data, train_config(**SMALL)))
    off = run_to_end(train(data, train_config(**{**SMALL, "depth_term": False})))
    assert on.meta.depth_term["genes"] == 40 and off.meta.depth_term is None
    with_term, without = held_out_pcc(on), held_out_pcc(off)
    assert with_term[:40].mean() > without[:40].mean() + 0.05
    assert with_term[40:].mean() == pytest.approx(without[40:].mean(), abs=0.02)  # slope 0 there
    # Without the spots' totals the term cannot be built, and the model says nothing about it.
    no_totals = run_to_end(train(TrainingData(data.features, data.mean_rgb, data.positions, data.targets,
                                              data.spot_ids, data.genes), train_config(**SMALL)))
    assert no_totals.meta.depth_term is None and not no_totals.model.use_depth


@pytest.mark.parametrize("totals", [np.full(3, np.nan), -np.ones(4), np.ones(5)])
def test_bad_total_counts(totals):
    with pytest.raises(InputError, match="total_counts"):
        TrainingData(np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((4, 2)), np.zeros((4, 1)),
                     list("abcd"), ["g"], total_counts=totals[:4] if len(totals) != 5 else totals)


@pytest.mark.slow
def test_spread_adds_counting_noise_at_the_kriged_depth():
    """The conditioned model's spread is that of a measurement: the generator's spread of the
    expected value plus Poisson counting noise, which on counted data tracks the error."""
    from napari_histosge.evaluation.uncertainty import uncertainty_metrics

    values, feats, rgb, pos, _, test, data = _hold_out_half(_section(seed=2), seed=3)
    model = run_to_end(train(data, train_config(**SMALL)))
    ell = np.log(data.total_counts)
    assert model.meta.depth_term["log_mean"] == pytest.approx(ell.mean(), rel=1e-6)
    assert model.meta.depth_term["log_sd"] == pytest.approx(ell.std(), rel=1e-6)
    pred, spread = model.predict(feats[test], rgb[test], pos[test], return_std=True)
    pred_alone, generator = model.predict(feats[test], rgb[test], pos[test], return_std=True, counting_noise=False)
    np.testing.assert_array_equal(pred, pred_alone)  # the point prediction does not change
    assert np.all(spread >= generator - 1e-6) and spread[:, :40].mean() > 3 * generator[:, :40].mean()
    with_counting = uncertainty_metrics(values[test], pred, spread)
    without = uncertainty_metrics(values[test], pred, generator)
    assert 0.6 < with_counting["error_to_spread"] < 1.6 < without["error_to_spread"]
    assert with_counting["gene_rank_corr"] > without["gene_rank_corr"] + 0.2
    assert with_counting["spot_rank_corr"] > without["spot_rank_corr"] + 0.1
    # A checkpoint saved before the counting noise existed (no depth scale) spreads as before.
    del model.meta.depth_term["log_mean"]
    np.testing.assert_array_equal(model.predict(feats[test], rgb[test], pos[test], return_std=True)[1], generator)
