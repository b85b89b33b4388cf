"""The ``cells`` product of the sub-spot model: ``histosge superresolve --cells SEG``, the library and the widget.

Bad input (a missing file, a label image of another size without its scale, an empty
segmentation, cells that miss every spot, polygons in another coordinate system) is one line,
exit 2, before the section's features are read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import napari_histosge as hs
from napari_histosge.cli import main
from napari_histosge.errors import InputError
from napari_histosge.pipeline import cell_maps
from test_cell_maps import nucleus_labels


@pytest.fixture(scope="module")
def subspot(demo, tmp_path_factory):
    """A small subspot model of the demo section, saved."""
    model = hs.fit(demo, train_config=hs.train_config("subspot", n_top_genes=20, cell_um=30.0))
    path = tmp_path_factory.mktemp("model") / "subspot.pt"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def slide_shape(demo) -> tuple[int, int]:
    return cell_maps.slide_shape_of(demo)


@pytest.fixture(scope="module")
def label_file(slide_shape, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "nuclei.npy"
    np.save(path, nucleus_labels(slide_shape))
    return path


@pytest.fixture
def no_features(monkeypatch):
    """Reading image features fails the test: bad input must be refused before."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("image features were read before the bad input was refused")

    monkeypatch.setattr(cell_maps, "cell_features", refuse)


def one_line_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cells_alone_picks_the_cells_product_and_writes_the_cell_table(subspot, demo_dir, label_file, tmp_path,
                                                                       capsys) -> None:
    import anndata as ad

    _, path = subspot
    out = tmp_path / "cells.h5ad"
    assert main(["superresolve", str(path), str(demo_dir), "--cells", str(label_file), "--expand-um", "2",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = ad.read_h5ad(out)
    assert f"{result.n_obs} segmented cells from {label_file}" in printed
    info = result.uns["histosge"]
    assert info["positions"] == "cells" and info["cells"]["source"] == str(label_file)
    assert info["cells"]["expand_um"] == 2.0 and info["model_path"] == str(path.resolve())
    assert {"label", "area_px", "area_um2"} <= set(result.obs.columns)
    labels = nucleus_labels(cell_maps.slide_shape_of(hs.read_spots(demo_dir)))
    xy = np.asarray(result.obsm["spatial"])
    rows, cols = np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)
    assert np.array_equal(labels[rows, cols], result.obs["label"].to_numpy())  # each centroid on its own cell
    # grown by 2 µm: larger than the discs drawn
    assert np.all(result.obs["area_px"].to_numpy() > np.bincount(labels.ravel())[result.obs["label"]])


def test_the_library_asks_the_subspot_model_for_cells_and_keeps_grid_its_default(subspot, demo, label_file) -> None:
    model, _ = subspot
    cells = hs.superresolve(model, demo, product="cells", cells=str(label_file), consistency="exact")
    assert cells.uns["histosge"]["positions"] == "cells" and cells.uns["histosge"]["consistency"] == "exact"
    same = hs.run(cell_maps.superresolve_cells(model, demo, str(label_file), consistency="exact"))
    np.testing.assert_allclose(cells.X, same.X, rtol=1e-5)
    assert "grid" in hs.superresolve(model, demo).uns["histosge"]  # no product named: the grid


def test_a_missing_segmentation_file_is_one_line_before_the_model_loads(subspot, demo_dir, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    import napari_histosge.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    _, path = subspot
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(tmp_path / "no.tif"),
                                  "--out", str(tmp_path / "o.h5ad")])
    assert "--cells file not found" in err and "no.tif" in err
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(tmp_path / "no.tif"),
                                  "--grid-um", "20", "--out", str(tmp_path / "o.h5ad")])
    assert "different products" in err
    assert not (tmp_path / "o.h5ad").exists()


def test_a_scale_for_geojson_polygons_is_one_line_before_the_model_loads(subspot, demo_dir, tmp_path, capsys,
                                                                           monkeypatch) -> None:
    import napari_histosge.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    _, path = subspot
    polygons = tmp_path / "cells.geojson"
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(polygons),
                                  "--label-scale", "2", "--out", str(tmp_path / "o.h5ad")])
    assert "--label-scale is for a label image file" in err and not (tmp_path / "o.h5ad").exists()


