"""The Gene viewer in a real (headless) viewer: a legend that always describes what is on screen,
comparison panels updated in place, gene search by keyboard, and layers in micrometres.

Predictions are built by hand from the demo section (no training), covering the first
genes only, so other genes are measured but not predicted.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pandas as pd
import pytest
from napari.utils.colormaps import ensure_colormap

from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.widgets.colours import SPOT_COLORMAP, robust_range
from napari_histosge.plugin.widgets.compare import ROLE_COMPARE, ROLE_COMPARE_TITLES
from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
from napari_histosge.plugin.widgets.repaint import recolor_spots
from napari_histosge.plugin.widgets.status import status_of
from napari_histosge.plugin.widgets.superres import add_prediction_layers

N_PREDICTED = 8


def fake_predictions(adata, n_genes: int = N_PREDICTED):
    """4 positions per measured spot holding its normalised values plus noise, for the first genes."""
    import anndata as ad

    from napari_histosge.io.preprocess import normalize_log1p

    rng = np.random.default_rng(0)
    log = normalize_log1p(adata)[:, :n_genes]
    values = np.asarray(log.X.toarray() if hasattr(log.X, "toarray") else log.X, dtype=np.float32)
    spacing = L.nn_spacing(np.asarray(adata.obsm["spatial"]))
    offsets = 0.25 * spacing * np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]])
    xy = (np.asarray(adata.obsm["spatial"])[:, None, :] + offsets[None]).reshape(-1, 2)
    x = np.repeat(values, 4, axis=0) + rng.normal(0, 0.05, (len(xy), n_genes)).astype(np.float32)
    pred = ad.AnnData(X=x, obs=pd.DataFrame({"parent": np.repeat(np.asarray(adata.obs_names), 4)},
                                            index=[f"p{i}" for i in range(len(xy))]),
                      var=pd.DataFrame(index=list(log.var_names)))
    pred.obsm["spatial"] = xy
    pred.uns["histosge"] = {**adata.uns["histosge"], "fold": 4, "model": "fake"}
    return pred


def fake_grid(adata, n_genes: int = 3):
    """Grid cells (the sub-spot model's output) of random values for the first genes; with their rows and cols."""
    import anndata as ad

    xy = np.asarray(adata.obsm["spatial"])
    cell = L.nn_spacing(xy) / 3
    x0, y0 = xy.min(axis=0)
    rows, cols = np.mgrid[0:6, 0:5]
    rows, cols = rows.ravel(), cols.ravel()
    rng = np.random.default_rng(1)
    grid = ad.AnnData(X=rng.random((rows.size, n_genes)).astype(np.float32),
                      obs=pd.DataFrame({"grid_row": rows, "grid_col": cols}, index=[f"c{i}" for i in range(rows.size)]),
                      var=pd.DataFrame(index=list(adata.var_names[:n_genes])))
    grid.obsm["spatial"] = np.column_stack([x0 + cols * cell, y0 + rows * cell])
    grid.uns["histosge"] = {**adata.uns["histosge"], "positions": "grid",
                            "grid": {"cell_px": cell, "origin_xy": [x0, y0], "shape": [6, 5], "cell_um": None}}
    return grid, rows, cols


def open_demo(viewer, demo_dir):
    """Open the demo section in ``viewer``: its spots layer and the spots' AnnData."""
    viewer.open(str(demo_dir), plugin="napari-histosge")
    [spots] = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)
    return spots, L.histosge_meta(spots)["adata"]


@pytest.fixture
def session(make_napari_viewer, demo_dir):
    """A viewer with the demo section, its fake 4x predictions and the Gene viewer."""
    viewer = make_napari_viewer()
    spots, adata = open_demo(viewer, demo_dir)
    pred = fake_predictions(adata)
    heat, _ = add_prediction_layers(viewer, pred, adata)
    widget = GeneViewerWidget(viewer)
    return viewer, widget, heat, spots, pred



