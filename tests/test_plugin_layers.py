"""Tier 1 of the plugin tests: layer builders, readers, writer and sample data without a viewer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_histosge.errors import InputError
from napari_histosge.plugin.reader import (
    get_slide_reader,
    get_spots_reader,
    read_prediction_layers,
    read_slide_layers,
    read_spots_layers,
)
from napari_histosge.plugin.sample_data import find_cmu_small_region
from napari_histosge.plugin.widgets import compare as C
from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.writer import write_h5ad


def _spots(n_side: int = 6, pitch: float = 100.0, fold: int | None = None) -> ad.AnnData:
    """A square lattice of spots with two genes: GA rises with x, GB is constant + noise."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xy = np.column_stack([50 + gx.ravel() * pitch, 80 + gy.ravel() * pitch]).astype(float)
    counts = np.column_stack([1 + gx.ravel() * 10, rng.poisson(20, n_side * n_side)]).astype(np.float32)
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"s{i}" for i in range(len(xy))]),
                   var=pd.DataFrame(index=["GA", "GB"]))
    a.obsm["spatial"] = xy
    a.uns["histosge"] = {"spot_diameter_px": pitch / 2, "library_id": "toy", "images": {}, "image": None}
    if fold is not None:
        a.X = np.log1p(counts)
        a.uns["histosge"]["fold"] = fold
        a.obs["parent"] = pd.Categorical(a.obs_names)
    return a


def test_image_transform_maps_pixel_centres_to_fullres():
    t = L.image_transform(0.25)  # an image downsampled 4x
    scale, translate = np.array(t["scale"]), np.array(t["translate"])
    # image pixel j covers full-res [4j, 4j+4): its centre is full-res 4j + 1.5
    assert np.allclose(np.array([0, 10]) * scale + translate, [1.5, 41.5])
    assert L.image_transform(1.0) == {"scale": (1.0, 1.0), "translate": (0.0, 0.0)}
    with pytest.raises(ValueError, match="positive"):
        L.image_transform(0)


def test_spots_layer_is_row_col_with_real_diameter_and_gene_features():
    a = _spots()
    data, kwargs, kind = L.spots_layer(a, "GA")
    assert kind == "points"
    assert np.allclose(data[:, 0], a.obsm["spatial"][:, 1]) and np.allclose(data[:, 1], a.obsm["spatial"][:, 0])
    assert kwargs["size"] == 50.0
    feats = kwargs["features"]
    assert list(feats.columns) == ["spot", "GA"]
    # values are log1p(counts per 1e4): monotone in the raw GA share
    share = np.asarray(a.X[:, 0].todense()).ravel() / np.asarray(a.X.sum(1)).ravel()
    assert np.allclose(feats["GA"], np.log1p(share * 1e4), rtol=1e-5)
    assert kwargs["metadata"]["histosge"]["adata"] is a
    # coloured directly (RGBA per spot) by the values between the limits the legend shows
    assert kwargs["metadata"]["histosge"]["limits"] == (feats["GA"].min(), feats["GA"].max())
    np.testing.assert_allclose(kwargs["face_color"], L.spot_colours(feats["GA"].to_numpy(),
                                                                    kwargs["metadata"]["histosge"]["limits"]))
    assert kwargs["face_color"].shape == (a.n_obs, 4)


def test_spot_labels_are_off_and_show_the_spot_ids_when_switched_on():
    from napari.layers import Points

    a = _spots()
    data, kwargs, _ = L.spots_layer(a, "GA")
    layer = Points(data, **kwargs)
    assert not layer.text.visible  # napari's "display text" box starts unticked
    layer.text.visible = True
    assert list(layer.text.string(layer.features)) == list(a.obs_names)


def test_rasterize_puts_each_value_at_its_position():
    a = _spots(fold=4)
    values = np.arange(a.n_obs, dtype=float)
    r = L.rasterize(a.obsm["spatial"], values)
    # the raster cell containing each position holds that position's value
    rc = (a.obsm["spatial"][:, ::-1] - np.array(r.origin_rc)) / r.cell
    idx = np.round(rc).astype(int)
    assert np.array_equal(r.image[idx[:, 0], idx[:, 1]], values.astype(np.float32))
    assert np.isnan(r.image[0, 0])  # corners outside the reach are empty
    assert r.cell == pytest.approx(25.0)


