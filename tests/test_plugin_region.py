"""The Regions widget in a real (headless) viewer: drawn shapes select spots or grid cells, in µm or pixels,
the selection is written back to the layer, and the export replays on the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_histosge.cli.main import main
from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.widgets.region import RegionsWidget, shape_polygon
from napari_histosge.plugin.widgets.status import status_of
from napari_histosge.plugin.widgets.superres import add_prediction_layers
from test_plugin_gene_viewer import fake_predictions


@pytest.fixture
def session(make_napari_viewer, demo_dir):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    [spots] = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)
    return viewer, spots, L.histosge_meta(spots)["adata"]


def left_half_world(adata) -> tuple[np.ndarray, float]:
    """A rectangle over the left half of the spots, as world (row, col) vertices, and the mid x in pixels."""
    xy = np.asarray(adata.obsm["spatial"])
    u = L.um_per_px(adata) or 1.0
    (x0, y0), (_, y1) = xy.min(axis=0) - 200, xy.max(axis=0) + 200  # beyond every 4x position too
    mid = float(np.median(xy[:, 0])) + 1.0
    corners = np.array([[y0, x0], [y0, mid], [y1, mid], [y1, x0]]) * u
    return corners, mid


def settle(qtbot, widget: RegionsWidget) -> None:
    widget.refresh()  # what the debounce timer calls
    qtbot.waitUntil(lambda: widget.tables is not None and widget._job is None, timeout=30000)


@pytest.mark.slow
def test_a_drawn_polygon_selects_the_spots_inside_and_marks_them(session, qtbot, tmp_path):
    viewer, spots, adata = session
    widget = RegionsWidget(viewer)
    assert widget.target.value is spots
    widget.start_drawing()
    shapes = widget.shapes_layer()
    assert shapes is not None and viewer.layers.selection.active is shapes
    assert str(shapes.mode) == "add_polygon_lasso"
    assert L.um_per_px(adata) is not None  # the demo is in µm: the drawing is in µm too
    corners, mid = left_half_world(adata)
    shapes.add_polygons([corners])
    settle(qtbot, widget)
    inside = np.asarray(adata.obsm["spatial"])[:, 0] < mid
    assert (spots.features["region"].to_numpy() == "region 1").tolist() == inside.tolist()
    assert (adata.obs["region"] == "region 1").sum() == inside.sum()
    positions, summary = widget.tables
    assert len(positions) == inside.sum() and set(summary["region"]) == {"region 1"}
    assert f"region 1: {inside.sum()} of the {adata.n_obs} positions" in status_of(widget.status)
    rows = widget.table.data.to_list()
    assert rows and rows[0][0] == "region 1" and rows[0][1] == summary["gene"].iloc[0]

    # named, exported, and replayed by the command line to the same table
    shapes.selected_data = {0}
    widget.region_name.value = "tumour edge"
    widget.rename_selected()
    settle(qtbot, widget)
    written = widget.export_tables(tmp_path / "sel")
    assert [p.name for p in written] == ["sel.csv", "sel_summary.csv", "sel.geojson"]
    table = pd.read_csv(tmp_path / "sel.csv", index_col="id")
    assert set(table["region"]) == {"tumour edge"} and len(table) == inside.sum()
    demo = L.histosge_meta(spots)["adata"].uns["histosge"]["source"]
    assert main(["region", str(demo), "--regions", str(tmp_path / "sel.geojson"),
                 "--out", str(tmp_path / "cli.csv")]) == 0
    replayed = pd.read_csv(tmp_path / "cli.csv", index_col="id")
    assert replayed.index.tolist() == table.index.tolist()
    assert np.allclose(replayed.iloc[:, 3:].to_numpy(), table.iloc[:, 3:].to_numpy(), atol=1e-5)

    viewer.layers.remove(shapes)  # the drawing removed: the selection goes with it
    qtbot.waitUntil(lambda: widget.tables is None and not widget.regions, timeout=5000)
    assert widget.table.data.to_list() == []


def test_regions_select_grid_or_lattice_predictions(session, qtbot):
    viewer, spots, adata = session
    pred = fake_predictions(adata)
    heat, _ = add_prediction_layers(viewer, pred, adata)
    widget = RegionsWidget(viewer)
    newest = widget.target.value  # the newest prediction layer
    assert L.histosge_meta(newest)["role"] in (L.ROLE_HEATMAP, L.ROLE_PRED_SPOTS)
    assert L.histosge_meta(newest)["adata"] is L.histosge_meta(heat)["adata"]
    widget.target.value = heat  # an image layer: its positions are the prediction's
    widget.start_drawing()
    corners, mid = left_half_world(adata)
    widget.shapes_layer().add_polygons([corners])
    settle(qtbot, widget)
    shown = L.histosge_meta(heat)["adata"]
    inside = np.asarray(shown.obsm["spatial"])[:, 0] < mid
    assert len(widget.tables[0]) == inside.sum() == (shown.obs["region"] != "").sum()


def test_nothing_inside_ellipses_and_paths(session, qtbot):
    viewer, spots, adata = session
    widget = RegionsWidget(viewer)
    assert widget.export_tables(Path("never.csv")) == []
    assert "nothing to export" in status_of(widget.status)
    widget.start_drawing()
    shapes = widget.shapes_layer()
    shapes.add_paths([np.array([[0.0, 0.0], [100.0, 100.0]])])  # a path encloses nothing
    shapes.add_ellipses([np.array([[-1e6, -1e6], [-1e6 + 10, -1e6 + 10]])])  # far off the tissue
    widget.refresh()
    assert widget.tables is None and "no position" in status_of(widget.status)
    assert (spots.features["region"] == "").all()


def test_ellipse_outline_is_inscribed_in_its_box() -> None:
    box = np.array([[0.0, 0.0], [0.0, 10.0], [4.0, 10.0], [4.0, 0.0]])
    outline = shape_polygon(box, "ellipse")
    assert outline.min(axis=0) == pytest.approx([0.0, 0.0], abs=0.05)
    assert outline.max(axis=0) == pytest.approx([4.0, 10.0], abs=0.05)
    assert shape_polygon(box, "path") is None and shape_polygon(box[:2], "polygon") is None


def test_regions_load_from_geojson_and_select_what_the_command_line_selects(session, qtbot, tmp_path):
    import json

    viewer, spots, adata = session
    widget = RegionsWidget(viewer)
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    assert widget.load_regions(bad) == 0
    assert "bad.geojson" in status_of(widget.status) and widget.shapes_layer() is None  # nothing added

    xy = np.asarray(adata.obsm["spatial"])
    (x0, y0), (_, y1) = xy.min(axis=0) - 200, xy.max(axis=0) + 200
    mid = float(np.median(xy[:, 0])) + 1.0
    left = [[x0, y0], [mid, y0], [mid, y1], [x0, y1], [x0, y0]]  # full-resolution pixels, as QuPath writes
    far = [[-9e5, -9e5], [-8e5, -9e5], [-8e5, -8e5], [-9e5, -8e5], [-9e5, -9e5]]
    hole = [[-8.8e5, -8.8e5], [-8.5e5, -8.8e5], [-8.5e5, -8.5e5], [-8.8e5, -8.8e5]]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [left]},
         "properties": {"classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [far, hole]},
         "properties": {"name": "glass"}}]}))
    assert widget.load_regions(path) == 2
    shapes = widget.shapes_layer()
    assert list(shapes.features["name"]) == ["Tumor", "glass"]
    assert "glass had holes" in status_of(widget.status)
    settle(qtbot, widget)
    inside = xy[:, 0] < mid
    assert (spots.features["region"].to_numpy() == "Tumor").tolist() == inside.tolist()
    written = widget.export_tables(tmp_path / "sel")
    demo = L.histosge_meta(spots)["adata"].uns["histosge"]["source"]
    assert main(["region", str(demo), "--regions", str(path), "--out", str(tmp_path / "cli.csv")]) == 0
    widget_table = pd.read_csv(written[0], index_col="id")
    assert pd.read_csv(tmp_path / "cli.csv", index_col="id").index.tolist() == widget_table.index.tolist()