@pytest.mark.slow
def test_a_gene_the_model_does_not_predict_hides_the_heatmap(session, notifications):
    viewer, widget, heat, spots, pred = session
    predicted, measured_only = pred.var_names[1], "GENE30"
    assert widget.show_gene(predicted)
    assert heat.visible and widget.colorbar.title.startswith(predicted)
    assert widget.show_gene(measured_only)
    # the old gene's heatmap is not left on screen under the new gene's legend
    assert not heat.visible
    assert widget.colorbar.title.startswith(measured_only) and widget.legend_layer is spots
    shown = spots.features[measured_only].to_numpy()  # the legend spans the values the spots are coloured by
    assert (widget.colorbar.vmin, widget.colorbar.vmax) == pytest.approx((shown.min(), shown.max()))
    assert heat.name in status_of(widget.info) and "hidden" in status_of(widget.info)
    assert '"always include"' in status_of(widget.info)  # how to have a model predict it
    # back to a predicted gene: the heatmap returns, repainted
    assert widget.show_gene(predicted)
    assert heat.visible and heat.name.startswith(predicted) and widget.legend_layer is heat


@pytest.mark.slow
def test_the_legend_follows_contrast_changes_and_removed_layers(session, demo_dir):
    viewer, widget, heat, spots, pred = session
    assert widget.show_gene(pred.var_names[0])
    heat.contrast_limits = (1.0, 1.5)
    assert (widget.colorbar.vmin, widget.colorbar.vmax) == (1.0, 1.5)
    viewer.layers.remove(heat)
    assert widget.legend_layer is spots and widget.colorbar.title.startswith(pred.var_names[0])
    # another data set: the legend describes the newly opened spots, not the previous gene
    viewer.open(str(demo_dir), plugin="napari-histosge")
    newest = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)[-1]
    assert widget.legend_layer is newest
    assert widget.colorbar.title.startswith(L.histosge_meta(newest)["gene"])
    viewer.layers.clear()
    assert widget.legend_layer is None and "no gene" in widget.colorbar.text()


@pytest.mark.slow
def test_comparison_panels_update_in_place_agree_with_the_legend_and_close(session, notifications):
    viewer, widget, heat, spots, pred = session
    first, second = pred.var_names[0], pred.var_names[1]
    assert widget.show_gene(first)
    added = widget.compare()
    panels = {L.histosge_meta(lyr).get("panel"): lyr for lyr in added if L.histosge_meta(lyr).get("gene")}
    assert set(panels) == {"observed", "predicted", "predicted - observed"}
    [titles] = L.layers_with_role(viewer.layers, ROLE_COMPARE_TITLES)
    shown_titles = list(titles.features["title"])
    # short single lines: nothing runs into the next panel or the panel below
    assert shown_titles == ["observed", "predicted", "predicted - observed"]
    assert widget.colorbar.title.startswith(first) and widget.diff_colorbar.title.startswith(first)
    assert widget.diff_colorbar.isVisibleTo(widget.native)
    assert widget.close_compare_button.native.isVisibleTo(widget.native)
    lo, hi = panels["predicted - observed"].contrast_limits
    assert lo == pytest.approx(-hi)
    removed: list = []
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value))
    n_layers = len(viewer.layers)
    assert widget.show_gene(second)  # repainted in place: no layer removed or added
    assert removed == [] and len(viewer.layers) == n_layers
    assert panels["predicted"].name == f"{second} predicted" and widget.legend_layer is panels["predicted"]
    assert list(titles.features["title"]) == shown_titles  # the same for every gene: no canvas text re-rendered
    assert widget.colorbar.title.startswith(second) and widget.diff_colorbar.title.startswith(second)
    assert tuple(panels["predicted"].contrast_limits) == pytest.approx(L.robust_range(L.gene_values(pred, second)))
    # the observed panel has a legend of its own scale, following the gene
    assert widget.observed_colorbar.isVisibleTo(widget.native) and widget.observed_colorbar.title.startswith(second)
    assert (widget.observed_colorbar.vmin, widget.observed_colorbar.vmax) == pytest.approx(
        tuple(panels["observed"].contrast_limits))
    # a gene that is measured but not predicted: the panels hide rather than show the old gene
    assert widget.show_gene("GENE30")
    assert not any(lyr.visible for lyr in L.layers_with_role(viewer.layers, ROLE_COMPARE))
    assert any(k == "warning" and "not both measured and predicted" in m for k, m in notifications)
    widget.close_compare_button.changed.emit(True)
    assert not L.layers_with_role(viewer.layers, ROLE_COMPARE, ROLE_COMPARE_TITLES)
    assert not widget.close_compare_button.native.isVisibleTo(widget.native)
    assert not widget.observed_colorbar.isVisibleTo(widget.native)


