"""End-to-end through the widgets on real data (her2st B4): open, train, super-resolve 4x, view."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_histosge.plugin.widgets.compare import ROLE_COMPARE
from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
from napari_histosge.plugin.widgets.layers import (
    ROLE_HEATMAP,
    ROLE_PRED_SPOTS,
    ROLE_SLIDE,
    ROLE_SPOTS,
    histosge_meta,
    layers_with_role,
)
from napari_histosge.plugin.widgets.state import SESSION_MODELS
from napari_histosge.plugin.widgets.superres import SuperResolveWidget
from napari_histosge.plugin.widgets.train import TrainWidget

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
TIMEOUT_MS = 300_000


def test_her2st_b4_open_train_superresolve_view(make_napari_viewer, qtbot, her2st_b4, tmp_path):
    from qtpy.QtCore import QTimer

    SESSION_MODELS.clear()
    viewer = make_napari_viewer()
    viewer.open(str(her2st_b4), plugin="napari-histosge")
    [slide] = layers_with_role(viewer.layers, ROLE_SLIDE)
    [spots] = layers_with_role(viewer.layers, ROLE_SPOTS)
    adata = histosge_meta(spots)["adata"]
    assert slide.multiscale and slide.rgb and adata.n_obs > 100

    # --- train through the widget's worker; a timer in the GUI thread counts processed events
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.out_dir.value = str(tmp_path)
    train.n_genes.value = 50
    train.epochs.value = 10
    train.data.value = spots
    ticks, zooms = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1) if train.worker is not None else None)
    timer.start(20)

    def pan_and_zoom():  # the viewer keeps responding while training runs
        if train.worker is not None:
            viewer.camera.zoom = viewer.camera.zoom * 1.01
            zooms.append(viewer.camera.zoom)

    zoomer = QTimer()
    zoomer.timeout.connect(pan_and_zoom)
    zoomer.start(100)
    started = time.perf_counter()
    train.start_button.native.click()
    assert train.worker is not None
    qtbot.waitUntil(lambda: train.worker is None, timeout=TIMEOUT_MS)
    elapsed_ms = (time.perf_counter() - started) * 1000
    timer.stop()
    zoomer.stop()
    assert train.last_outcome.value is not None, train.status.value
    # The GUI thread kept running its timers while the worker trained: a frozen event loop
    # would give ~0 ticks however long training took (the bar is relative, so a fast machine
    # that trains in a second passes as well as a slow one).
    assert len(ticks) >= max(3, 0.2 * elapsed_ms / 20), (len(ticks), elapsed_ms)
    assert len(zooms) >= max(1, 0.2 * elapsed_ms / 100), (len(zooms), elapsed_ms)
    assert train.checkpoint_path.is_file()
    assert len(train.loss_curve.values) == train.epochs.value
    epochs_seen = [e.step for e in train.events_seen if e.stage == "train" and e.metrics]
    assert epochs_seen == list(range(1, train.epochs.value + 1))
    model = train.last_model
    assert len(model.genes) == 50

    # --- super-resolve 4x with the session model
    sr = SuperResolveWidget(viewer)
    assert sr.model.value == SESSION_MODELS.names()[-1]
    sr.data.value = spots
    sr.fold.value = 4
    sr.run_button.native.click()
    qtbot.waitUntil(lambda: sr.worker is None, timeout=TIMEOUT_MS)
    assert sr.last_outcome.value is not None, sr.status.tooltip
    [heat] = layers_with_role(viewer.layers, ROLE_HEATMAP)
    [pred_points] = layers_with_role(viewer.layers, ROLE_PRED_SPOTS)
    pred = histosge_meta(heat)["adata"]
    assert pred.n_obs == 4 * adata.n_obs

    # a known spot lands on its full-res pixel of the slide ...
    k = 17
    x, y = adata.obsm["spatial"][k]
    world = spots.data_to_world(spots.data[k])
    assert np.allclose(slide.world_to_data(world), [y, x], atol=1e-6)  # full-res image: scale 1
    # ... and the heatmap pixel under it shows a prediction made inside that spot
    cell = np.round(heat.world_to_data(world)).astype(int)
    value = heat.data[cell[0], cell[1]]
    gene = histosge_meta(heat)["gene"]
    children = np.flatnonzero(np.asarray(pred.obs["parent"]) == adata.obs_names[k])
    child_values = np.asarray(pred[children, gene].X).ravel()
    # (the map interpolates between positions: at the spot's centre, within its positions' range)
    assert np.isfinite(value) and child_values.min() - 1e-5 <= value <= child_values.max() + 1e-5
    # every predicted position's heatmap cell follows its own value (interpolated; glass left out)
    pos_world = np.array([pred_points.data_to_world(p) for p in pred_points.data])
    cells = np.round([heat.world_to_data(w) for w in pos_world]).astype(int)
    shown, own = heat.data[cells[:, 0], cells[:, 1]], np.asarray(pred[:, gene].X).ravel()
    drawn = np.isfinite(shown)
    assert drawn.mean() > 0.5 and np.corrcoef(shown[drawn], own[drawn])[0, 1] > 0.95

    # --- gene viewer: recolour all, PCC where truth exists, side-by-side comparison
    viewer_widget = GeneViewerWidget(viewer)
    target = model.genes[0]
    assert viewer_widget.show_gene(target.lower())
    assert histosge_meta(heat)["gene"] == target and not spots.visible  # the measured spots hide under their map
    spots.visible = True  # shown again by the user: repainted with the gene on screen
    assert target in spots.features.columns and viewer_widget.legend_layer is heat
    assert np.isfinite(viewer_widget.pcc[heat.name]) and "PCC" in viewer_widget.info.value
    panels = viewer_widget.compare()
    assert [p.name for p in panels if p.name.startswith(target)] == [
        f"{target} observed", f"{target} predicted", f"{target} predicted - observed"]
    assert layers_with_role(viewer.layers, ROLE_COMPARE)

    # --- writer: the predicted expression layer to .h5ad through napari
    import anndata as ad

    out = tmp_path / "pred.h5ad"
    viewer.layers.selection = {heat}
    viewer.layers.save(str(out), selected=True, plugin="napari-histosge")
    back = ad.read_h5ad(out)
    assert back.shape == pred.shape and np.allclose(back.obsm["spatial"], pred.obsm["spatial"])
