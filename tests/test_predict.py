"""Predicting at measured spots, at given positions and on a section the model never saw."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig
from napari_histosge.io import read_spots
from napari_histosge.models import load_model, train_config
from napari_histosge.pipeline.placement import (
    OWN_BOX,
    TRAINING_BOX,
    default_diameter,
    is_training_section,
    patch_geometry,
    position_frame,
)
from napari_histosge.pipeline.steps import NO_IMAGE, features_at, fit, predict_spots, superresolve
from napari_histosge.progress import run_to_end
from napari_histosge.training.trained_model import TrainedModel

#: Every spot trains (no validation split), so the training box is the section's spot box.
FAST = dict(epochs=3, n_top_genes=10, head_hidden=32, dim=32, val_fraction=0.0)
SHIFT = np.array([400.0, 250.0])  # whole pixels: the shifted image holds the very same patches


@pytest.fixture(scope="module")
def model(demo) -> TrainedModel:
    return run_to_end(fit(demo, train_config=train_config(**FAST)))


def write_shifted_copy(adata, folder: Path) -> Path:
    """The section moved by :data:`SHIFT` on a larger canvas, as an ``.h5ad`` plus a lossless PNG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    image = np.asarray(Image.open(adata.uns["histosge"]["images"]["fullres"]["path"]).convert("RGB"))
    dx, dy = SHIFT.astype(int)
    canvas = np.full((image.shape[0] + dy + 50, image.shape[1] + dx + 50, 3), 245, np.uint8)
    canvas[dy:dy + image.shape[0], dx:dx + image.shape[1]] = image
    Image.fromarray(canvas).save(folder / "moved.png")
    moved = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names.copy()),
                       var=pd.DataFrame(index=adata.var_names.copy()))
    moved.obsm["spatial"] = np.asarray(adata.obsm["spatial"], np.float64) + SHIFT
    diameter = adata.uns["histosge"]["spot_diameter_px"]
    moved.uns["spatial"] = {"moved": {"scalefactors": {"spot_diameter_fullres": diameter}}}
    moved.write_h5ad(folder / "moved.h5ad")
    return folder / "moved.h5ad"


# ----------------------------------------------------------------------------- library
@pytest.mark.slow
def test_measured_spots_keep_the_training_box(model, demo) -> None:
    pred = run_to_end(predict_spots(model, demo))
    assert list(pred.obs_names) == list(demo.obs_names) and list(pred.var_names) == model.genes
    np.testing.assert_array_equal(pred.obsm["spatial"], demo.obsm["spatial"])
    assert is_training_section(model, demo) and position_frame(model, demo) is None
    info = pred.uns["histosge"]
    assert info["position_frame"] == TRAINING_BOX and info["fold"] == 1 and info["positions"] == "measured spots"
    assert info["spot_diameter_px"] == demo.uns["histosge"]["spot_diameter_px"]
    assert info["trained_on"] == info["source"] == demo.uns["histosge"]["source"]


@pytest.mark.slow
def test_positions_in_any_order_are_named_and_kept_in_order(model, demo) -> None:
    at_spots = run_to_end(predict_spots(model, demo))
    order = np.random.default_rng(1).permutation(demo.n_obs)
    ids = [f"p{i}" for i in order]
    pred = run_to_end(predict_spots(model, demo, positions=demo.obsm["spatial"][order], position_ids=ids))
    assert list(pred.obs_names) == ids and pred.uns["histosge"]["positions"] == "given"
    np.testing.assert_array_equal(pred.obsm["spatial"], demo.obsm["spatial"][order])
    # the same positions, only reordered: the same prediction for each
    np.testing.assert_allclose(np.asarray(pred.X), np.asarray(at_spots.X)[order], atol=1e-5)


@pytest.mark.slow
def test_diameter_sets_the_patch_as_in_training(model, demo) -> None:
    d = demo.uns["histosge"]["spot_diameter_px"]
    assert default_diameter(model, demo) == d
    assert patch_geometry(model, demo) == (model.meta.patch_size_px, model.meta.center_fraction)
    fraction = FeatureConfig().patch_spot_fraction
    patch, centre = patch_geometry(model, demo, 2 * d)
    assert patch == pytest.approx(fraction * 2 * d) and centre == pytest.approx(1 / fraction)
    wide = run_to_end(predict_spots(model, demo, diameter=2 * d))
    normal = run_to_end(predict_spots(model, demo))
    assert wide.uns["histosge"]["spot_diameter_px"] == 2 * d
    assert not np.allclose(np.asarray(wide.X), np.asarray(normal.X))  # other patches, other features
    for bad in (0.0, -3.0, float("nan")):
        with pytest.raises(InputError, match="diameter"):
            run_to_end(predict_spots(model, demo, diameter=bad))


def test_default_diameter_keeps_the_physical_size_on_another_pixel_size(model, demo) -> None:
    finer = demo.copy()
    finer.uns["histosge"] = {**demo.uns["histosge"], "source": "elsewhere", "mpp": demo.uns["histosge"]["mpp"] / 2}
    finer.obsm["spatial"] = demo.obsm["spatial"] * 2
    assert not is_training_section(model, finer)
    assert default_diameter(model, finer) == pytest.approx(2 * model.meta.spot_diameter_px)