def test_down_enter_on_a_suggestion_shows_its_full_name(session, qtbot, notifications):
    from qtpy.QtCore import Qt

    viewer, widget, heat, spots, pred = session
    viewer.window.add_dock_widget(widget)
    line = widget.search.native
    line.setFocus()
    line.clear()  # the box names the gene shown; the user types over it
    qtbot.keyClicks(line, "gene0")
    qtbot.waitUntil(lambda: widget.completer.popup().isVisible(), timeout=5000)
    popup = widget.completer.popup()
    qtbot.keyClick(popup, Qt.Key.Key_Down)
    qtbot.keyClick(popup, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: widget.gene is not None, timeout=5000)
    qtbot.wait(50)
    assert widget.gene.startswith("GENE0") and widget.gene != "gene0"
    assert not [m for k, m in notifications if k == "warning"]


def test_hidden_points_are_recoloured_when_shown(session):
    viewer, widget, heat, spots, pred = session
    [points] = L.layers_with_role(viewer.layers, L.ROLE_PRED_SPOTS)
    assert not points.visible
    gene = pred.var_names[3]
    assert widget.show_gene(gene)
    points.visible = True
    assert L.histosge_meta(points)["gene"] == gene and gene in points.features.columns


def test_recolouring_spots_raises_no_napari_warning_and_colours_follow_the_values(session):
    viewer, widget, heat, spots, pred = session
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # napari's "property used for face_color dropped" would raise here
        recolor_spots(spots, "GENE05")
        recolor_spots(spots, "GENE06")
    assert list(spots.features.columns) == ["spot", "GENE06"]
    values = spots.features["GENE06"].to_numpy()
    lo, hi = L.histosge_meta(spots)["limits"]
    assert (lo, hi) == (values.min(), values.max())
    expected = ensure_colormap(SPOT_COLORMAP).map((values - lo) / (hi - lo))
    np.testing.assert_allclose(spots.face_color, expected, atol=1e-6)


@pytest.mark.slow
def test_a_gene_switch_repaints_heatmap_and_panels_in_their_own_arrays(session):
    viewer, widget, heat, spots, pred = session
    genes = list(pred.var_names)
    assert widget.show_gene(genes[0])
    widget.compare()
    panels = [lyr for lyr in L.layers_with_role(viewer.layers, ROLE_COMPARE) if L.histosge_meta(lyr).get("gene")]
    arrays = [id(lyr.data) for lyr in (heat, *panels)]
    n_layers = len(viewer.layers)
    assert widget.show_gene(genes[1])
    assert [id(lyr.data) for lyr in (heat, *panels)] == arrays and len(viewer.layers) == n_layers
    np.testing.assert_array_equal(heat.data, L.histosge_meta(heat)["raster"].with_values(pred[:, genes[1]].X.ravel()))
    assert tuple(heat.contrast_limits) == robust_range(pred[:, genes[1]].X.ravel())
    # what is drawn and its thumbnail are the new gene's, as a layer made afresh for it shows them
    fresh = viewer.add_image(heat.data.copy(), colormap=heat.colormap, contrast_limits=heat.contrast_limits,
                             opacity=heat.opacity, scale=heat.scale, translate=heat.translate)
    for layer in (heat, *panels):
        np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), layer.data)
    np.testing.assert_array_equal(heat.thumbnail, fresh.thumbnail)


