"""Tier 2 of the plugin tests: readers, widgets and workers in a real (headless) viewer.

Runs on the generated demo section, so it needs no downloaded data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
from napari_histosge.plugin.widgets.layers import ROLE_SLIDE, ROLE_SPOTS, histosge_meta, layers_with_role
from napari_histosge.plugin.widgets.status import status_of
from napari_histosge.plugin.widgets.train import GENES_LIST, TrainWidget

WORKER_TIMEOUT_MS = 120_000


@pytest.fixture
def demo_viewer(make_napari_viewer, demo_dir):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    return viewer



@pytest.mark.slow
def test_reader_opens_slide_and_spots_aligned(demo_viewer):
    slides = layers_with_role(demo_viewer.layers, ROLE_SLIDE)
    spots = layers_with_role(demo_viewer.layers, ROLE_SPOTS)
    assert len(slides) == 1 and len(spots) == 1
    slide, points = slides[0], spots[0]
    adata = histosge_meta(points)["adata"]
    assert slide.rgb and slide.multiscale
    # every spot centre, seen through the slide's transform, is the full-res pixel (x, y)
    world = np.array([points.data_to_world(p) for p in points.data])
    px = np.array([slide.world_to_data(w) for w in world])
    assert np.allclose(px[:, ::-1], adata.obsm["spatial"], atol=1e-6)
    assert np.allclose(points.size, adata.uns["histosge"]["spot_diameter_px"])
    gene = histosge_meta(points)["gene"]
    assert gene in points.features.columns


@pytest.mark.slow
def test_sample_data_demo_loads(make_napari_viewer, demo_dir, monkeypatch):
    import shutil

    import napari_histosge.demo as demo

    # Reuse the module's demo files instead of generating the slide a second time.
    monkeypatch.setattr(demo, "make_demo_dataset", lambda out: Path(shutil.copytree(demo_dir, out)))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-histosge", "demo")
    assert len(layers_with_role(viewer.layers, ROLE_SPOTS)) == 1


@pytest.mark.slow
def test_gene_viewer_type_ahead_recolours_spots(demo_viewer):
    widget = GeneViewerWidget(demo_viewer)
    genes = widget._model.stringList()
    assert len(genes) == 40
    widget.completer.setCompletionPrefix("ene1")  # contains-match, case-insensitive
    assert widget.completer.completionCount() == 10  # GENE10..GENE19
    assert widget.show_gene("gene07")
    points = layers_with_role(demo_viewer.layers, ROLE_SPOTS)[0]
    assert "GENE07" in points.features.columns
    values = points.features["GENE07"].to_numpy()
    assert widget.colorbar.title.startswith("GENE07")
    assert widget.colorbar.vmin == pytest.approx(values.min()) and widget.colorbar.vmax == pytest.approx(values.max())
    # colours follow the values: the highest spot gets the top of the colormap
    top = points.face_color[np.argmax(values)]
    assert np.allclose(top[:3], points.face_colormap.map(np.array([1.0]))[0][:3], atol=1e-3)


@pytest.mark.slow
def test_gene_viewer_unknown_gene_warns(demo_viewer, notifications):
    widget = GeneViewerWidget(demo_viewer)
    assert not widget.show_gene("NOPE1")
    assert notifications and notifications[-1][0] == "warning" and "NOPE1" in notifications[-1][1]


@pytest.mark.slow
def test_train_bad_gene_list_shows_core_message(demo_viewer, qtbot, tmp_path, notifications):
    widget = TrainWidget(demo_viewer)
    widget.out_dir.value = str(tmp_path)
    widget.extractor.value = "none"
    widget.genes_mode.value = GENES_LIST
    widget.gene_list.value = "NOTAGENE, ALSONOT"
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.error is not None
    errors = [m for k, m in notifications if k == "error"]
    assert errors and "NOTAGENE" in errors[-1]
    assert widget.start_button.enabled  # the UI is usable again


@pytest.mark.slow
def test_train_without_data_layer_shows_error(make_napari_viewer, notifications):
    widget = TrainWidget(make_napari_viewer())
    widget.start()
    assert widget.worker is None
    assert notifications[-1][0] == "error" and "Open spot data" in notifications[-1][1]


@pytest.mark.slow
def test_cancel_stops_training_and_keeps_loadable_checkpoint(demo_viewer, qtbot, tmp_path, notifications):
    from napari_histosge.models import load_model

    widget = TrainWidget(demo_viewer)
    widget.out_dir.value = str(tmp_path)
    widget.extractor.value = "none"  # positions only: reaches the training loop quickly
    widget.n_genes.value = 20
    widget.epochs.value = 100_000
    widget.start()
    qtbot.waitUntil(lambda: any(e.stage == "train" and e.step >= 2 for e in widget.events_seen),
                    timeout=WORKER_TIMEOUT_MS)
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.cancelled
    epochs_seen = max(e.step for e in widget.events_seen if e.stage == "train")
    assert epochs_seen < 100_000
    model = load_model(widget.checkpoint_path, device="cpu")
    assert 2 <= model.meta.epochs_done <= epochs_seen
    assert len(model.genes) == 20
    assert any("cancelled" in m for _, m in notifications)
    # the status says the run stopped, and what was kept where (not the last epoch's progress line)
    status = status_of(widget.status)
    assert status.startswith("cancelled at epoch ") and str(widget.checkpoint_path) in status
    assert not status.startswith("epoch")


@pytest.mark.slow
def test_train_empty_selection_shows_error(demo_viewer, notifications):
    widget = TrainWidget(demo_viewer)
    [spots] = layers_with_role(demo_viewer.layers, ROLE_SPOTS)
    assert widget.data.value == [spots]  # the spots layer is selected by default
    widget.data.value = []
    widget.start()
    assert widget.worker is None
    assert notifications[-1][0] == "error" and "select one or more spots layers" in notifications[-1][1]


@pytest.mark.slow
def test_train_one_model_on_two_spots_layers(demo_viewer, demo_dir, qtbot, tmp_path, notifications):
    from napari_histosge.models import load_model

    demo_viewer.open(str(demo_dir), plugin="napari-histosge")  # a second section
    first, second = layers_with_role(demo_viewer.layers, ROLE_SPOTS)
    widget = TrainWidget(demo_viewer)
    assert widget.data.value == [second]  # default: the most recently added spots layer
    widget.data.value = [first, second]
    widget.out_dir.value = str(tmp_path)
    widget.extractor.value = "none"
    widget.n_genes.value = 10
    widget.epochs.value = 2
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.error is None, widget.last_outcome.error
    n = histosge_meta(first)["adata"].n_obs
    model = load_model(widget.checkpoint_path, device="cpu")
    # Two demo sections hold back too few validation spots to stop early on: every spot trains.
    assert model.meta.n_train_spots_per_section == [n] * 2 and model.meta.schedule_epochs == 2
    assert model.meta.position_frame == "per_section"
    assert any(e.stage == "prepare" and "in 2 sections" in e.message for e in widget.events_seen)
    assert any(k == "info" and "Trained" in m for k, m in notifications)
    # The status ends with what the CLI prints after training: the epochs run and how they were chosen.
    assert status_of(widget.status).startswith("done: ")
    assert "epochs: 2 on every training spot, as asked (too few spots" in status_of(widget.status)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Train", "Super-resolve", "Gene viewer"])
def test_widgets_open_from_the_plugin_menu(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-histosge", name)
    expected = {"Train": "TrainWidget", "Super-resolve": "SuperResolveWidget", "Gene viewer": "GeneViewerWidget"}
    assert dock is not None and type(widget).__name__ == expected[name]
    viewer.add_points([[0, 0]])  # the widget follows the viewer it was given
    assert len(widget.viewer.layers) == 1


@pytest.mark.slow
def test_uncertainty_layer_from_a_sampling_model(make_napari_viewer, demo_dir):
    """A prediction with layers['std'] (conditioned model) gets its own uncertainty heatmap."""
    from napari_histosge.io import read_spots
    from napari_histosge.models import train_config
    from napari_histosge.pipeline.steps import fit, superresolve
    from napari_histosge.plugin.widgets.layers import ROLE_UNCERTAINTY
    from napari_histosge.plugin.widgets.superres import add_prediction_layers
    from napari_histosge.plugin.widgets.worker import preload_torch
    from napari_histosge.progress import run_to_end

    preload_torch()  # as the widgets do: training beside napari's Mesa canvas must not load triton
    adata = read_spots(demo_dir)
    config = train_config(model="conditioned", epochs=2, n_top_genes=8, histosge_members=1, histosge_epochs=100)
    model = run_to_end(fit(adata, train_config=config))
    pred = run_to_end(superresolve(model, adata, 4))
    assert "std" in pred.layers
    viewer = make_napari_viewer()
    heat, _ = add_prediction_layers(viewer, pred, adata)
    spread = layers_with_role(viewer.layers, ROLE_UNCERTAINTY)
    assert len(spread) == 1 and "uncertainty" in spread[0].name
    gene = histosge_meta(heat)["gene"]
    expected = np.asarray(pred[:, gene].layers["std"]).ravel()
    painted = spread[0].data[np.isfinite(spread[0].data)]
    # the map interpolates between positions (and leaves glass out): within the spreads' range, reaching high ones
    assert expected.min() - 1e-6 <= painted.min() and painted.max() <= expected.max() + 1e-6
    assert painted.max() >= np.quantile(expected, 0.9)
    # the Gene viewer names it after the next gene at once, and repaints it with that gene's spread when shown
    other = next(g for g in pred.var_names if g != gene)
    assert not spread[0].visible  # hidden until asked for
    assert GeneViewerWidget(viewer).show_gene(other)
    assert spread[0].name.startswith(f"{other} ") and "uncertainty" in spread[0].name
    spread[0].visible = True
    repainted = spread[0].data[np.isfinite(spread[0].data)]
    other_std = np.asarray(pred[:, other].layers["std"]).ravel()
    assert repainted.max() <= other_std.max() + 1e-6 and repainted.max() >= np.quantile(other_std, 0.9)
    assert not np.allclose(repainted.max(), painted.max())  # the other gene's spread, not the first's


@pytest.mark.slow
def test_train_status_shows_the_validation_score(make_napari_viewer):
    from napari_histosge.progress import Progress

    widget = TrainWidget(make_napari_viewer())
    widget._on_event(Progress("train", 5, 10, metrics={"epoch": 5, "loss": 0.5}))
    assert status_of(widget.status) == "epoch 5/10  loss 0.5"
    widget._on_event(Progress("train", 6, 10, metrics={"epoch": 6, "loss": 0.4, "val_pcc": 0.25}))
    assert status_of(widget.status) == "epoch 6/10  loss 0.4  validation PCC 0.250"



def colours_drawn(widget) -> np.ndarray:
    """The RGB pixels of ``widget`` as drawn now, one row per pixel."""
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    rows = np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : 3 * image.width()].reshape(-1, 3)


@pytest.mark.slow
def test_the_loss_curve_has_axes_and_a_validation_curve(make_napari_viewer):
    from napari_histosge.plugin.widgets.loss_curve import LOSS_COLOUR, VALIDATION_COLOUR, X_TITLE
    from napari_histosge.progress import Progress

    widget = TrainWidget(make_napari_viewer())
    for k in range(1, 11):  # the engine scores held-back spots every few epochs
        scored = {"val_pcc": 0.05 * k} if k % 2 == 0 else {}
        widget._on_event(Progress("train", k, 10, metrics={"epoch": k, "loss": 1.0 / k, **scored}))
    curve = widget.loss_curve
    curve.resize(400, curve.minimumHeight())
    assert curve.epochs == list(range(1, 11)) and [e for e, _ in curve.validation] == [2, 4, 6, 8, 10]
    drawn = colours_drawn(curve).astype(int)
    for colour in (LOSS_COLOUR, VALIDATION_COLOUR):
        assert (np.abs(drawn - colour).max(axis=1) < 40).sum() > 50, colour  # both curves are drawn
    assert X_TITLE in curve.toolTip() and "validation PCC" in curve.toolTip()


@pytest.mark.slow
def test_the_controls_a_user_asked_about_explain_themselves(make_napari_viewer):
    from dataclasses import fields

    from napari_histosge.plugin.widgets.superres import SuperResolveWidget
    from napari_histosge.training.config import TrainConfig, setting_of

    viewer = make_napari_viewer()
    train, superres, genes = TrainWidget(viewer), SuperResolveWidget(viewer), GeneViewerWidget(viewer)
    controls = {"epochs": train.epochs, "learning rate": train.lr, "device": train.device,
                "output folder": train.out_dir, "n genes": train.n_genes, "Start training": train.start_button,
                "Show gene": genes.show_button, "comparison": genes.compare_button,
                "Predict on this slide": superres.predict_button, "super-resolve device": superres.device}
    assert [name for name, control in controls.items() if not control.tooltip] == []
    declared = {f.name: setting_of(f).help for f in fields(TrainConfig)}  # one text for the form and the CLI
    assert (train.lr.tooltip, train.device.tooltip, train.n_genes.tooltip) == (
        declared["lr"], declared["device"], declared["n_top_genes"])

@pytest.fixture(scope="module")
def demo_checkpoint(demo_dir, tmp_path_factory) -> Path:
    from napari_histosge.io import read_spots
    from napari_histosge.models import train_config
    from napari_histosge.pipeline.steps import fit
    from napari_histosge.progress import run_to_end

    path = tmp_path_factory.mktemp("model") / "demo.pt"
    config = train_config("histosge", epochs=2, n_top_genes=8, val_fraction=0.0)
    run_to_end(fit(read_spots(demo_dir), train_config=config)).save(path)
    return path


def _bare_slide(demo_dir: Path, path: Path, mpp: float | None) -> Path:
    """The demo's H&E alone: a TIFF with its pixel size, or a PNG without one."""
    import tifffile
    from PIL import Image

    rgb = np.asarray(Image.open(next(demo_dir.glob("*_HE.jpg"))).convert("RGB"))
    if mpp is None:
        Image.fromarray(rgb).save(path)
    else:
        tifffile.imwrite(path, rgb, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


def _predict_on_slide(viewer, checkpoint: Path, qtbot, **choices):
    from napari_histosge.plugin.widgets.superres import FROM_FILE, SuperResolveWidget

    widget = SuperResolveWidget(viewer)
    [slide] = widget.slide.choices
    assert widget.slide.value is slide
    widget.model.value = FROM_FILE
    widget.checkpoint.value = str(checkpoint)
    for name, value in choices.items():
        getattr(widget, name).value = value
    widget.predict_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.error is None, widget.last_outcome.error
    return widget, slide


@pytest.mark.slow
def test_predict_on_a_bare_slide_shows_the_lattice_over_it(make_napari_viewer, demo_dir, demo_checkpoint, qtbot,
                                                           tmp_path):
    """A slide without a pixel size is shown in pixels: the predictions (in an assumed µm) line up with it."""
    from napari_histosge.plugin.widgets.layers import ROLE_PRED_SPOTS

    viewer = make_napari_viewer()
    viewer.open(str(_bare_slide(demo_dir, tmp_path / "bare.png", None)), plugin="napari-histosge")
    widget, slide = _predict_on_slide(viewer, demo_checkpoint, qtbot)
    pred, _ = widget.last_outcome.value
    assert pred.uns["histosge"]["positions"] == "spot lattice" and pred.uns["histosge"]["mpp"] is not None
    assert pred.uns["histosge"]["model_path"] == str(demo_checkpoint.resolve())
    [points] = layers_with_role(viewer.layers, ROLE_PRED_SPOTS)
    assert len(points.data) == pred.n_obs and points.visible
    world = np.array([points.data_to_world(p) for p in points.data])
    px = np.array([slide.world_to_data(w) for w in world])
    assert np.allclose(px[:, ::-1], pred.obsm["spatial"], atol=1e-6)
    assert status_of(widget.status) == f"{pred.n_obs} positions x {pred.n_vars} genes"


@pytest.mark.slow
def test_predict_on_a_bare_slide_on_a_µm_grid(make_napari_viewer, demo_dir, demo_checkpoint, qtbot, tmp_path,
                                             notifications):
    from napari_histosge.plugin.widgets.layers import ROLE_HEATMAP
    from napari_histosge.plugin.widgets.superres import SLIDE_GRID, SuperResolveWidget

    viewer = make_napari_viewer()
    SuperResolveWidget(viewer).predict_slide()  # nothing to predict on yet
    assert notifications[-1][0] == "error" and "Open a slide image without spots" in notifications[-1][1]
    viewer.open(str(_bare_slide(demo_dir, tmp_path / "bare.tif", 1.818)), plugin="napari-histosge")
    widget, slide = _predict_on_slide(viewer, demo_checkpoint, qtbot, slide_positions=SLIDE_GRID,
                                      slide_grid_um=200.0)
    pred, _ = widget.last_outcome.value
    grid = pred.uns["histosge"]["grid"]
    assert grid["cell_um"] == pytest.approx(200.0)
    [heat] = layers_with_role(viewer.layers, ROLE_HEATMAP)
    assert heat.data.shape == tuple(grid["shape"])
    assert np.isfinite(heat.data).sum() == pred.n_obs  # one painted pixel per cell, transparent off the tissue
    assert status_of(widget.status) == f"{pred.n_obs} grid cells x {pred.n_vars} genes"
    # a bare slide is not offered as spots to super-resolve, spots layers are not offered as bare slides
    assert widget.data.choices == ()


@pytest.mark.slow
def test_the_gene_preview_and_the_final_status_are_not_cut_off(make_napari_viewer, qtbot):
    from napari_histosge.plugin.widgets.status import MAX_LINES, set_status, status_of
    from napari_histosge.plugin.widgets.train import gene_preview_text

    viewer = make_napari_viewer(show=True)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    set_status(widget.preview, gene_preview_text([f"GENE{i:03d}" for i in range(300)], "spatially variable", []))
    widget.preview.visible = True
    widget.set_status("done: demo (300 genes); saved to /home/someone/histosge-models/demo_histosge_20260101-120000"
                      ".pt\nepochs: 60 on every training spot (a fixed schedule: too few spots to hold back 50)")
    qtbot.wait(100)  # the dock lays out
    for label in (widget.preview, widget.status):
        native = label.native
        cap = MAX_LINES * native.fontMetrics().lineSpacing()  # beyond it, the tooltip holds the full text
        assert native.height() >= min(native.heightForWidth(native.width()), cap), label  # every line shown
        assert label.tooltip == status_of(label)


def test_a_new_jpeg_opens_from_a_preview_while_it_is_decoded_behind(make_napari_viewer, tmp_path, qtbot,
                                                                     monkeypatch):
    """Opening her2st B4's JPEG froze the window for seconds (the whole decode on the event loop)."""
    import threading

    from PIL import Image

    from napari_histosge.plugin import reader
    from napari_histosge.slide import open as slide_open

    monkeypatch.setattr(slide_open, "BACKGROUND_MIN_PIXELS", 1000)
    monkeypatch.setenv("HISTOSGE_CACHE", str(tmp_path / "cache"))
    yy, xx = np.mgrid[0:1200, 0:1600]
    checks = ((xx // 4 + yy // 4) % 2) * 200 + 20  # detail a preview at an eighth of the size cannot hold
    img = np.stack([checks, checks, checks], axis=-1).astype(np.uint8)
    jpg = tmp_path / "slide.jpg"
    Image.fromarray(img).save(jpg, quality=95)
    release, real_decode, threads = threading.Event(), slide_open.pil_rgb, []

    def slow_decode(path):  # stands in for seconds of decoding a large JPEG
        threads.append(threading.current_thread())
        release.wait(timeout=10)
        return real_decode(path)

    monkeypatch.setattr(slide_open, "pil_rgb", slow_decode)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(jpg), plugin="napari-histosge")
    slide = histosge_meta(layer)["slide"]
    assert slide.ready is not None and not slide.ready.is_set() and reader._DECODE_TIMERS
    preview = np.asarray(layer.data[0][0:600, 0:800])
    assert preview.shape == (600, 800, 3)  # the preview at full size, already aligned
    release.set()
    qtbot.waitUntil(lambda: not reader._DECODE_TIMERS, timeout=60_000)  # the progress closed, the layer redrawn
    shown = np.asarray(layer.data[0][0:600, 0:800]).astype(int)
    assert np.abs(shown - img[:600, :800]).mean() < 10 < np.abs(preview.astype(int) - img[:600, :800]).mean()
    np.testing.assert_array_equal(slide.read_region(0, 0, 50, 40), np.asarray(layer.data[0][0:40, 0:50]))
    assert threads and threading.main_thread() not in threads  # decoded off the event loop