def test_heatmap_layer_aligned_on_fullres_grid_and_updates():
    a = _spots(fold=4)
    data, kwargs, kind = L.heatmap_layer(a, "GA")
    assert kind == "image" and data.ndim == 2
    cell, origin = kwargs["scale"][0], np.array(kwargs["translate"])
    xy = a.obsm["spatial"][7]
    i, j = np.round((xy[::-1] - origin) / cell).astype(int)
    assert data[i, j] == pytest.approx(float(np.asarray(a[:, "GA"].X).ravel()[7]))
    lo, hi = kwargs["contrast_limits"]
    assert lo < hi


def test_a_lattice_map_is_interpolated_and_never_on_glass():
    from napari_histosge.evaluation.map_artefacts import glass_fraction
    from napari_histosge.slide.mask import TissueMask

    a = _spots(fold=4)
    values = np.asarray(a[:, "GA"].X).ravel()  # rises with x
    raster = L.heatmap_layer(a, "GA")[1]["metadata"]["histosge"]["raster"]
    image = raster.with_values(values)
    row = np.round((a.obsm["spatial"][0, 1] - raster.origin_rc[0]) / raster.cell).astype(int)
    painted = image[row][np.isfinite(image[row])]
    # between two positions the map takes values in between: smooth, not a square per position
    assert len(np.unique(np.round(painted, 4))) > 2 * len(np.unique(values))
    # the right half of the slide is glass: a map that records its tissue paints none of it
    tissue = TissueMask(np.arange(80)[None, :].repeat(80, axis=0) < 40, 10.0, "test")
    a.uns["histosge"]["tissue_mask"] = tissue.to_uns()
    masked = L.heatmap_layer(a, "GA")[1]["metadata"]["histosge"]["raster"]
    assert glass_fraction(raster, tissue) > 0.3 and glass_fraction(masked, tissue) == 0.0
    assert np.isfinite(masked.with_values(values)).sum() > 0


def test_comparison_difference_is_prediction_minus_parent():
    src = _spots()
    pred = _spots(fold=1)
    pred.uns["histosge"]["fold"] = 2
    pred.X = np.asarray(pred.X) + 0.5
    layers = C.comparison_layers(pred, src, "GA")
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["GA observed", "GA predicted", "GA predicted - observed", "comparison titles"]
    diff = L.gene_values(pred, "GA") - C.parent_values(pred, src, "GA")
    assert np.nanmax(np.abs(layers[2][0])) == pytest.approx(np.abs(diff).max(), rel=1e-5)
    # panels are shifted right, never overlapping
    assert layers[1][1]["translate"][1] > layers[0][1]["translate"][1] + np.ptp(src.obsm["spatial"][:, 0])


def test_comparison_panels_have_titles_own_ranges_and_a_centred_difference():
    src = _spots()
    pred = _spots(fold=1)
    pred.uns["histosge"]["fold"] = 2
    pred.X = 0.2 * np.asarray(pred.X) + 3.0  # a prediction that varies less than the measurement
    observed, predicted, difference, titles = C.comparison_layers(pred, src, "GA")
    obs_lo, obs_hi = observed[1]["contrast_limits"]
    pred_lo, pred_hi = predicted[1]["contrast_limits"]
    # each panel on its own robust range: the predicted map is not flattened on the measured one's scale
    assert (pred_lo, pred_hi) == pytest.approx(L.robust_range(L.gene_values(pred, "GA")))
    assert pred_hi - pred_lo < 0.5 * (obs_hi - obs_lo)
    lo, hi = difference[1]["contrast_limits"]
    assert lo == pytest.approx(-hi) and hi > 0
    assert difference[1]["colormap"] == L.DIFF_COLORMAP
    texts = list(titles[1]["features"]["title"])
    # one short line each, so the titles stay above their panels (each panel has its own legend)
    assert texts == ["observed", "predicted", "predicted - observed"]
    assert [kw["name"] for _, kw, _ in (observed, predicted, difference)] == [
        "GA observed", "GA predicted", "GA predicted - observed"]


def test_heatmap_limits_are_robust_to_one_outlier_and_low_values_transparent():
    a = _spots(n_side=12, fold=4)
    values = np.linspace(0.0, 1.0, a.n_obs)
    values[3] = 50.0  # one outlier spot
    a.X = np.column_stack([values, values])
    _, kwargs, _ = L.heatmap_layer(a, "GA")
    lo, hi = kwargs["contrast_limits"]
    assert hi < 2.0 and lo >= 0.0
    cmap = kwargs["colormap"]
    low, high = cmap.map(np.array([0.0, 1.0]))
    assert low[3] == 0.0 and high[3] == 1.0  # the H&E shows through where expression is low