def test_layers_are_in_micrometres_and_stay_aligned(session):
    viewer, widget, heat, spots, pred = session
    mpp = L.um_per_px(pred)
    assert mpp is not None
    [slide] = L.layers_with_role(viewer.layers, L.ROLE_SLIDE)
    for layer in (slide, spots, heat):
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"], layer.name
    assert viewer.layers.extent.units is not None  # one unit for all: the scale bar reads micrometres
    k = 7
    world = spots.data_to_world(spots.data[k])
    assert np.allclose(world, pred.obsm["spatial"][0][::-1] * 0 + spots.data[k] * mpp)
    assert np.allclose(slide.world_to_data(world), spots.data[k], atol=1e-6)
    cell = np.round(heat.world_to_data(world)).astype(int)  # the heatmap cell under that spot
    raster = L.histosge_meta(heat)["raster"]
    assert raster.index[tuple(cell)] >= 0


def test_long_status_text_does_not_widen_the_dock(session, qtbot):
    viewer, widget, heat, spots, pred = session
    dock = viewer.window.add_dock_widget(widget, area="right")
    qtbot.wait(50)
    before = dock.width()
    long_path = "/data/" + "/".join(f"a_very_long_folder_name_{i}" for i in range(12)) + "/model.pt"
    from napari_histosge.plugin.widgets.status import set_status

    set_status(widget.info, f"saved to {long_path}; " + "word " * 80)
    qtbot.wait(50)
    assert dock.width() <= before + 2
    # what the dock is asked for: the widget's minimum width stays what the form needs, not the text's
    assert widget.native.minimumSizeHint().width() < 400
    assert widget.info.tooltip.startswith("saved to /data/")


def test_a_grid_map_is_a_raster_on_the_slide_repainted_in_place(make_napari_viewer, demo_dir):
    """Grid cells (the sub-spot model's output) become one raster layer the Gene viewer repaints."""
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    [spots] = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)
    adata = L.histosge_meta(spots)["adata"]
    grid, rows, cols = fake_grid(adata)
    heat, points = add_prediction_layers(viewer, grid, adata)
    assert points is None and heat.data.shape == (6, 5)
    k = 13  # a known cell: its raster pixel sits on the slide pixel of its centre
    [slide] = L.layers_with_role(viewer.layers, L.ROLE_SLIDE)
    world = heat.data_to_world((rows[k], cols[k]))
    assert np.allclose(slide.world_to_data(world), grid.obsm["spatial"][k][::-1], atol=1e-6)
    widget = GeneViewerWidget(viewer)
    data_before = heat.data
    gene = grid.var_names[2]
    assert widget.show_gene(gene)
    assert heat.data is data_before and heat.name.startswith(gene)  # same layer, its array repainted in place
    assert heat.data[rows[k], cols[k]] == pytest.approx(grid[k, gene].X[0, 0])
    assert widget.legend_layer is heat


def test_the_grid_choice_refuses_a_model_that_predicts_whole_spots(make_napari_viewer):
    from types import SimpleNamespace

    from napari_histosge.errors import InputError
    from napari_histosge.plugin.widgets.superres import FROM_FILE, GRID, SuperResolveWidget, product_job

    widget = SuperResolveWidget(make_napari_viewer())
    widget.model.value = FROM_FILE  # a file not yet loaded offers every product (not a session model of earlier tests)
    widget.positions.value = GRID
    # the grid's own options, generated from its declared settings; the lattice's fold is gone
    assert set(widget.product_options.fields) == {"grid_um", "mask", "consistency"}
    assert widget.option("grid_um").native.isVisibleTo(widget.native)
    lattice_model = SimpleNamespace(products=("lattice",), config=SimpleNamespace(model="histosge"))
    with pytest.raises(InputError, match="the histosge model makes lattice, not grid"):
        next(product_job(lattice_model, None, GRID, {"grid_um": 10.0}, None, None))


def test_a_gene_only_measured_shows_the_measured_spots_the_user_had_hidden(session):
    viewer, widget, heat, spots, pred = session
    assert widget.show_gene(pred.var_names[0])
    spots.visible = False  # the user looks at the heatmap alone
    assert widget.show_gene("GENE30")
    assert not heat.visible and spots.visible
    assert L.histosge_meta(spots)["gene"] == "GENE30" and widget.legend_layer is spots
    assert "showing the measured" in status_of(widget.info)