def test_expanding_without_a_pixel_size_is_refused_before_the_labels_are_read(subspot, demo, label_file,
                                                                              monkeypatch) -> None:
    from types import SimpleNamespace

    def refuse(*_args, **_kwargs):
        raise AssertionError("the label image was read before the expansion was checked")

    monkeypatch.setattr(cell_maps, "read_segmentation", refuse)
    model, _ = subspot
    no_mpp = demo.copy()
    no_mpp.uns["histosge"] = {**demo.uns["histosge"], "mpp": None}
    options = SimpleNamespace(cells=str(label_file), expand_um=2.0, label_scale=None, consistency="smooth")
    with pytest.raises(InputError, match="pixel size"):
        hs.run(cell_maps.cells_product(model, no_mpp, options))


def test_a_label_image_of_another_size_needs_its_scale(subspot, demo_dir, slide_shape, tmp_path, capsys,
                                                       no_features) -> None:
    _, path = subspot
    half = nucleus_labels(slide_shape)[::2, ::2]
    seg = tmp_path / "half.npy"
    np.save(seg, half)
    out = tmp_path / "o.h5ad"
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(seg), "--out", str(out)])
    assert "state its scale" in err and not out.exists()
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(seg), "--label-scale",
                                  "3", "--out", str(out)])
    assert "another image or another pixel size" in err and not out.exists()


def test_the_stated_scale_places_a_downscaled_label_image(subspot, demo, slide_shape, tmp_path) -> None:
    model, _ = subspot
    h, w = slide_shape
    labels = nucleus_labels(slide_shape)[::2, ::2]
    assert labels.shape == (-(-h // 2), -(-w // 2))
    seg = tmp_path / "half.npy"
    np.save(seg, labels)
    cells = hs.superresolve(model, demo, product="cells", cells=str(seg), label_scale=2.0)
    assert cells.uns["histosge"]["cells"]["px_per_label_px"] == 2.0 and cells.n_obs > 0


def test_an_empty_segmentation_and_cells_that_miss_every_spot_are_one_line(subspot, demo_dir, slide_shape, tmp_path,
                                                                          capsys, no_features) -> None:
    _, path = subspot
    out = tmp_path / "o.h5ad"
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros(slide_shape, np.int32))
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(empty), "--out",
                                  str(out)])
    assert "the segmentation is empty" in err
    corner = np.zeros(slide_shape, np.int32)
    corner[:4, :4] = 1  # one cell in a corner, far from the measured spots
    far = tmp_path / "corner.npy"
    np.save(far, corner)
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(far), "--out", str(out)])
    assert "no segmented cell lies within one spot spacing of a measured spot" in err
    assert not out.exists()


def test_polygons_in_another_coordinate_system_are_one_line(subspot, demo_dir, slide_shape, tmp_path, capsys,
                                                            no_features) -> None:
    _, path = subspot
    h, w = slide_shape
    x0, y0 = 10 * w, 10 * h  # as if given in another image's pixels
    square = [[x0, y0], [x0 + 20, y0], [x0 + 20, y0 + 20], [x0, y0 + 20], [x0, y0]]
    geo = tmp_path / "cells.geojson"
    geo.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]},
         "properties": {"objectType": "cell"}}]}))
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(geo), "--out",
                                  str(tmp_path / "o.h5ad")])
    assert "another coordinate system" in err
    err = one_line_error(capsys, ["superresolve", str(path), str(demo_dir), "--cells", str(geo), "--label-scale",
                                  "2", "--out", str(tmp_path / "o.h5ad")])
    assert "--label-scale is for a label image file" in err  # refused with the options


def test_the_options_are_checked_as_declared(subspot, demo) -> None:
    model, _ = subspot
    with pytest.raises(InputError, match="expand_um must be zero or more µm, got -1"):
        hs.superresolve(model, demo, product="cells", cells="nuclei", expand_um=-1.0)
    with pytest.raises(InputError, match="label_scale is for a label image file, not the nucleus detector"):
        hs.superresolve(model, demo, product="cells", cells="nuclei", label_scale=2.0)


