"""Cell maps: segmented cells as the units of the sub-spot model (pipeline.cell_maps)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import napari_histosge as hs
from napari_histosge.cells import Segmentation, cell_table, segmentation_from_labels
from napari_histosge.errors import InputError
from napari_histosge.features.cell_raster import cell_features, n_cell_features
from napari_histosge.io import require_spot_image
from napari_histosge.io.preprocess import dense_targets, normalize_log1p
from napari_histosge.pipeline import cell_maps, grid_maps
from napari_histosge.slide.cell_grid import CellGrid
from napari_histosge.training.cell_model import as_cell_model
from napari_histosge.training.model_meta import ModelMeta

#: Synthetic nuclei: discs of this radius on a jittered lattice of this pitch (full-res px of the demo slide).
RADIUS_PX, PITCH_PX = 3, 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from napari_histosge.demo import make_demo_dataset

    return hs.read_spots(make_demo_dataset(tmp_path_factory.mktemp("demo")))


@pytest.fixture(scope="module")
def fitted(demo):
    # Cells of 30 µm (about 16 px on the demo slide) keep the tests quick.
    return hs.fit(demo, train_config=hs.train_config("subspot", n_top_genes=20, cell_um=30.0))


def nucleus_labels(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Small discs with ids 1.. on a jittered lattice over the whole raster."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[-RADIUS_PX:RADIUS_PX + 1, -RADIUS_PX:RADIUS_PX + 1]
    disc = yy**2 + xx**2 <= RADIUS_PX**2
    centres = [(r, c) for r in range(PITCH_PX, shape[0] - PITCH_PX, PITCH_PX)
               for c in range(PITCH_PX, shape[1] - PITCH_PX, PITCH_PX)]
    for label, (r, c) in enumerate(centres, 1):
        r, c = r + rng.integers(-3, 4), c + rng.integers(-3, 4)
        window = labels[r - RADIUS_PX:r + RADIUS_PX + 1, c - RADIUS_PX:c + RADIUS_PX + 1]
        window[disc] = label
    return labels


@pytest.fixture(scope="module")
def segmentation(demo):
    shape = cell_maps.slide_shape_of(demo)
    return segmentation_from_labels(nucleus_labels(shape), 1.0, mpp=demo.uns["histosge"]["mpp"], source="synthetic")


@pytest.fixture(scope="module")
def cell_map(demo, fitted, segmentation):
    return hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation))


def test_the_cell_map_contract(demo, fitted, segmentation, cell_map, tmp_path):
    table = segmentation.table
    by_label = dict(zip(table.obs["label"].to_numpy(), np.asarray(table.obsm["spatial"]), strict=True))
    labels = cell_map.obs["label"].to_numpy()
    assert 0 < cell_map.n_obs < segmentation.n_cells  # cells far from every spot are left out
    assert np.allclose(cell_map.obsm["spatial"], np.stack([by_label[k] for k in labels]))
    assert list(cell_map.var_names) == fitted.genes and np.all(np.isfinite(cell_map.X))
    assert np.allclose(cell_map.obs["area_px"], np.pi * RADIUS_PX**2, rtol=0.15)
    info = cell_map.uns["histosge"]
    assert info["cells"]["source"] == "synthetic" and info["positions"] == "cells"
    assert info["consistency"] == "smooth" and info["model"] == "subspot"
    assert info["cells"]["left_out_far_from_spots"] == segmentation.n_cells - cell_map.n_obs
    assert "spatial_um" in cell_map.obsm  # finish_prediction, as every prediction
    cell_map.write_h5ad(tmp_path / "cells.h5ad")  # the contract survives a file


def test_exact_consistency_reproduces_each_footprint_as_the_mean_of_its_cells(demo, fitted, segmentation):
    exact = hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation, consistency="exact"))
    weights = fitted.footprints().cell_weights(np.asarray(exact.obsm["spatial"]), nearest_if_empty=False)
    held = np.diff(weights.indptr) > 0
    assert held.all()  # every spot holds some of the synthetic cells
    means = np.log1p(np.asarray(weights @ np.expm1(np.asarray(exact.X, np.float64))))
    truth = dense_targets(normalize_log1p(demo), fitted.genes)
    assert np.abs(means - truth).max() < 1e-3


@pytest.mark.parametrize("consistency", ["smooth", "none"])
def test_a_cell_is_predicted_as_a_grid_cell_at_its_centroid(demo, fitted, segmentation, consistency):
    cells = hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation, consistency=consistency))
    # A one-cell grid centred on each of a few centroids: the same model call at the same place.
    for row in (0, cells.n_obs // 2, cells.n_obs - 1):
        xy = np.asarray(cells.obsm["spatial"])[row]
        grid = CellGrid(fitted.cell_px, (xy[0], xy[1]), (1, 1))
        rates = hs.run(grid_maps.grid_rates(fitted, demo, grid, consistency=consistency))
        assert np.allclose(np.asarray(cells.X)[row], np.log1p(rates[0]), atol=1e-5)


def test_cells_go_in_chunks_with_the_same_result(demo, fitted, segmentation, cell_map, monkeypatch):
    monkeypatch.setattr(cell_maps, "CHUNK_CELLS", 97)
    again = hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation))
    assert np.allclose(np.asarray(again.X), np.asarray(cell_map.X), atol=1e-6)


def test_the_smooth_field_is_computed_once_per_cell_map_whatever_the_chunks(demo, fitted, segmentation, cell_map,
                                                                           monkeypatch):
    # Each chunk of cells rebuilt the whole field: about fifty times on a million cells.
    from napari_histosge.models.subspot import trained

    calls = []
    counted = trained.footprint_cells
    monkeypatch.setattr(trained, "footprint_cells", lambda *a, **k: calls.append(1) or counted(*a, **k))
    monkeypatch.setattr(cell_maps, "CHUNK_CELLS", 97)
    again = hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation))
    assert again.n_obs > 3 * 97 and len(calls) == 1
    assert np.allclose(np.asarray(again.X), np.asarray(cell_map.X), atol=1e-6)


def test_features_are_a_model_size_square_at_each_centroid(demo, fitted):
    path, scale = require_spot_image(demo)
    rng = np.random.default_rng(1)
    xy = np.asarray(demo.obsm["spatial"])[rng.choice(demo.n_obs, 40, replace=False)] + rng.uniform(-20, 20, (40, 2))
    model = SimpleNamespace(uses_image=True, cell_px=fitted.cell_px, meta=ModelMeta(n_features=n_cell_features()))
    sampled = hs.run(cell_maps.features_at(model, demo, xy))
    # Each centroid's own square, read directly: one-cell grids centred on it.
    own = np.stack([hs.run(cell_features(path, scale, CellGrid(fitted.cell_px, tuple(p), (1, 1))))[0] for p in xy])
    varying = own.std(axis=0) > 1e-6
    pcc = [np.corrcoef(sampled[:, k], own[:, k])[0, 1] for k in np.flatnonzero(varying)]
    assert sampled.shape == own.shape and np.nanmean(pcc) > 0.9


def test_cells_can_be_expanded_by_some_micrometres(demo, fitted, segmentation, cell_map):
    grown = hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation, expand_um=2.0))
    mpp = demo.uns["histosge"]["mpp"]
    radius = np.sqrt(cell_map.obs["area_px"].to_numpy() / np.pi) + 2.0 / mpp
    assert np.allclose(grown.obs["area_px"], np.pi * radius**2)
    assert np.allclose(grown.obs["area_um2"], grown.obs["area_px"] * mpp**2)
    assert grown.uns["histosge"]["cells"]["expand_um"] == 2.0
    assert np.allclose(np.asarray(grown.X), np.asarray(cell_map.X))  # predicted at the centroid either way


def test_a_label_image_file_is_read_at_the_slides_size(demo, fitted, segmentation, cell_map, tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.asarray(segmentation.labels))
    read = hs.run(cell_maps.superresolve_cells(fitted, demo, path))
    assert np.allclose(np.asarray(read.X), np.asarray(cell_map.X))
    assert read.uns["histosge"]["cells"]["source"] == str(path)


def test_a_sections_bin_footprint_does_not_follow_its_cells(demo, fitted, segmentation):
    binned = demo.copy()
    binned.uns["histosge"] = {**demo.uns["histosge"], "footprint": {"shape": "square", "size_px": 8.0}}
    cells = hs.run(cell_maps.superresolve_cells(fitted, binned, segmentation))
    assert "footprint" not in cells.uns["histosge"]  # else a store draws each cell as a bin square


# ----------------------------------------------------------------------------- bad input, before any work
@pytest.fixture()
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cells were predicted before the input was checked")

    monkeypatch.setattr(cell_maps, "unit_rates", refuse)
    monkeypatch.setattr(cell_maps, "cell_features", refuse)


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_an_empty_segmentation_is_refused(demo, fitted, no_work):
    empty = cell_table(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0), mpp=None, px_per_label_px=1.0,
                       source="empty.tif")
    shape = cell_maps.slide_shape_of(demo)
    with pytest.raises(InputError, match="empty") as excinfo:
        hs.run(cell_maps.superresolve_cells(fitted, demo, Segmentation(np.zeros(shape, np.int32), 1.0, empty,
                                                                       "empty.tif")))
    one_line(excinfo)


def test_an_all_background_label_file_is_refused(demo, fitted, no_work, tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(cell_maps.slide_shape_of(demo), np.int32))
    with pytest.raises(InputError, match="empty"):
        hs.run(cell_maps.superresolve_cells(fitted, demo, path))


def test_a_segmentation_of_another_slide_size_is_refused(demo, fitted, segmentation, no_work, tmp_path):
    half = np.asarray(segmentation.labels)[::2, ::2]
    other = segmentation_from_labels(half, 1.0, mpp=None, source="half.tif")  # no scale stated: 1 px per px
    with pytest.raises(InputError, match="another slide") as excinfo:
        hs.run(cell_maps.superresolve_cells(fitted, demo, other))
    one_line(excinfo)
    np.save(tmp_path / "half.npy", half)
    with pytest.raises(InputError, match="state its scale"):
        hs.run(cell_maps.superresolve_cells(fitted, demo, tmp_path / "half.npy"))
    scaled = segmentation_from_labels(half, 2.0, mpp=None, source="half.tif")  # with its scale it is accepted
    assert cell_maps.section_segmentation(scaled, demo) is scaled


def test_cells_far_from_every_spot_are_refused(demo, fitted, no_work):
    shape = cell_maps.slide_shape_of(demo)
    labels = np.zeros(shape, np.int32)
    labels[2:8, 2:8] = 1  # the slide's corner, in the margin outside the spot array
    corner = segmentation_from_labels(labels, 1.0, mpp=None, source="corner.tif")
    with pytest.raises(InputError, match="within one spot spacing") as excinfo:
        hs.run(cell_maps.superresolve_cells(fitted, demo, corner))
    one_line(excinfo)


def test_cells_that_miss_every_measured_footprint_are_refused(demo, fitted, no_work):
    xy = np.asarray(demo.obsm["spatial"])
    spacing = np.sort(np.linalg.norm(xy[1:] - xy[0], axis=1))[0]
    labels = np.zeros(cell_maps.slide_shape_of(demo), np.int32)
    # Between four spots near the middle of the array, farther than a spot's radius from each.
    middle = xy[np.argmin(np.linalg.norm(xy - xy.mean(axis=0), axis=1))]
    x, y = middle + spacing / 2
    labels[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 7
    between = segmentation_from_labels(labels, 1.0, mpp=None, source="between.tif")
    with pytest.raises(InputError, match="measured footprint") as excinfo:
        hs.run(cell_maps.superresolve_cells(fitted, demo, between))
    one_line(excinfo)


@pytest.mark.parametrize(("kwargs", "match"), [({"consistency": "smoth"}, "smooth"),
                                                ({"expand_um": -1.0}, "zero or more"),
                                                ({"expand_um": float("nan")}, "zero or more")])
def test_bad_settings_are_refused(demo, fitted, segmentation, no_work, kwargs, match):
    with pytest.raises(InputError, match=match):
        hs.run(cell_maps.superresolve_cells(fitted, demo, segmentation, **kwargs))


def test_a_model_of_spots_is_refused(demo, segmentation, no_work):
    spots_model = SimpleNamespace(config=SimpleNamespace(model="histosge"))
    with pytest.raises(InputError, match="predicts whole spots"):
        hs.run(cell_maps.superresolve_cells(spots_model, demo, segmentation))


def test_expanding_without_a_pixel_size_is_refused(demo, fitted, segmentation, no_work):
    no_mpp = demo.copy()
    no_mpp.uns["histosge"] = {**demo.uns["histosge"], "mpp": None}
    with pytest.raises(InputError, match="pixel size"):
        hs.run(cell_maps.superresolve_cells(fitted, no_mpp, segmentation, expand_um=2.0))


# ----------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_her2st_nuclei_as_units(her2st_b4, tmp_path):
    from napari_histosge.cells import detect_nuclei, slide_source
    from napari_histosge.slide.open import open_slide

    adata = hs.read_spots(her2st_b4)
    source = slide_source(her2st_b4)
    with open_slide(source.image) as slide:
        nuclei = hs.run(detect_nuclei(slide, mpp=source.mpp, scale=source.scale))
    model = hs.fit(adata, train_config=hs.train_config("subspot", n_top_genes=50))
    cells = hs.run(cell_maps.superresolve_cells(model, adata, nuclei))
    assert cells.n_obs > 10_000 and np.all(np.isfinite(cells.X))
    # Spots as the mean of their nuclei agree with spots as the mean of grid squares (the same smooth map).
    xy, diameter = np.asarray(adata.obsm["spatial"]), float(adata.uns["histosge"]["spot_diameter_px"])
    discs = model.footprints().cell_weights(np.asarray(cells.obsm["spatial"]))
    from_cells = np.log1p(np.asarray(discs @ np.expm1(np.asarray(cells.X, np.float64))))
    from_grid = hs.run(grid_maps.predict_discs(model, adata, xy, diameter))
    pcc = [np.corrcoef(from_cells[:, g], from_grid[:, g])[0, 1] for g in range(from_grid.shape[1])]
    assert np.nanmean(pcc) > 0.9


@pytest.fixture(scope="module")
def imaged(demo):
    """A fit with the image modulation on: the cell maps' image path (``fitted`` has it off)."""
    return hs.fit(demo, train_config=hs.train_config("subspot", n_top_genes=20, cell_um=30.0,
                                                     image_modulation=True))