def test_the_super_resolve_widget_offers_the_core_consistency_choices_and_default(make_napari_viewer):
    from napari_histosge.cli import build_parser
    from napari_histosge.pipeline.grid_maps import CONSISTENCY, DEFAULT_CONSISTENCY, superresolve_grid
    from napari_histosge.plugin.widgets.superres import FROM_FILE, GRID, SuperResolveWidget

    widget = SuperResolveWidget(make_napari_viewer())
    widget.model.value = FROM_FILE  # a file not yet loaded offers every product (not a session model of earlier tests)
    widget.positions.value = GRID
    assert tuple(widget.option("consistency").choices) == CONSISTENCY
    # the map the docs recommend, as the library and the command line make it by default
    assert widget.option("consistency").value == DEFAULT_CONSISTENCY
    assert inspect.signature(superresolve_grid).parameters["consistency"].default == DEFAULT_CONSISTENCY
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["superresolve"]._actions
                  if a.dest == "consistency")
    assert tuple(action.choices) == CONSISTENCY and DEFAULT_CONSISTENCY in action.help


def agreeing_layer(viewer, widget):
    """The layer on screen, after asserting that it, the gene box and the legend name the same gene.

    That is the topmost visible layer showing a gene; every visible layer shows the box's gene
    (one colour scale on screen), and the legend describes that layer with its limits and colours.
    """
    from napari_histosge.plugin.widgets.colorbar import colormap_stops
    from napari_histosge.plugin.widgets.gene_viewer import legend_of

    shown = [lyr for lyr in viewer.layers if lyr.visible and L.histosge_meta(lyr).get("gene")]
    assert shown, "nothing on screen"
    top = shown[-1]
    gene = widget.search.value
    assert widget.gene == gene
    assert [L.histosge_meta(lyr)["gene"] for lyr in shown] == [gene] * len(shown)
    assert widget.legend_layer is top
    title, lo, hi, cmap = legend_of(top)
    assert widget.colorbar.text().startswith(f"{title} [") and title.startswith(gene) and top.name in title
    assert (widget.colorbar.vmin, widget.colorbar.vmax) == pytest.approx((lo, hi))
    assert widget.colorbar.stops == colormap_stops(cmap)
    return top


@pytest.mark.slow
def test_map_gene_box_and_legend_agree_after_adding_hiding_removing_and_recolouring(make_napari_viewer, demo_dir):
    viewer = make_napari_viewer()
    spots, adata = open_demo(viewer, demo_dir)
    widget = GeneViewerWidget(viewer)
    assert agreeing_layer(viewer, widget) is spots  # the box names the gene the spots show from the start
    pred = fake_predictions(adata)
    chosen = str(pred.var_names[1])  # not the gene a new result would open on by itself
    assert L.default_gene(pred) != chosen and widget.show_gene(chosen)
    # add: a grid map, then a 4x map over it, both open on the chosen gene; the measured spots go under
    grid_map, _ = add_prediction_layers(viewer, fake_grid(adata)[0], adata)
    assert agreeing_layer(viewer, widget) is grid_map and not spots.visible
    map_4x, points = add_prediction_layers(viewer, pred, adata)
    assert agreeing_layer(viewer, widget) is map_4x and map_4x.name.startswith(chosen)
    # hide: the legend moves to the grid map, never stays on the hidden layer
    map_4x.visible = False
    assert agreeing_layer(viewer, widget) is grid_map
    points.visible = True  # hidden points shown: painted with the gene on screen
    assert agreeing_layer(viewer, widget) is points
    points.visible = False
    # remove: the grid map gone and the 4x map hidden, the measured spots come back
    viewer.layers.remove(grid_map)
    assert agreeing_layer(viewer, widget) is spots
    map_4x.visible = True
    assert agreeing_layer(viewer, widget) is map_4x and not spots.visible
    # recolour: another colormap, another gene
    map_4x.colormap = "viridis"
    assert agreeing_layer(viewer, widget) is map_4x
    assert widget.show_gene(str(pred.var_names[2]))
    assert agreeing_layer(viewer, widget) is map_4x
    # a result whose genes lack the gene shown: everything follows the new result's gene
    other = fake_predictions(adata)[:, 4:]
    newest, _ = add_prediction_layers(viewer, other, adata)
    assert agreeing_layer(viewer, widget) is newest and widget.gene in other.var_names