def test_the_widget_offers_a_labels_layer_and_paints_each_cell_with_its_gene(subspot, demo_dir, slide_shape,
                                                                             make_napari_viewer, qtbot) -> None:
    from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
    from napari_histosge.plugin.widgets.layers import histosge_meta
    from napari_histosge.plugin.widgets.state import SESSION_MODELS, SessionModel
    from napari_histosge.plugin.widgets.superres import DETECT_NUCLEI, SuperResolveWidget

    model, path = subspot
    SESSION_MODELS.clear()
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = SuperResolveWidget(viewer)
    SESSION_MODELS.add(SessionModel("subspot", model, path))
    try:
        assert widget.positions.value == "grid" and set(widget.positions.choices) == {"grid", "cells"}
        assert widget.cells_from.native.isHidden()  # the grid takes no cells
        mpp = hs.read_spots(demo_dir).uns["histosge"]["mpp"]
        labels = nucleus_labels(slide_shape)
        # drawn at half resolution, as a segmentation of a downscaled image: the layer's scale places it
        layer = viewer.add_labels(labels[::2, ::2], scale=(2 * mpp, 2 * mpp), name="stardist")
        widget.positions.value = "cells"
        assert not widget.cells_from.native.isHidden() and "cells" not in widget.product_options.fields
        assert widget.cells_from.value == DETECT_NUCLEI and layer in widget.cells_from.choices
        widget.cells_from.value = layer
        widget.run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
        assert widget.last_outcome.error is None, widget.last_outcome.error
        pred, _ = widget.last_outcome.value
        assert pred.uns["histosge"]["cells"]["source"] == "labels layer stardist"
        assert pred.uns["histosge"]["cells"]["px_per_label_px"] == 2.0
        heat, _ = widget.added_layers
        gene = histosge_meta(heat)["gene"]
        assert heat.name == f"{gene} cells heatmap"
        # a cell's label pixels show its value, background and left-out cells none
        first = pred.obs["label"].to_numpy()[0]
        own = np.asarray(pred[:, gene].X).ravel()[0]
        shown = heat.data[labels[::2, ::2] == first]
        assert shown.size and np.allclose(shown, own)
        assert np.isnan(heat.data[labels[::2, ::2] == 0]).all()
        # on the slide: the cell's centroid (world) falls on its own painted pixels
        centroid = np.asarray(pred.obsm["spatial"])[0]
        row, col = np.floor(heat.world_to_data(centroid[::-1] * mpp) + 0.5).astype(int)
        assert labels[::2, ::2][row, col] == first
        # the Gene viewer repaints the cells and its legend follows
        genes = GeneViewerWidget(viewer)
        other = [g for g in model.genes if g != gene][0]
        assert genes.show_gene(other)
        assert heat.name == f"{other} cells heatmap" and genes.legend_layer is heat
        assert np.allclose(heat.data[labels[::2, ::2] == first], np.asarray(pred[:, other].X).ravel()[0])
    finally:
        SESSION_MODELS.clear()


def test_the_widget_refuses_a_model_of_whole_spots_before_detecting_nuclei(demo, monkeypatch) -> None:
    from types import SimpleNamespace

    from napari_histosge.pipeline.products import NUCLEI
    from napari_histosge.plugin.widgets.superres import cells_job
    from napari_histosge.progress import CancelToken

    def refuse(*_args, **_kwargs):
        raise AssertionError("nuclei were detected before the model was checked")

    monkeypatch.setattr(cell_maps, "detect_nuclei", refuse)
    lattice = SimpleNamespace(config=SimpleNamespace(model="histosge"), products=("lattice",))
    with pytest.raises(InputError, match="predicts whole spots"):
        hs.run(cells_job(lattice, demo, NUCLEI, {}, None, CancelToken()))


def test_a_scale_typed_for_a_file_does_not_block_the_detector_chosen_after(make_napari_viewer) -> None:
    from napari_histosge.pipeline.products import CELLS, NUCLEI
    from napari_histosge.plugin.widgets.superres import CELLS_FILE, DETECT_NUCLEI, SuperResolveWidget

    widget = SuperResolveWidget(make_napari_viewer())
    widget.cells_from.value = CELLS_FILE
    options = {"label_scale": 2.0}  # typed while the file was chosen, then hidden
    widget.cells_from.value = DETECT_NUCLEI
    assert widget._cells_choice(CELLS, options) == NUCLEI and "label_scale" not in options


def test_a_shapes_layer_is_read_as_cell_polygons_at_its_place_on_the_slide(demo) -> None:
    import napari.layers

    from napari_histosge.plugin.widgets.cell_sources import shapes_layer_segmentation

    u = demo.uns["histosge"]["mpp"]
    # full-res pixel i is centred at world i * u: this square covers pixels x 10..29, y 20..39
    square = np.array([[19.5, 9.5], [19.5, 29.5], [39.5, 29.5], [39.5, 9.5]]) * u
    ellipse = np.array([[60, 60], [60, 80], [80, 80], [80, 60]], np.float64) * u
    layer = napari.layers.Shapes([square, ellipse], shape_type=["rectangle", "ellipse"], name="outlines")
    seg = shapes_layer_segmentation(layer, demo)
    table = seg.table
    assert seg.n_cells == 2 and table.uns["histosge"]["cells"]["source"] == "napari Shapes layer 'outlines'"
    np.testing.assert_allclose(table.obsm["spatial"][0], [19.5, 29.5], atol=1e-6)
    np.testing.assert_allclose(table.obs["area_px"].to_numpy()[0], 400.0, rtol=1e-6)
    np.testing.assert_allclose(table.obsm["spatial"][1], [70.0, 70.0], atol=0.05)
    np.testing.assert_allclose(table.obs["area_px"].to_numpy()[1], np.pi * 100, rtol=0.02)
    lines = napari.layers.Shapes([square[:2]], shape_type=["line"], name="ruler")
    with pytest.raises(InputError, match="holds lines or paths"):
        shapes_layer_segmentation(lines, demo)