def _grid_cells(mpp: float | None = None) -> ad.AnnData:
    """A 3 x 4 grid of 20 px cells whose first cell is centred at full-res (x, y) = (110, 205); two cells absent."""
    cells = [(r, c) for r in range(3) for c in range(4) if (r, c) not in ((0, 0), (2, 3))]
    rows, cols = np.array(cells).T
    xy = np.column_stack([110.0 + 20.0 * cols, 205.0 + 20.0 * rows])
    a = ad.AnnData(X=np.column_stack([rows * 10.0 + cols, np.ones(len(cells))]).astype(np.float32),
                   obs=pd.DataFrame({"grid_row": rows, "grid_col": cols}, index=[f"c{i}" for i in range(len(cells))]),
                   var=pd.DataFrame(index=["GA", "GB"]))
    a.obsm["spatial"] = xy
    a.uns["histosge"] = {"library_id": "toy", "mpp": mpp, "images": {}, "image": None,
                         "grid": {"cell_px": 20.0, "origin_xy": [110.0, 205.0], "shape": [3, 4],
                                  "cell_um": None if mpp is None else 20.0 * mpp}}
    return a


@pytest.mark.parametrize("mpp", [None, 0.5])
def test_grid_raster_puts_each_cell_on_its_slide_pixel(mpp):
    a = _grid_cells(mpp)
    data, kwargs, kind = L.heatmap_layer(a, "GA")
    assert kind == "image" and data.shape == (3, 4) and data.dtype == np.float32
    assert np.isnan(data[0, 0]) and np.isnan(data[2, 3])  # no cell there: transparent
    assert data[1, 2] == pytest.approx(12.0)  # grid_row 1, grid_col 2
    scale, translate = np.array(kwargs["scale"]), np.array(kwargs["translate"])
    # the centre of raster pixel (1, 2) lands on that cell's centre, seen through the slide's own transform
    world = np.array([1, 2]) * scale + translate
    slide = L.image_transform(1.0, mpp)
    fullres_rc = (world - np.array(slide["translate"])) / np.array(slide["scale"])
    assert np.allclose(fullres_rc[::-1], a.obsm["spatial"][list(a.obs_names).index("c5")])
    assert (kwargs.get("units") == ("um", "um")) == (mpp is not None)


def test_grid_raster_bad_description_raises_input_error():
    a = _grid_cells()
    a.uns["histosge"]["grid"]["shape"] = [2, 2]
    with pytest.raises(InputError, match="outside the grid"):
        L.heatmap_layer(a, "GA")
    del a.uns["histosge"]["grid"]["cell_px"]
    with pytest.raises(InputError, match="cell_px"):
        L.heatmap_layer(a, "GA")


def test_grid_file_opens_as_a_raster_layer(tmp_path):
    a = _grid_cells(0.5)
    path = tmp_path / "grid.h5ad"
    a.write_h5ad(path)
    reader = get_spots_reader(str(path))
    assert reader is not None
    with pytest.warns(UserWarning, match="no slide image"):
        layers = reader(str(path))
    [(data, kwargs, kind)] = layers
    assert kind == "image" and data.shape == (3, 4)
    assert kwargs["metadata"]["histosge"]["role"] == L.ROLE_HEATMAP


def test_layers_in_micrometres_when_the_pixel_size_is_known():
    a = _spots(fold=4)
    a.uns["histosge"]["mpp"] = 0.5
    _, spots, _ = L.spots_layer(a, "GA")
    _, heat, _ = L.heatmap_layer(a, "GA")
    assert spots["scale"] == (0.5, 0.5) and spots["units"] == ("um", "um")
    assert heat["units"] == ("um", "um")
    assert L.image_transform(0.25, 0.5) == {"scale": (2.0, 2.0), "translate": (0.75, 0.75)}
    a.uns["histosge"]["mpp"] = None
    assert "units" not in L.spots_layer(a, "GA")[1]