def test_enter_once_shows_the_typed_gene_with_the_suggestions_open(session, qtbot, notifications):
    from qtpy.QtCore import Qt

    viewer, widget, heat, spots, pred = session
    viewer.window.add_dock_widget(widget)
    line = widget.search.native
    line.setFocus()
    line.clear()
    wanted = str(pred.var_names[2])
    qtbot.keyClicks(line, wanted.lower())
    qtbot.waitUntil(lambda: widget.completer.popup().isVisible(), timeout=5000)
    qtbot.keyClick(widget.completer.popup(), Qt.Key.Key_Return)  # once, no suggestion picked
    qtbot.waitUntil(lambda: widget.gene == wanted, timeout=2000)
    assert agreeing_layer(viewer, widget) is heat and heat.name.startswith(wanted)
    assert not [m for k, m in notifications if k == "warning"]


def test_enter_on_the_gene_shown_applies_it_again(session, qtbot):
    from qtpy.QtCore import Qt

    from napari_histosge.plugin.widgets.repaint import update_heatmap

    viewer, widget, heat, spots, pred = session
    shown = str(pred.var_names[0])
    assert widget.show_gene(shown)
    update_heatmap(heat, str(pred.var_names[1]))  # repainted behind the Gene viewer's back
    assert widget.search.value == shown
    qtbot.keyClick(widget.search.native, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: heat.name.startswith(shown), timeout=2000)
    assert agreeing_layer(viewer, widget) is heat


def test_a_symbol_on_ensembl_only_data_says_to_give_the_id(make_napari_viewer, dlpfc_151675, notifications):
    # DLPFC names its genes by Ensembl id only: a known marker's symbol finds its id (the packaged marker
    # table), any other symbol must say why it is not found and what to type.
    viewer = make_napari_viewer()
    viewer.open(str(dlpfc_151675), plugin="napari-histosge")
    widget = GeneViewerWidget(viewer)
    assert widget.show_gene("MBP") and widget.gene == "ENSG00000197971"
    assert widget.colorbar.title.startswith("MBP")
    assert not widget.show_gene("ACTB")
    [(kind, message)] = [n for n in notifications if "ACTB" in n[1]]
    assert kind == "warning" and "Ensembl id" in message and "ENSG" in message and "\n" not in message
    assert widget.show_gene("ENSG00000131095")  # GFAP's id


def test_a_gene_looked_at_in_the_gene_viewer_is_predicted_by_the_next_training_run(session):
    from napari_histosge.pipeline.gene_choice import training_genes
    from napari_histosge.plugin.widgets.train import TrainWidget

    viewer, widget, _heat, spots, _pred = session
    adata = L.histosge_meta(spots)["adata"]
    train = TrainWidget(viewer)
    train.data.value = [spots]
    train.n_genes.value = 5
    assert train.train_config().include_genes is None  # the gene shown on opening is not the user's
    assert widget.ask_for_gene(str(adata.var_names[7]).lower())
    assert not widget.ask_for_gene("NOT_A_GENE")  # an unknown name is not remembered
    config = train.train_config()
    assert config.include_genes == [str(adata.var_names[7])]
    assert str(adata.var_names[7]) in training_genes(adata, config)
    train.genes_mode.value = "my gene list"
    train.gene_list.value = str(adata.var_names[1])
    assert train.train_config().genes == [str(adata.var_names[1])]  # an explicit list stays as typed