def test_nuclei_runs_the_built_in_detector_on_the_sections_slide(subspot, demo) -> None:
    model, _ = subspot
    cells = hs.superresolve(model, demo, product="cells")  # "nuclei", the option's default
    info = cells.uns["histosge"]["cells"]
    assert info["source"].startswith("histosge nuclei of ") and cells.n_obs > 0
    assert info["px_per_label_px"] > 0 and np.all(cells.obs["area_px"] > 0)


def test_a_fine_label_raster_is_shown_at_every_kth_pixel_in_place(demo, slide_shape) -> None:
    from napari_histosge.cells import segmentation_from_labels
    from napari_histosge.export.raster import cells_raster

    labels = nucleus_labels(slide_shape)
    cells = segmentation_from_labels(labels, 1.0, mpp=None, source="synthetic").table
    cells.uns["histosge"] = {"positions": "cells", "mpp": demo.uns["histosge"]["mpp"]}
    values = np.arange(cells.n_obs, dtype=np.float64)
    full = cells_raster(cells, labels, 1.0)
    coarse = cells_raster(cells, labels, 1.0, max_pixels=-(-labels.size // 9))
    assert coarse.cell == 3.0 and coarse.index.shape == labels[::3, ::3].shape
    np.testing.assert_array_equal(coarse.with_values(values), full.with_values(values)[::3, ::3])
    assert coarse.origin_rc == full.origin_rc == (0.0, 0.0)


def test_a_spatialdata_store_of_cells_holds_discs_of_their_area_annotated_by_the_table(subspot, demo_dir,
                                                                                    label_file, tmp_path) -> None:
    sd = pytest.importorskip("spatialdata")
    _, path = subspot
    out = tmp_path / "cells.zarr"
    assert main(["superresolve", str(path), str(demo_dir), "--cells", str(label_file), "--out", str(out),
                 "--quiet"]) == 0
    store = sd.read_zarr(out)
    table, cells = store.tables["table"], store.shapes["cells"]
    assert table.uns["spatialdata_attrs"]["region"] == "cells" and len(cells) == table.n_obs
    np.testing.assert_allclose(np.pi * cells["radius"].to_numpy() ** 2, table.obs["area_px"].to_numpy())
    np.testing.assert_allclose(np.c_[cells.geometry.x, cells.geometry.y], table.obsm["spatial"])


def test_large_label_ids_are_indexed_without_a_table_of_every_id() -> None:
    import tracemalloc

    import anndata as ad
    import pandas as pd

    from napari_histosge.export.raster import cells_raster

    ids = np.array([7, 2**26 + 5])  # a tile-and-object number: a table up to it would be 256 MiB
    labels = np.zeros((40, 40), np.int64)
    labels[5:10, 5:10], labels[20:30, 20:30] = ids
    cells = ad.AnnData(np.zeros((2, 1), np.float32), obs=pd.DataFrame({"label": ids}, index=["a", "b"]))
    tracemalloc.start()
    try:
        raster = cells_raster(cells, labels, 1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**25, f"{peak / 2**20:.0f} MiB for two cells"
    shown = raster.with_values(np.array([1.0, 2.0]))
    assert shown[7, 7] == 1.0 and shown[25, 25] == 2.0 and np.isnan(shown[0, 0])


def test_a_figure_paints_each_cell_as_a_disc_of_its_own_area() -> None:
    import anndata as ad
    import pandas as pd

    from napari_histosge.export.raster import map_raster

    area = np.array([50.0, 400.0, 120.0])
    cells = ad.AnnData(np.zeros((3, 1), np.float32), obs=pd.DataFrame({"area_px": area}, index=["1", "2", "3"]))
    cells.obsm["spatial"] = np.array([[20.0, 20.0], [80.0, 30.0], [40.0, 90.0]])
    cells.uns["histosge"] = {"positions": "cells", "mpp": 0.5, "spot_diameter_px": 60.0}  # the section's spots
    raster = map_raster(cells, np.array([1.0, 2.0, 3.0]))
    painted = [np.count_nonzero(raster.image == v) * raster.cell**2 for v in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(painted, area, rtol=0.2)