def test_readers_decline_foreign_paths_cheaply(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert get_spots_reader(str(tmp_path / "notes.txt")) is None
    assert get_spots_reader(str(tmp_path)) is None
    assert get_slide_reader(str(tmp_path / "notes.txt")) is None
    assert get_slide_reader(str(tmp_path / "missing.svs")) is None
    assert get_spots_reader([str(tmp_path), str(tmp_path)]) is None


@pytest.mark.parametrize("reader", [read_spots_layers, read_slide_layers, read_prediction_layers])
def test_reader_functions_take_one_path(tmp_path, reader):
    with pytest.raises(InputError, match="reads one path at a time"):
        reader([str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")])


@pytest.mark.parametrize("fold", [1, 4])
def test_predictions_without_genes_raise_input_error(fold):
    empty = _spots(fold=fold)[:, []].copy()
    empty.uns["histosge"]["source"] = "/data/section"
    with pytest.raises(InputError, match="/data/section: the predictions hold no genes"):
        L.prediction_layers(empty)
    with pytest.raises(InputError, match="the predictions hold no genes"):
        L.heatmap_layer(empty)


def test_slide_reader_bad_file_raises_input_error(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a tiff")
    reader = get_slide_reader(str(bad))
    assert reader is not None
    with pytest.raises(InputError, match="broken.svs"):
        reader(str(bad))


def test_slide_reader_multiscale_lazy(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), subifds=1, photometric="rgb")
        tw.write(img[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    [(data, kwargs, kind)] = read_slide_layers(str(path))
    assert kind == "image" and kwargs["rgb"] is True
    assert kwargs["multiscale"] and len(data) == 2
    assert type(data[0]).__name__ == "LevelArray"  # read by tile, never loaded whole
    assert np.array_equal(np.asarray(data[0][100:110, 200:210]), img[100:110, 200:210])


def test_writer_writes_prediction_h5ad(tmp_path):
    a = _spots(fold=4)
    _, kwargs, _ = L.heatmap_layer(a, "GA")
    [out] = write_h5ad(str(tmp_path / "pred"), None, kwargs)
    back = ad.read_h5ad(out)
    assert out.endswith(".h5ad") and back.shape == a.shape
    assert np.allclose(back.obsm["spatial"], a.obsm["spatial"])


def test_writer_rejects_foreign_layers(tmp_path):
    with pytest.raises(InputError, match="no expression data"):
        write_h5ad(str(tmp_path / "x.h5ad"), np.zeros((2, 2)), {"metadata": {}})


def test_cmu_sample_found_in_shared_data(real_data, monkeypatch):
    monkeypatch.setenv("HISTOSGE_DATA", str(real_data))
    path = find_cmu_small_region()
    assert path is not None and path.name == "cmu_small_region.svs"


def test_scheduler_field_values() -> None:
    from napari_histosge.plugin.widgets.train import checkpoint_name, scheduler_value

    assert scheduler_value("  ") is None
    assert scheduler_value("local") == "local"
    assert scheduler_value(" tcp://10.0.0.1:8786 ") == "tcp://10.0.0.1:8786"
    assert checkpoint_name("her2st B4", "conditioned") == "her2st_B4_conditioned.pt"
    assert checkpoint_name("B4", "histosge", "20260101-120000") == "B4_histosge_20260101-120000.pt"


def test_every_run_gets_its_own_checkpoint_file(tmp_path) -> None:
    from datetime import datetime

    from napari_histosge.plugin.widgets.train import new_checkpoint_path

    now = datetime(2026, 1, 1, 12, 0, 0)
    first = new_checkpoint_path(tmp_path, "B4", "histosge", now)
    first.write_bytes(b"finished model")
    second = new_checkpoint_path(tmp_path, "B4", "histosge", now)  # same second: still a new file
    assert second != first and not second.exists()
    assert first.name == "B4_histosge_20260101-120000.pt" and second.name == "B4_histosge_20260101-120000-2.pt"


def test_a_slide_alone_uses_its_own_pixel_size_but_follows_its_spots_otherwise(tmp_path):
    import tifffile

    from napari_histosge.plugin.reader import slide_layers

    path = tmp_path / "slide.tif"
    img = np.zeros((256, 256, 3), np.uint8)
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")  # 0.5 µm per pixel
    [(_, alone, _)] = read_slide_layers(str(path))
    assert alone["scale"] == pytest.approx((0.5, 0.5)) and alone["units"] == ("um", "um")
    # under spots that record no pixel size the slide stays in pixels, as the spots do
    _, under_spots, _ = slide_layers(path, mpp=None)
    assert under_spots["scale"] == (1.0, 1.0) and "units" not in under_spots