def test_a_table_of_ids_and_symbols_lets_symbols_find_genes_of_data_named_by_id(make_napari_viewer, tmp_path,
                                                                                notifications, demo_copy):
    folder = demo_copy()
    counts = pd.read_csv(folder / "demo.tsv.gz", sep="\t", index_col=0)
    table = {f"ENSG{900000 + i:011d}": str(g) for i, g in enumerate(counts.columns)}
    counts.columns = list(table)
    counts.to_csv(folder / "demo.tsv.gz", sep="\t")
    viewer = make_napari_viewer()
    spots, _adata = open_demo(viewer, folder)
    widget = GeneViewerWidget(viewer)
    assert not widget.ask_for_gene("GENE03")
    assert "Ensembl id" in notifications[-1][1]
    bad = tmp_path / "bad.tsv"
    bad.write_text("GENE03\n")
    widget.gene_table.value = str(bad)  # as a user picks the file
    assert notifications[-1][0] == "error" and "needs two columns" in notifications[-1][1]
    names = tmp_path / "names.tsv"
    names.write_text("\n".join(f"{i}\t{s}" for i, s in table.items()))
    widget.gene_table.value = str(names)
    assert "40 ids" in status_of(widget.info)
    assert widget.ask_for_gene("gene03")
    assert widget.gene == "ENSG00000900003" and L.histosge_meta(spots)["gene"] == "ENSG00000900003"
    assert widget.colorbar.title.startswith("GENE03 (ENSG00000900003)")  # the legend names the symbol
    assert "GENE03" in widget._model.stringList()  # the completer offers the symbols


def test_a_symbol_finds_its_gene_in_spots_and_predictions_named_by_id(make_napari_viewer, tmp_path, demo_copy):
    """Data named by Ensembl id only (DLPFC), no table given: MBP is found by the known markers' ids."""
    from napari_histosge.outputs import write_h5ad

    folder = demo_copy()
    counts = pd.read_csv(folder / "demo.tsv.gz", sep="\t", index_col=0)
    counts.columns = ["ENSG00000197971", *(f"ENSG{900001 + i:011d}" for i in range(counts.shape[1] - 1))]
    counts.to_csv(folder / "demo.tsv.gz", sep="\t")
    viewer = make_napari_viewer()
    spots, adata = open_demo(viewer, folder)
    widget = GeneViewerWidget(viewer)
    assert widget.ask_for_gene("MBP") and widget.gene == "ENSG00000197971"
    assert widget.colorbar.title.startswith("MBP")
    pred = fake_predictions(adata)
    pred.var = pred.var[[]]  # a predictions file holds no symbols
    path = write_h5ad(tmp_path / "pred.h5ad", pred)
    alone = make_napari_viewer()
    alone.open(str(path), plugin="napari-histosge")  # the predictions opened on their own
    predicted = GeneViewerWidget(alone)
    assert predicted.ask_for_gene("mbp") and predicted.gene == "ENSG00000197971"
    assert predicted.colorbar.title.startswith("MBP")


def test_a_symbol_of_two_ids_is_a_warning_naming_both(make_napari_viewer, tmp_path, notifications, demo_copy):
    # resolve_gene refuses such a symbol with an InputError: the Gene viewer shows its one line, no traceback.
    folder = demo_copy()
    counts = pd.read_csv(folder / "demo.tsv.gz", sep="\t", index_col=0)
    table = {f"ENSG{900000 + i:011d}": str(g) for i, g in enumerate(counts.columns)}
    counts.columns = list(table)
    counts.to_csv(folder / "demo.tsv.gz", sep="\t")
    viewer = make_napari_viewer()
    open_demo(viewer, folder)
    widget = GeneViewerWidget(viewer)
    names = tmp_path / "names.tsv"
    names.write_text("\n".join(f"{i}\t{'GENE03' if i == 'ENSG00000900004' else s}" for i, s in table.items()))
    widget.gene_table.value = str(names)
    assert not widget.ask_for_gene("GENE03")
    kind, message = notifications[-1]
    assert kind == "warning" and "ENSG00000900003" in message and "ENSG00000900004" in message
    assert "\n" not in message
