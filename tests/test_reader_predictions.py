"""Opening a saved predictions .h5ad: the same layers as the Super-resolve widget, on the slide.

The predictions are made by the real pipeline (a 2-epoch model on the generated demo
section), written with AnnData as ``histosge predict`` does, and read back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_histosge.errors import InputError
from napari_histosge.plugin.reader import (
    get_spots_reader,
    is_prediction_file,
    prediction_info,
    read_prediction,
    read_prediction_layers,
)
from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.writer import write_h5ad
from napari_histosge.slide.mask import TissueMask

FOLD = 2  # the smallest super-resolution: the file's cost is the real pipeline run


@pytest.fixture(scope="module")
def made(tmp_path_factory, demo_dir) -> dict:
    """A 2-fold and a fold-1 prediction of the demo section, written to .h5ad."""
    from napari_histosge.io import read_spots
    from napari_histosge.models import train_config
    from napari_histosge.pipeline.steps import fit, predict_spots, superresolve
    from napari_histosge.plugin.widgets.worker import preload_torch
    from napari_histosge.progress import run_to_end

    preload_torch()  # an earlier test's viewer may have loaded Mesa's LLVM: triton must not load beside it
    root = tmp_path_factory.mktemp("pred")
    adata = read_spots(demo_dir)
    model = run_to_end(fit(adata, train_config=train_config(epochs=2, n_top_genes=8)))
    pred = run_to_end(superresolve(model, adata, FOLD))
    spots = run_to_end(predict_spots(model, adata))
    pred.write_h5ad(root / "pred.h5ad")
    spots.write_h5ad(root / "pred1.h5ad")
    adata.write_h5ad(root / "measured.h5ad")
    return {"root": root, "adata": adata, "pred": pred, "spots": spots,
            "path": root / "pred.h5ad", "path1": root / "pred1.h5ad"}


def _by_role(layers: list) -> dict[str, tuple]:
    return {kw["metadata"][L.META_KEY]["role"]: (data, kw, kind) for data, kw, kind in layers}


def _cell_of(xy: np.ndarray, kwargs: dict, mpp: float | None = None) -> tuple[int, int]:
    """The raster index of full-res position ``(x, y)`` under an image layer's transform.

    The world frame is in micrometres (``mpp`` per pixel) when the section records its pixel size.
    """
    world = np.asarray(xy, float)[::-1] * (mpp or 1.0)
    rc = (world - np.asarray(kwargs["translate"])) / np.asarray(kwargs["scale"])
    i, j = np.round(rc).astype(int)
    return int(i), int(j)


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


# ----------------------------------------------------------------------------- recognition
@pytest.mark.slow
def test_prediction_recognised_from_metadata_only(made, tmp_path):
    assert is_prediction_file(made["path"]) and is_prediction_file(made["path1"])
    assert not is_prediction_file(made["root"] / "measured.h5ad")  # measured spots stay spots
    info = prediction_info(made["path"])
    assert int(info["fold"]) == FOLD and info["units"] == "log1p(counts per 1e4)"
    # X is never read to decide: a file without X is still recognised (and then refused)
    no_x = _copy_with(made["path"], tmp_path / "nox.h5ad", lambda f: f.__delitem__("X"))
    assert is_prediction_file(no_x)
    with pytest.raises(InputError, match=r"nox\.h5ad.*no X"):
        read_prediction(no_x)
    # napari's entry point dispatches to the prediction layers
    reader = get_spots_reader(str(made["path"]))
    assert set(_by_role(reader(str(made["path"])))) == {L.ROLE_SLIDE, L.ROLE_HEATMAP, L.ROLE_PRED_SPOTS}
    spots_reader = get_spots_reader(str(made["root"] / "measured.h5ad"))
    assert set(_by_role(spots_reader(str(made["root"] / "measured.h5ad")))) == {L.ROLE_SLIDE, L.ROLE_SPOTS}


# ----------------------------------------------------------------------------- layers
def test_heatmap_from_file_matches_widget_and_lands_on_the_right_pixel(made):
    pred = made["pred"]
    roles = _by_role(read_prediction_layers(str(made["path"])))
    session = _by_role(L.prediction_layers(pred))  # what the Super-resolve widget adds
    heat, heat_kw, kind = roles[L.ROLE_HEATMAP]
    assert kind == "image"
    for key in ("name", "colormap", "contrast_limits", "opacity", "scale", "translate"):
        assert heat_kw[key] == session[L.ROLE_HEATMAP][1][key], key
    np.testing.assert_array_equal(heat, session[L.ROLE_HEATMAP][0])
    gene = heat_kw["metadata"][L.META_KEY]["gene"]
    assert gene == L.default_gene(pred)
    # the highest-valued position of the shown gene: its raster cell holds its value (the map
    # interpolates between positions, so the cell's centre, a fraction of a spacing away, is close)
    values = np.asarray(pred[:, gene].X).ravel()
    k = int(np.argmax(values))
    xy = pred.obsm["spatial"][k]
    mpp = L.um_per_px(pred)
    assert mpp is not None and heat_kw["units"] == ("um", "um")  # the demo records its pixel size
    assert heat[_cell_of(xy, heat_kw, mpp)] == pytest.approx(values[k], rel=0.02)
    assert heat_kw["contrast_limits"] == pytest.approx(L.robust_range(values))
    # ... and the slide under it: the same world point is full-res pixel (x, y) of the slide
    slide, slide_kw, _ = roles[L.ROLE_SLIDE]
    level0 = slide[0] if isinstance(slide, list) else slide
    assert slide_kw["metadata"][L.META_KEY]["path"].endswith("demo_HE.jpg")
    row, col = _cell_of(xy, slide_kw, mpp)
    assert (row, col) == tuple(np.round(xy[::-1]).astype(int))
    assert 0 <= row < level0.shape[0] and 0 <= col < level0.shape[1]
    # the predicted spots: hidden Points at (y, x) with the gene's values in features
    points, points_kw, kind = roles[L.ROLE_PRED_SPOTS]
    assert kind == "points" and points_kw["visible"] is False
    np.testing.assert_allclose(points, pred.obsm["spatial"][:, ::-1])
    np.testing.assert_allclose(points_kw["features"][gene], values, rtol=1e-6)
    assert points_kw["size"] == pytest.approx(pred.uns["histosge"]["spot_diameter_px"])
    # the metadata the Gene viewer and the writer use
    for _, kw, _ in roles.values():
        meta = kw["metadata"][L.META_KEY]
        assert np.array_equal(np.asarray(meta["adata"].X), np.asarray(pred.X))


def test_fold1_predictions_are_visible_spots_without_heatmap(made):
    spots = made["spots"]
    roles = _by_role(read_prediction_layers(str(made["path1"])))
    assert set(roles) == {L.ROLE_SLIDE, L.ROLE_PRED_SPOTS}
    data, kw, _ = roles[L.ROLE_PRED_SPOTS]
    assert kw["visible"] is True and kw["name"].endswith("predicted 1x")
    gene = kw["metadata"][L.META_KEY]["gene"]
    np.testing.assert_allclose(data, spots.obsm["spatial"][:, ::-1])
    np.testing.assert_allclose(kw["features"][gene], np.asarray(spots[:, gene].X).ravel(), rtol=1e-6)


def test_uncertainty_layer_read_from_std(made, tmp_path):
    pred = made["pred"].copy()
    rng = np.random.default_rng(1)
    pred.layers["std"] = rng.uniform(0.1, 1.0, pred.shape).astype(np.float32)
    pred.write_h5ad(tmp_path / "std.h5ad")
    roles = _by_role(read_prediction_layers(str(tmp_path / "std.h5ad")))
    spread, kw, kind = roles[L.ROLE_UNCERTAINTY]
    assert kind == "image" and kw["visible"] is False and kw["colormap"] == "gray"
    gene = kw["metadata"][L.META_KEY]["gene"]
    assert kw["metadata"][L.META_KEY]["values_layer"] == "std"
    assert kw["scale"] == roles[L.ROLE_HEATMAP][1]["scale"]  # same raster as the heatmap
    xy = np.asarray(pred.obsm["spatial"])
    k = int(np.flatnonzero(TissueMask.from_uns(pred.uns["histosge"]["tissue_mask"]).contains(xy))[5])
    cell = _cell_of(xy[k], kw, L.um_per_px(pred))
    # the map interpolates between positions: the cell at a position lies within its neighbours' range
    std = np.asarray(pred[:, gene].layers["std"]).ravel()
    near = np.linalg.norm(xy - xy[k], axis=1) <= 1.01 * L.nn_spacing(xy)
    assert std[near].min() - 1e-6 <= spread[cell] <= std[near].max() + 1e-6
    # fold 1 with a spread: uncertainty as hidden spots
    spots = made["spots"].copy()
    spots.layers["std"] = rng.uniform(0.1, 1.0, spots.shape).astype(np.float32)
    spots.write_h5ad(tmp_path / "std1.h5ad")
    roles = _by_role(read_prediction_layers(str(tmp_path / "std1.h5ad")))
    data, kw, kind = roles[L.ROLE_UNCERTAINTY]
    assert kind == "points" and kw["visible"] is False
    np.testing.assert_allclose(kw["features"][gene], spots[:, gene].layers["std"].ravel(), rtol=1e-6)


def test_missing_slide_warns_and_still_shows_heatmap(made, demo_dir, tmp_path):
    pred = made["pred"].copy()
    pred.uns["histosge"]["images"]["fullres"]["path"] = str(tmp_path / "gone" / "slide_moved.jpg")
    pred.write_h5ad(tmp_path / "moved.h5ad")
    with pytest.warns(UserWarning, match=r"moved\.h5ad.*slide_moved\.jpg was not found"):
        roles = _by_role(read_prediction_layers(str(tmp_path / "moved.h5ad")))
    assert set(roles) == {L.ROLE_HEATMAP, L.ROLE_PRED_SPOTS}
    data, kw, _ = roles[L.ROLE_HEATMAP]
    # a position on the tissue (the map is not drawn on glass)
    k = int(np.flatnonzero(TissueMask.from_uns(pred.uns["histosge"]["tissue_mask"]).contains(pred.obsm["spatial"]))[3])
    gene = kw["metadata"][L.META_KEY]["gene"]
    assert data[_cell_of(pred.obsm["spatial"][k], kw, L.um_per_px(pred))] == pytest.approx(float(pred[k, gene].X[0, 0]),
                                                                                           rel=0.02)
    # the image moved along with the predictions: found beside the file
    shutil.copy(demo_dir / "demo_HE.jpg", tmp_path / "slide_moved.jpg")
    roles = _by_role(read_prediction_layers(str(tmp_path / "moved.h5ad")))
    assert roles[L.ROLE_SLIDE][1]["metadata"][L.META_KEY]["path"] == str(tmp_path / "slide_moved.jpg")


# ----------------------------------------------------------------------------- bad input
def _wrong_x(f):
    n_obs, n_vars = f["X"].shape
    del f["X"]
    f.create_dataset("X", data=np.zeros((n_obs, n_vars + 1), np.float32))
    f["X"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _wrong_std(f):
    f["layers"].create_dataset("std", data=np.zeros((3, 2), np.float32))
    f["layers/std"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: f.__delitem__("obsm/spatial"), r"the predicted positions are missing \(no obsm\['spatial'\]\)"),
    (_wrong_x, r"X has shape \(\d+, 9\) but the file lists \d+ positions x 8 genes"),
    (_wrong_std, r"layers/std has shape \(3, 2\) but the file lists"),
])
def test_bad_prediction_files_raise_input_error(made, tmp_path, edit, message):
    bad = _copy_with(made["path"], tmp_path / "bad.h5ad", edit)
    with pytest.raises(InputError, match=r"bad\.h5ad: " + message):
        read_prediction_layers(str(bad))


def test_prediction_without_genes_raises_input_error(made, tmp_path):
    made["pred"][:, []].copy().write_h5ad(tmp_path / "nogenes.h5ad")
    with pytest.raises(InputError, match=r"nogenes\.h5ad: the predictions hold no genes"):
        read_prediction_layers(str(tmp_path / "nogenes.h5ad"))


def test_nan_positions_raise_input_error(made, tmp_path):
    pred = made["pred"].copy()
    pred.obsm["spatial"][4] = np.nan
    pred.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(InputError, match=r"nan\.h5ad: obsm\['spatial'\] has missing"):
        read_prediction(tmp_path / "nan.h5ad")


# ----------------------------------------------------------------------------- round trip
def test_writer_round_trip_keeps_values(made, tmp_path):
    layers = read_prediction_layers(str(made["path"]))
    data, kwargs, _ = _by_role(layers)[L.ROLE_HEATMAP]
    [out] = write_h5ad(str(tmp_path / "again"), data, kwargs)
    back = read_prediction(out)
    pred = made["pred"]
    np.testing.assert_array_equal(np.asarray(back.X), np.asarray(pred.X))
    np.testing.assert_array_equal(back.obsm["spatial"], pred.obsm["spatial"])
    assert list(back.obs_names) == list(pred.obs_names) and list(back.var_names) == list(pred.var_names)
    assert int(back.uns["histosge"]["fold"]) == FOLD
    again = _by_role(read_prediction_layers(out))[L.ROLE_HEATMAP]
    np.testing.assert_array_equal(again[0], data)


# ----------------------------------------------------------------------------- in a viewer
@pytest.mark.slow
def test_open_in_viewer_gene_viewer_recolours_and_writer_round_trips(make_napari_viewer, made, demo_dir, tmp_path):
    from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget

    pred = made["pred"]
    viewer = make_napari_viewer()
    viewer.open(str(made["path"]), plugin="napari-histosge")
    [heat] = L.layers_with_role(viewer.layers, L.ROLE_HEATMAP)
    [points] = L.layers_with_role(viewer.layers, L.ROLE_PRED_SPOTS)
    assert len(L.layers_with_role(viewer.layers, L.ROLE_SLIDE)) == 1
    first = L.histosge_meta(heat)["gene"]
    other = next(g for g in pred.var_names if g != first)
    viewer_widget = GeneViewerWidget(viewer)
    assert other in viewer_widget.genes()
    assert viewer_widget.show_gene(other)
    values = np.asarray(pred[:, other].X).ravel()
    k = int(np.argmax(values))
    # world -> heatmap data through napari's own transform: the position's cell holds its value
    cell = np.round(heat.world_to_data(pred.obsm["spatial"][k][::-1] * L.um_per_px(pred))).astype(int)
    assert heat.data[tuple(cell)] == pytest.approx(values[k], rel=0.02)
    assert heat.name.startswith(f"{other} ") and L.histosge_meta(heat)["gene"] == other
    assert tuple(heat.contrast_limits) == pytest.approx(L.robust_range(values))
    points.visible = True  # hidden points are recoloured when shown
    np.testing.assert_allclose(points.features[other], values, rtol=1e-6)
    assert "PCC" not in viewer_widget.info.value  # no measurements open yet
    # the measured spots the file records as its source, opened too: PCC and comparison work
    viewer.open(str(demo_dir), plugin="napari-histosge")
    assert viewer_widget.show_gene(other)
    from napari_histosge.plugin.widgets.gene_viewer import gene_pcc

    expected = gene_pcc(pred, made["adata"], other)
    assert viewer_widget.pcc[heat.name] == pytest.approx(expected)
    assert [lyr.name for lyr in viewer_widget.compare() if getattr(lyr, "rgb", True) is False][:3] == [
        f"{other} observed", f"{other} predicted", f"{other} predicted - observed"]
    # save the heatmap layer with the plugin's writer and read it again
    out = tmp_path / "saved.h5ad"
    heat.save(str(out), plugin="napari-histosge")
    back = read_prediction(out)
    np.testing.assert_array_equal(np.asarray(back.X), np.asarray(pred.X))
    np.testing.assert_array_equal(back.obsm["spatial"], pred.obsm["spatial"])
    viewer.open(str(out), plugin="napari-histosge")
    assert len(L.layers_with_role(viewer.layers, L.ROLE_HEATMAP)) == 2
