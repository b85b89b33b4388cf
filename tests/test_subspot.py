"""The sub-spot model: cell grids and footprints, cell features, fitting, consistency, grid maps and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import napari_histosge as hs
from napari_histosge.errors import InputError
from napari_histosge.evaluation.metrics import within_bin_pcc
from napari_histosge.features.cell_raster import cell_features, n_cell_features
from napari_histosge.io import require_spot_image
from napari_histosge.io.preprocess import dense_targets, normalize_log1p
from napari_histosge.models.subspot.calibration import calibrate
from napari_histosge.models.subspot.geometry import cell_px_for
from napari_histosge.models.subspot.prior import prior_rates
from napari_histosge.pipeline import grid_maps
from napari_histosge.pipeline.pooled import own_bin_copy, pool_spots
from napari_histosge.slide.cell_grid import MAX_CELLS, CellGrid, Footprints


@pytest.fixture(scope="module")
def demo(demo_dir):
    return hs.read_spots(demo_dir)


@pytest.fixture(scope="module")
def fitted(demo):
    # Cells of 30 µm (about 16 px on the demo slide) keep the tests quick.
    return hs.fit(demo, train_config=hs.train_config("subspot", n_top_genes=20, cell_um=30.0))


@pytest.fixture(scope="module")
def unmasked_map(demo, fitted):
    return hs.superresolve_grid(fitted, demo, mask=None)


# ----------------------------------------------------------------------------- geometry
def test_grid_covers_a_box_and_keeps_cells():
    grid = CellGrid.covering((10.0, 20.0), (50.0, 40.0), 10.0)
    assert grid.shape == (2, 4)
    centres = grid.centres()
    assert np.allclose(centres[0], (15.0, 25.0)) and np.allclose(centres[-1], (45.0, 35.0))
    kept = grid.keep(centres[:, 0] > 30)
    assert kept.n_cells == 4 and np.all(kept.centres()[:, 0] > 30)
    rows, cols = kept.rows_cols()
    assert set(cols) == {2, 3} and set(rows) == {0, 1}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_bad_cell_size_is_refused(bad):
    with pytest.raises(InputError, match="positive size"):
        CellGrid.covering((0, 0), (10, 10), bad)


def test_a_grid_over_ten_million_cells_is_refused():
    with pytest.raises(InputError, match="over the limit"):
        CellGrid.covering((0, 0), (1e5, 1e5), 1e5 / np.sqrt(MAX_CELLS) / 1.5)


def test_footprint_weights_take_the_cells_whose_centre_is_inside():
    grid = CellGrid.covering((0, 0), (100, 100), 1.0)
    disc = Footprints(np.array([[50.0, 50.0]]), "disc", 20.0).cell_weights(grid.centres())
    assert abs(disc.nnz - np.pi * 10**2) < 0.05 * np.pi * 10**2
    assert np.isclose(disc.sum(), 1.0)
    square = Footprints(np.array([[50.0, 50.0]]), "square", 20.0, angle=np.pi / 4).cell_weights(grid.centres())
    assert abs(square.nnz - 400) <= 40
    inside = grid.centres()[square.indices]
    # A square rotated by 45 degrees reaches its corners along the axes.
    assert np.abs(inside - 50).max() > 12
    tiny = Footprints(np.array([[50.2, 50.2]]), "disc", 0.1)
    assert tiny.cell_weights(grid.centres()).nnz == 1
    assert tiny.cell_weights(grid.centres(), nearest_if_empty=False).nnz == 0


def test_cell_size_defaults_and_refuses_cells_under_two_image_pixels():
    assert np.isclose(cell_px_for(None, 0.5, 1.0), 28.0)  # 14 µm at 0.5 µm/px
    # a coarse image (a Visium lowres image at scale 0.05): the default grows to two image pixels
    assert np.isclose(cell_px_for(None, 0.5, 0.05), 40.0)
    with pytest.raises(InputError, match="image pixels wide"):
        cell_px_for(10.0, 0.5, 0.05)
    with pytest.raises(InputError, match="pixel size"):
        cell_px_for(10.0, None, 1.0)


def test_the_prior_follows_the_footprints_and_is_smooth():
    xy = np.array([[0.0, 0.0], [100.0, 0.0]])
    rates = np.array([[1.0], [3.0]])
    at = prior_rates(np.array([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0], [1e6, 0.0]]), xy, rates, 30.0)
    # halfway, the mean on the log1p scale: expm1 of the mean of log1p(1) and log1p(3)
    assert at[0, 0] < 1.1 and np.isclose(at[1, 0], np.sqrt(8) - 1) and at[2, 0] > 2.9 and np.isfinite(at[3, 0])


# ----------------------------------------------------------------------------- features
@pytest.mark.slow
def test_cell_features_are_finite_and_follow_the_tissue(demo):
    path, scale = require_spot_image(demo)
    # the demo slide is white glass in its corner and stained tissue in its middle
    corner = CellGrid.covering((0, 0), (200, 200), 20.0)
    glass = hs.run(cell_features(path, scale, corner))
    assert glass.shape == (corner.n_cells, n_cell_features()) and np.all(np.isfinite(glass))
    middle = CellGrid.covering((900, 900), (1100, 1100), 20.0)
    tissue = hs.run(cell_features(path, scale, middle))
    assert tissue[:, 0].std() > 3 * glass[:, 0].std()  # haematoxylin at the finest scale


# ----------------------------------------------------------------------------- fitting and prediction
def test_exact_consistency_reproduces_the_measured_spots(demo, fitted):
    xy, diameter = np.asarray(demo.obsm["spatial"]), fitted.meta.spot_diameter_px
    pred = hs.run(grid_maps.predict_discs(fitted, demo, xy, diameter, consistency="exact"))
    truth = dense_targets(normalize_log1p(demo), fitted.genes)
    assert np.abs(pred - truth).max() < 1e-4
    assert fitted.meta.feature_identity.startswith("cell_raster")
    assert fitted.meta.extra == {}  # every entry the fit writes is a declared field of its metadata


def test_counting_consistency_follows_counts_within_their_noise(demo, fitted):
    from napari_histosge.models.subspot.consistency import counting_targets

    # A gene counted many times follows its measurement; one counted zero times in a spot
    # where the model expects some is not painted as a hole.
    predicted = np.array([[100.0, 50.0]])
    measured = np.array([[120.0, 0.0]])
    target = counting_targets(predicted, measured, np.array([10_000.0]), np.array([50.0, 50.0]))
    assert abs(target[0, 0] - 120.0) < 0.1 * 120 and target[0, 1] > 0.4 * 50.0
    xy, diameter = np.asarray(demo.obsm["spatial"]), fitted.meta.spot_diameter_px
    pred = hs.run(grid_maps.predict_discs(fitted, demo, xy, diameter, consistency="counting"))
    truth = dense_targets(normalize_log1p(demo), fitted.genes)
    pcc = [np.corrcoef(pred[:, g], truth[:, g])[0, 1] for g in range(truth.shape[1])]
    assert np.nanmean(pcc) > 0.8  # the spots' own counts dominate their prediction
    default = hs.run(hs.steps.predict_spots(fitted, demo))  # the default: the smooth map, not the counts
    assert np.abs(np.asarray(default.X) - truth).max() > 1e-2


def test_smooth_consistency_draws_no_discs(demo, fitted):
    from napari_histosge.evaluation.map_artefacts import disc_contrast_ratio

    xy, diameter = np.asarray(demo.obsm["spatial"]), fitted.meta.spot_diameter_px
    wide = hs.fit(demo, train_config=hs.train_config("subspot", n_top_genes=20, cell_um=30.0, prior_bandwidth=1.5))

    def ratio(model, mode):
        grid = hs.run(hs.steps.superresolve_grid(model, demo, mask=None, grid_um=10.0, consistency=mode))
        return disc_contrast_ratio(grid, xy, diameter)["ratio"]

    assert ratio(wide, "exact") > 3.0  # a factor per spot stamps it on the map: the measure sees discs
    assert ratio(wide, "smooth") <= 1.3
    # At the default (narrower) bandwidth the correction adds no disc to what the prior draws itself.
    assert ratio(fitted, "smooth") <= 1.1 * ratio(fitted, "none")


def test_smooth_consistency_agrees_with_the_measurement_in_expectation(demo, fitted):
    xy, diameter = np.asarray(demo.obsm["spatial"]), fitted.meta.spot_diameter_px
    truth = np.expm1(dense_targets(normalize_log1p(demo), fitted.genes))
    smooth, alone = (np.expm1(hs.run(grid_maps.predict_discs(fitted, demo, xy, diameter, consistency=mode)))
                     for mode in ("smooth", "none"))

    def level_error(pred):  # per gene, the spots' mean rate off the measured mean, relative
        return np.abs(pred.mean(axis=0) - truth.mean(axis=0)) / truth.mean(axis=0)

    # The spots' means add up to the measurement's (the prior alone does not), and the map is
    # closer to each spot than the prior, yet not forced onto each spot's counts (as exact is).
    assert level_error(alone).max() > 0.2 and level_error(smooth).max() < 0.15
    assert np.abs(smooth - truth).mean() < 0.9 * np.abs(alone - truth).mean()
    assert np.abs(smooth - truth).mean() > 0.01 * truth.mean()


def test_an_unknown_consistency_is_refused_in_one_line():
    with pytest.raises(InputError, match="smooth"):
        grid_maps.check_consistency("smoth")


def test_the_default_model_reads_no_cell_features(demo, fitted, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the default model ignores the image, so no cell features are needed")

    assert not fitted.uses_image
    monkeypatch.setattr(grid_maps, "cell_features", refuse)
    grid = hs.run(hs.steps.superresolve_grid(fitted, demo, mask=None, grid_um=fitted.meta.cell_um * 2))
    assert grid.n_obs > 0


def test_the_model_saves_and_loads_with_the_same_map(demo, fitted, unmasked_map, tmp_path):
    fitted.save(tmp_path / "m.pt")
    loaded = hs.load_model(tmp_path / "m.pt")
    assert loaded.products == ("grid", "cells") and loaded.genes == fitted.genes
    again = hs.run(hs.steps.superresolve_grid(loaded, demo, mask=None))
    assert np.array_equal(np.asarray(unmasked_map.X), np.asarray(again.X))


def test_the_grid_map_contract(demo, fitted, unmasked_map, tmp_path):
    grid = hs.run(hs.steps.superresolve_grid(fitted, demo))
    info = grid.uns["histosge"]["grid"]
    assert np.isclose(info["cell_px"], fitted.cell_px) and info["cell_um"] > 0
    rows, cols = grid.obs["grid_row"].to_numpy(), grid.obs["grid_col"].to_numpy()
    origin, side = info["origin_xy"], info["cell_px"]
    expected = np.stack([origin[0] + cols * side, origin[1] + rows * side], 1)
    assert np.allclose(grid.obsm["spatial"], expected)
    assert list(grid.var_names) == fitted.genes and np.all(np.isfinite(grid.X))
    unmasked = unmasked_map
    assert grid.n_obs < unmasked.n_obs  # the detected tissue leaves out glass near the edge spots
    grid.write_h5ad(tmp_path / "grid.h5ad")  # the contract survives a file



def test_consistency_can_be_switched_off(demo, fitted, unmasked_map):
    off = hs.run(hs.steps.superresolve_grid(fitted, demo, mask=None, consistency="none"))
    assert not np.allclose(np.asarray(off.X), np.asarray(unmasked_map.X))


def test_a_coarser_grid_and_spots_as_means_of_cells(demo, fitted):
    coarse = hs.run(hs.steps.superresolve_grid(fitted, demo, grid_um=fitted.meta.cell_um * 2, mask=None))
    assert np.isclose(coarse.uns["histosge"]["grid"]["cell_px"], 2 * fitted.cell_px)
    xy = np.asarray(demo.obsm["spatial"])[:5] + fitted.meta.spot_diameter_px  # between spots
    pred = hs.run(hs.steps.predict_spots(fitted, demo, positions=xy, diameter=40.0))
    assert pred.shape == (5, len(fitted.genes)) and np.all(np.isfinite(pred.X))


# ----------------------------------------------------------------------------- bad input, before any work
@pytest.fixture()
def no_features(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cells were predicted before the input was checked")

    monkeypatch.setattr(grid_maps, "grid_rates", refuse)


def test_a_grid_cell_under_two_pixels_fails_before_work(demo, fitted, no_features):
    with pytest.raises(InputError, match="image pixels wide"):
        hs.run(hs.steps.superresolve_grid(fitted, demo, grid_um=0.5))


@pytest.mark.parametrize("grid_um", [0.1, 0.0, -3.0, float("nan")])
def test_a_grid_under_the_smallest_cell_is_refused_as_the_cli_refuses_it(demo, fitted, no_features, grid_um):
    # The same rule as --grid-um (slide.grid_size), so the Super-resolve widget refuses 0.1 µm as the CLI does.
    with pytest.raises(InputError, match="at least 0.5 µm|positive number of µm") as info:
        hs.superresolve_grid(fitted, demo, grid_um=grid_um)
    assert "\n" not in str(info.value)


def test_a_grid_over_the_cell_limit_fails_before_work(demo, fitted, no_features, monkeypatch):
    monkeypatch.setattr("napari_histosge.slide.cell_grid.MAX_CELLS", 100)
    with pytest.raises(InputError, match="over the limit"):
        hs.run(hs.steps.superresolve_grid(fitted, demo, mask=None))


def test_a_mask_that_misses_the_spots_fails_before_work(demo, fitted, no_features, tmp_path):
    far = {"type": "Polygon", "coordinates": [[[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]]}
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    with pytest.raises(InputError, match="spots"):
        hs.run(hs.steps.superresolve_grid(fitted, demo, mask=str(tmp_path / "far.geojson")))


def test_predicting_from_spot_features_points_to_the_slide_entries(fitted):
    xy = np.zeros((2, 2))
    expected = (r"^the subspot model predicts from the slide's cells, not from spot features: "
                r"use napari_histosge.predict_spots or napari_histosge.superresolve$")
    with pytest.raises(InputError, match=expected):
        fitted.predict(np.zeros((2, 3)), np.zeros((2, 3)), xy)


@pytest.mark.parametrize("diameter", [0.0, -3.0, 1e9])
def test_a_diameter_outside_the_range_fails_before_work(demo, fitted, no_features, diameter):
    with pytest.raises(InputError, match="diameter"):
        hs.run(hs.steps.predict_spots(fitted, demo, positions=np.asarray(demo.obsm["spatial"])[:3], diameter=diameter))


def test_the_subspot_model_does_not_predict_other_sections(demo, fitted, tmp_path):
    other = demo.copy()
    other.uns["histosge"] = {**demo.uns["histosge"], "source": str(tmp_path / "elsewhere")}
    other.obsm["spatial"] = np.asarray(demo.obsm["spatial"]) * 1.1
    with pytest.raises(InputError):
        hs.run(hs.steps.predict_spots(fitted, other))


# ----------------------------------------------------------------------------- calibration
def test_the_image_modulation_is_calibrated_one_scale_up(demo, tmp_path):
    config = hs.train_config("subspot", n_top_genes=10, cell_um=30.0, image_modulation=True)
    model = hs.run(hs.steps.fit(demo, train_config=config))
    calibration = model.meta.calibration
    assert calibration["modulation_share"] in (0.0, 0.5, 1.0) and calibration["calibration_squares"] >= 8
    assert "one scale up" in model.training_summary()
    assert model.uses_image == (calibration["modulation_share"] > 0)
    detail = model.model.detail.numpy()
    assert detail.shape == (10,) and set(np.unique(detail)) <= {0.0, 0.5, 1.0}
    model.save(tmp_path / "image.pt")
    assert np.array_equal(hs.load_model(tmp_path / "image.pt").model.detail.numpy(), detail)


def test_calibration_keeps_an_image_that_explains_sub_footprint_detail():
    rng = np.random.default_rng(0)
    grid = CellGrid.covering((0, 0), (400, 400), 4.0)
    cells = grid.centres()
    signal = np.sin(cells[:, 0] / 9.0) + np.cos(cells[:, 1] / 7.0)  # finer than a footprint
    feats = np.stack([signal, rng.normal(size=len(cells))], 1)
    feats = (feats - feats.mean(0)) / feats.std(0)
    spots = Footprints(np.stack(np.meshgrid(np.arange(20, 400, 40.0), np.arange(20, 400, 40.0)), -1).reshape(-1, 2),
                       "square", 40.0)
    weights = spots.cell_weights(cells)
    rate = np.exp(1.0 + 0.8 * signal)[:, None]
    targets = np.log1p(np.asarray(weights @ rate))

    def ridge(x, y):
        return np.linalg.lstsq(x, y, rcond=None)[0].T

    informative = calibrate(cells, feats, weights, targets, spots.centres, ridge, 0.75)
    assert informative is not None and informative.share > 0 and informative.score > informative.score_without_image
    noise = calibrate(cells, rng.normal(size=feats.shape), weights, targets, spots.centres, ridge, 0.75)
    assert noise is not None and noise.score - noise.score_without_image < informative.score - \
        informative.score_without_image


def test_calibration_on_split_counts_does_not_reward_copying_the_noise():
    import anndata as ad

    from napari_histosge.models.subspot.calibration import split_targets

    # Every footprint counts the same expression: all differences between them are noise.
    rng = np.random.default_rng(1)
    grid = CellGrid.covering((0, 0), (400, 400), 8.0)
    spots = Footprints(np.stack(np.meshgrid(np.arange(20, 400, 40.0), np.arange(20, 400, 40.0)), -1).reshape(-1, 2),
                       "square", 40.0)
    weights = spots.cell_weights(grid.centres())
    genes = [f"g{i}" for i in range(20)]
    counts = ad.AnnData(X=rng.poisson(30.0, (len(spots), len(genes))).astype(np.float32),
                        var=pd.DataFrame(index=genes))
    targets = dense_targets(normalize_log1p(counts), genes).astype(np.float64)
    feats = rng.normal(size=(grid.n_cells, 2))

    def ridge(x, y):
        return np.linalg.lstsq(x, y, rcond=None)[0].T

    unsplit = calibrate(grid.centres(), feats, weights, targets, spots.centres, ridge, 0.75)
    split = calibrate(grid.centres(), feats, weights, targets, spots.centres, ridge, 0.75,
                      split_targets(counts, genes))
    assert unsplit is not None and split is not None and split.split and not unsplit.split
    assert unsplit.score > 0.2  # a footprint's noise is in its square: the unsplit score rewards it
    assert abs(split.score) < 0.1


def test_calibration_of_normalised_data_falls_back_to_the_pooled_values():
    import anndata as ad

    from napari_histosge.models.subspot.calibration import split_targets

    normalised = ad.AnnData(X=np.full((4, 2), 0.5, np.float32), var=pd.DataFrame(index=["a", "b"]))
    assert split_targets(normalised, ["a", "b"]) is None


# ----------------------------------------------------------------------------- pooling
def test_pooling_sums_spots_into_bins_of_about_the_factor(her2st_b4):
    adata = hs.read_spots(her2st_b4)
    pooled = pool_spots(adata, 4)
    sizes = pooled.bin_sizes()
    assert sizes.max() <= 4 and 2.5 < sizes.mean() <= 4
    assert np.isclose(pooled.bins.X.sum(), adata.X.sum())
    assert pooled.bins.uns["histosge"]["footprint"]["shape"] == "square"
    values = np.arange(pooled.bins.n_obs, dtype=float)[:, None]
    assert np.array_equal(own_bin_copy(pooled, values)[:, 0], values[pooled.spot_bin, 0])
    with pytest.raises(InputError, match="at least 2"):
        pool_spots(adata, 1)


def test_within_bin_pcc():
    bins = np.array([0, 0, 1, 1, 2])
    truth = np.array([[1.0], [2.0], [5.0], [7.0], [9.0]])
    assert np.isclose(within_bin_pcc(truth, truth, bins)[0], 1.0)
    assert within_bin_pcc(np.array([[1.5], [1.5], [6.0], [6.0], [9.0]]), truth, bins)[0] == 0.0
    assert np.isclose(within_bin_pcc(-truth, truth, bins)[0], -1.0)


def test_the_spot_level_trainer_points_to_the_section_fit():
    from napari_histosge.models import train
    from napari_histosge.training.inputs import TrainingData

    data = TrainingData(np.zeros((3, 2)), np.zeros((3, 3)), np.eye(3, 2), np.ones((3, 1)), ["a", "b", "c"], ["G"])
    with pytest.raises(InputError, match="trains on a section's slide"):
        hs.run(train(data, hs.train_config("subspot")))


# ----------------------------------------------------------------------------- the model's product
def test_superresolve_asks_the_subspot_model_for_its_grid(demo, fitted, unmasked_map):
    # One entry: the model's default product is its grid, the same map superresolve_grid makes.
    grid = hs.superresolve(fitted, demo, mask=None)
    assert list(grid.obs_names) == list(unmasked_map.obs_names)
    np.testing.assert_array_equal(grid.X, unmasked_map.X)
    assert hs.superresolve(fitted, demo, product="grid", mask=None).n_obs == grid.n_obs


def test_the_grid_takes_a_mask_as_superresolve_grid_does_and_none_is_no_mask(demo, fitted, unmasked_map, tmp_path):
    from pathlib import Path

    from napari_histosge.pipeline.grid_maps import section_mask

    for made in (hs.superresolve(fitted, demo, mask="none"), hs.superresolve_grid(fitted, demo, mask="none")):
        np.testing.assert_array_equal(made.X, unmasked_map.X)  # "none" is no mask, not a file name
    detected = section_mask(demo, "auto")
    by_object = hs.superresolve(fitted, demo, mask=detected)  # a TissueMask passes as it is
    assert by_object.n_obs == hs.superresolve_grid(fitted, demo, mask=detected).n_obs < unmasked_map.n_obs
    lo, hi = np.asarray(demo.obsm["spatial"]).min(axis=0) - 50, np.asarray(demo.obsm["spatial"]).max(axis=0) + 50
    box = {"type": "Polygon", "coordinates": [[[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]],
                                               [lo[0], lo[1]]]]}
    path = tmp_path / "box.geojson"
    path.write_text(json.dumps(box))
    by_path = hs.superresolve(fitted, demo, mask=Path(path))  # an os.PathLike, kept as text
    assert list(by_path.obs_names) == list(hs.superresolve_grid(fitted, demo, mask=str(path)).obs_names)


def test_a_mask_of_another_kind_is_one_line(demo, fitted, no_features):
    with pytest.raises(InputError, match=r"^mask must be text or None \(keep every cell near a spot\), got 3$"):
        hs.superresolve(fitted, demo, mask=3)


def test_the_widgets_none_mask_is_no_mask(demo, fitted, unmasked_map, make_napari_viewer):
    from napari_histosge.plugin.widgets.superres import GRID, SuperResolveWidget, product_job

    widget = SuperResolveWidget(make_napari_viewer())
    widget.positions.value = GRID
    widget.option("mask").value = "none"
    options = widget.product_options.given_values()
    assert options == {"mask": "none"}
    np.testing.assert_array_equal(hs.run(product_job(fitted, demo, GRID, options, None, None)).X, unmasked_map.X)


def test_a_lattice_or_its_fold_is_refused_for_a_subspot_model_before_work(demo, fitted, no_features):
    with pytest.raises(InputError, match="the subspot model makes grid and cells, not lattice"):
        hs.superresolve(fitted, demo, product="lattice")
    with pytest.raises(InputError, match="the grid product takes grid_um, mask, consistency, not fold"):
        hs.superresolve(fitted, demo, 4)
    with pytest.raises(InputError, match="at least 0.5 µm"):  # the grid's own check, through the one entry
        hs.superresolve(fitted, demo, grid_um=0.1)