def test_a_cells_features_are_the_bilinear_sum_of_its_four_corner_squares(demo, imaged, segmentation):
    model = as_cell_model(imaged)
    assert model.uses_image
    path, scale = require_spot_image(demo)
    units = segmentation.units()
    centroids = units.centroids_xy[cell_maps.cells_near_spots(units, demo)][::7]
    sampled = hs.run(cell_maps.features_at(model, demo, centroids))
    cell_px = float(model.cell_px)
    grid = CellGrid.covering(centroids.min(axis=0) - cell_px, centroids.max(axis=0) + cell_px, cell_px)
    squares = hs.run(cell_features(path, scale, grid)).reshape(grid.shape[0], grid.shape[1], -1)
    for xy, got in zip(centroids, sampled, strict=True):
        col, row = (xy - np.asarray(grid.origin_xy)) / cell_px
        c0, r0 = int(np.floor(col)), int(np.floor(row))
        fc, fr = col - c0, row - r0
        expected = ((1 - fc) * (1 - fr) * squares[r0, c0] + fc * (1 - fr) * squares[r0, c0 + 1]
                    + (1 - fc) * fr * squares[r0 + 1, c0] + fc * fr * squares[r0 + 1, c0 + 1])
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_cell_map_with_the_image_on(demo, imaged, segmentation):
    assert as_cell_model(imaged).uses_image
    cells = hs.run(cell_maps.superresolve_cells(imaged, demo, segmentation, consistency="exact"))
    assert cells.n_obs > 0 and cells.X.shape == (cells.n_obs, len(imaged.genes))
    assert np.all(np.isfinite(cells.X))
    weights = imaged.footprints().cell_weights(np.asarray(cells.obsm["spatial"]), nearest_if_empty=False)
    means = np.log1p(np.asarray(weights @ np.expm1(np.asarray(cells.X, np.float64))))
    assert np.abs(means - dense_targets(normalize_log1p(demo), imaged.genes)).max() < 1e-3
