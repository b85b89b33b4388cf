"""The end-to-end pipeline steps on the generated demo section."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig
from napari_histosge.io import read_spots
from napari_histosge.models import load_model, train_config
from napari_histosge.pipeline.recovery import recover
from napari_histosge.pipeline.steps import NO_IMAGE, fit, spot_features, superresolve
from napari_histosge.progress import run_to_end

FAST = dict(epochs=4, n_top_genes=15, head_hidden=64, dim=32, checkpoint_every=4)


@pytest.mark.slow
def test_recover_never_sees_hidden_counts(demo) -> None:
    """Changing the hidden spots' counts must not change any prediction."""
    config = train_config(**FAST)
    first = run_to_end(recover(demo, holdout=0.5, seed=3, train_config=config))
    altered = demo.copy()
    rows = altered.obs_names.get_indexer(first.test_ids)
    dense = altered.X.toarray()
    dense[rows] = np.random.default_rng(0).poisson(50, size=(len(rows), altered.n_vars))
    altered.X = type(demo.X)(dense.astype(np.float32))
    second = run_to_end(recover(altered, holdout=0.5, seed=3, train_config=config))
    assert first.test_ids == second.test_ids and first.genes == second.genes
    np.testing.assert_array_equal(np.asarray(first.predictions.X), np.asarray(second.predictions.X))
    # ... while the scores (against the altered truth) do change: the check can fail
    assert not np.allclose(first.metrics["mse"], second.metrics["mse"])


def test_recover_scores_hidden_spots_and_reports_all_spots_separately(demo) -> None:
    result = run_to_end(recover(demo, holdout=0.4, seed=0, train_config=train_config(**FAST)))
    assert list(result.predictions.obs_names) == result.test_ids
    assert set(result.test_ids).isdisjoint(result.train_ids)
    summary = result.summary()
    assert summary["n_test"] == len(result.test_ids)
    assert set(result.scored_genes) <= set(result.genes)
    assert set(result.top_mean_genes) <= set(result.genes)
    assert summary["model_all_spots_incl_training"]["n_genes"] == len(result.scored_genes)


@pytest.mark.slow
def test_superresolve_fold_positions_and_checkpoint(demo, tmp_path: Path) -> None:
    model = run_to_end(fit(demo, train_config=train_config(**FAST), checkpoint_path=tmp_path / "m.pt"))
    loaded = load_model(tmp_path / "m.pt")
    sr = run_to_end(superresolve(loaded, demo, 9))
    assert sr.n_obs == 9 * demo.n_obs
    assert list(sr.var_names) == model.genes
    assert sr.uns["histosge"]["fold"] == 9
    # every new position lies within one measured spacing of its parent spot
    parent_xy = demo[sr.obs["parent"].astype(str)].obsm["spatial"]
    spacing = np.median(np.diff(np.unique(demo.obsm["spatial"][:, 0].round(-1))))
    assert np.all(np.linalg.norm(sr.obsm["spatial"] - parent_xy, axis=1) < spacing)
    with pytest.raises(InputError, match="2"):
        run_to_end(superresolve(loaded, demo, 1))


@pytest.mark.slow
def test_features_off_ablation_has_no_image_input(demo) -> None:
    feats = run_to_end(spot_features(demo, FeatureConfig(extractor=NO_IMAGE)))
    assert feats.features.shape == (demo.n_obs, 0)
    model = run_to_end(fit(demo, train_config=train_config(**FAST), feature_config=FeatureConfig(extractor=NO_IMAGE)))
    sr = run_to_end(superresolve(model, demo, 4))
    assert sr.n_obs == 4 * demo.n_obs


@pytest.mark.slow
def test_distributed_features_identical(demo) -> None:
    distributed = pytest.importorskip("distributed")
    local = run_to_end(spot_features(demo, FeatureConfig(cache=False)))
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        remote = run_to_end(spot_features(demo, FeatureConfig(cache=False), scheduler=client))
    np.testing.assert_array_equal(local.features, remote.features)
    np.testing.assert_array_equal(local.mean_rgb, remote.mean_rgb)


@pytest.mark.slow
def test_bad_scheduler_address(demo) -> None:
    with pytest.raises(InputError, match="scheduler"):
        run_to_end(spot_features(demo, FeatureConfig(cache=False), scheduler="tcp://127.0.0.1:1"))


@pytest.mark.slow
def test_low_resolution_image_warns(demo_dir) -> None:
    """A spot only a few image pixels wide: the user is told image features will say little."""
    from napari_histosge.pipeline.steps import image_pixels_per_spot, warn_if_low_resolution

    adata = read_spots(demo_dir)
    assert image_pixels_per_spot(adata) > 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_low_resolution(adata)  # a full-resolution image: silent
    adata.uns["histosge"]["spot_diameter_px"] = 6.0
    with pytest.warns(UserWarning, match="only 6 px across a spot"):
        warn_if_low_resolution(adata)