@pytest.mark.slow
def test_unseen_section_is_scaled_by_its_own_box(model, demo, tmp_path: Path) -> None:
    path = write_shifted_copy(demo, tmp_path / "moved")
    moved = read_spots(path, image=path.parent / "moved.png")
    assert not is_training_section(model, moved)
    pred = run_to_end(predict_spots(model, moved))
    assert pred.uns["histosge"]["position_frame"] == OWN_BOX
    original = run_to_end(predict_spots(model, demo))
    # the same tissue at other pixel coordinates: the same predictions
    np.testing.assert_allclose(np.asarray(pred.X), np.asarray(original.X), atol=1e-4)
    # ... which the training box would not give (the shifted positions fall outside it)
    f = run_to_end(features_at(model, moved, moved.obsm["spatial"]))
    in_training_box = model.predict(f.features, f.mean_rgb, moved.obsm["spatial"])
    assert not np.allclose(in_training_box, np.asarray(original.X), atol=1e-2)
    # super-resolution follows the same rule
    moved_sr, original_sr = run_to_end(superresolve(model, moved, 2)), run_to_end(superresolve(model, demo, 2))
    assert moved_sr.uns["histosge"]["position_frame"] == OWN_BOX
    assert original_sr.uns["histosge"]["position_frame"] == TRAINING_BOX
    np.testing.assert_allclose(moved_sr.obsm["spatial"] - SHIFT, original_sr.obsm["spatial"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(moved_sr.X), np.asarray(original_sr.X), atol=1e-4)


def test_bad_positions_and_mixed_requests(model, demo) -> None:
    with pytest.raises(InputError, match="NaN or infinite"):
        run_to_end(predict_spots(model, demo, positions=np.array([[1.0, np.nan]])))
    with pytest.raises(InputError, match="unique"):
        run_to_end(predict_spots(model, demo, positions=np.zeros((2, 2)) + 300, position_ids=["a", "a"]))
    with pytest.raises(InputError, match="not both"):
        run_to_end(predict_spots(model, demo, positions=np.zeros((1, 2)) + 300, spot_ids=[demo.obs_names[0]]))
    with pytest.raises(InputError, match="no positions"):
        run_to_end(predict_spots(model, demo, positions=np.zeros((0, 2))))


@pytest.mark.slow
def test_second_generated_section_without_image_features(demo, demo_section) -> None:
    positions_only = run_to_end(fit(demo, train_config=train_config(**FAST),
                                    feature_config=FeatureConfig(extractor=NO_IMAGE)))
    other = read_spots(demo_section(1))
    pred = run_to_end(predict_spots(positions_only, other))
    assert pred.uns["histosge"]["position_frame"] == OWN_BOX and pred.n_obs == other.n_obs
    assert np.isfinite(np.asarray(pred.X)).all()


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def model_path(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.pt"
    assert main(["train", str(demo_dir), "--out", str(path), "--epochs", "2", "--n-genes", "8",
                 "--val-fraction", "0", "--quiet"]) == 0
    return path


@pytest.mark.slow
def test_cli_predict_at_spots_output_contract(model_path: Path, demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "spots.h5ad"
    assert main(["predict", str(model_path), str(demo_dir), "--out", str(out), "--quiet"]) == 0
    pred, spots = ad.read_h5ad(out), read_spots(demo_dir)
    model = load_model(model_path, device="cpu")
    assert list(pred.obs_names) == list(spots.obs_names) and list(pred.var_names) == model.genes
    np.testing.assert_array_equal(pred.obsm["spatial"], spots.obsm["spatial"])
    assert np.isfinite(pred.X).all()
    info = pred.uns["histosge"]
    assert info["units"] == "log1p(counts per 1e4)" and info["model"] == "histosge"
    assert info["model_path"] == str(model_path.resolve()) and info["source"] == str(demo_dir.resolve())
    assert info["trained_on"] == str(demo_dir.resolve()) and info["position_frame"] == TRAINING_BOX


def test_cli_predict_at_csv_positions_keeps_file_order(model_path: Path, demo_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    xy = read_spots(demo_dir).obsm["spatial"][[5, 0, 17]] + [[10.0, -7.0], [0.0, 0.0], [33.5, 12.25]]
    csv = tmp_path / "pos.csv"
    pd.DataFrame({"id": ["z9", "a1", "m5"], "x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    out = tmp_path / "at.h5ad"
    assert main(["predict", str(model_path), str(demo_dir), "--positions", str(csv), "--diameter", "40",
                 "--out", str(out), "--quiet"]) == 0
    pred = ad.read_h5ad(out)
    assert list(pred.obs_names) == ["z9", "a1", "m5"]
    np.testing.assert_allclose(pred.obsm["spatial"], xy)
    assert pred.uns["histosge"]["spot_diameter_px"] == 40.0 and pred.uns["histosge"]["positions"] == "given"
    assert pred.uns["histosge"]["positions_file"] == str(csv.resolve())
    assert "3 positions from" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_predict_on_a_section_it_was_not_trained_on(model_path: Path, demo: ad.AnnData,
                                                         tmp_path: Path) -> None:
    moved = write_shifted_copy(demo, tmp_path / "moved")
    out, same = tmp_path / "moved_pred.h5ad", tmp_path / "same.h5ad"
    assert main(["predict", str(model_path), str(moved), "--image", str(moved.parent / "moved.png"),
                 "--out", str(out), "--quiet"]) == 0
    assert main(["predict", str(model_path), demo.uns["histosge"]["source"], "--out", str(same), "--quiet"]) == 0
    pred, reference = ad.read_h5ad(out), ad.read_h5ad(same)
    assert pred.uns["histosge"]["position_frame"] == OWN_BOX
    np.testing.assert_allclose(np.asarray(pred.X), np.asarray(reference.X), atol=1e-4)
