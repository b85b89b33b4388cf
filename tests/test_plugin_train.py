"""The Train widget keeps every finished model and says when a section's image is too coarse."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_histosge.plugin.widgets.layers import ROLE_SPOTS, histosge_meta, layers_with_role
from napari_histosge.plugin.widgets.state import SESSION_MODELS
from napari_histosge.plugin.widgets.status import status_of
from napari_histosge.plugin.widgets.train import TrainWidget

WORKER_TIMEOUT_MS = 120_000



def _quick_widget(viewer, demo_dir: Path, out: Path) -> TrainWidget:
    """A Train widget on the demo section set for a quick run (no image features, 10 genes, 2 epochs)."""
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = TrainWidget(viewer)
    widget.out_dir.value = str(out)
    widget.extractor.value = "none"
    widget.n_genes.value = 10
    widget.epochs.value = 2
    return widget


@pytest.mark.slow
def test_a_cancelled_run_never_overwrites_a_finished_model(make_napari_viewer, demo_dir, qtbot, tmp_path,
                                                           notifications):
    SESSION_MODELS.clear()
    widget = _quick_widget(make_napari_viewer(), demo_dir, tmp_path)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    [finished] = SESSION_MODELS.names()
    finished_file = SESSION_MODELS.get(finished).checkpoint
    saved = finished_file.read_bytes()
    # a second run on the same section, cancelled during training
    widget.epochs.value = 100_000
    widget.start()
    qtbot.waitUntil(lambda: any(e.stage == "train" and e.step >= 2 for e in widget.events_seen),
                    timeout=WORKER_TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.cancelled
    cancelled_file = widget.checkpoint_path
    assert cancelled_file != finished_file and cancelled_file.is_file()
    assert finished_file.read_bytes() == saved  # the finished model is untouched
    # the finished model still points at its own file; the cancelled run's file is offered beside it
    [_, offered] = SESSION_MODELS.names()
    assert SESSION_MODELS.get(finished).checkpoint == finished_file
    entry = SESSION_MODELS.get(offered)
    assert entry.checkpoint == cancelled_file and entry.model is None and entry.note.startswith("cancelled at epoch")
    status = status_of(widget.status)
    assert status.startswith("cancelled at epoch") and str(cancelled_file) in status and offered in status
    assert entry.load(device="cpu").genes == SESSION_MODELS.get(finished).model.genes  # read when first used
    SESSION_MODELS.clear()


@pytest.mark.slow
def test_a_low_resolution_section_is_flagged_when_chosen_and_on_start(make_napari_viewer, demo_dir, tmp_path,
                                                                      notifications, qtbot):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    [spots] = layers_with_role(viewer.layers, ROLE_SPOTS)
    adata = histosge_meta(spots)["adata"]
    # as on DLPFC: a spot only a few pixels wide in the only image
    adata.uns["histosge"]["images"] = {"lowres": {**adata.uns["histosge"]["images"]["fullres"], "scale": 0.05}}
    adata.uns["histosge"]["image"] = "lowres"
    widget = TrainWidget(viewer)
    assert widget.notice.native.isVisibleTo(widget.native)
    assert "px across a spot" in status_of(widget.notice)
    widget.extractor.value = "none"  # positions only: the image does not matter
    assert not widget.notice.native.isVisibleTo(widget.native)
    widget.extractor.value = "default"
    widget.out_dir.value = str(tmp_path)
    widget.epochs.value = 1
    widget.n_genes.value = 5
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert any(k == "warning" and "px across a spot" in m for k, m in notifications)


@pytest.mark.realdata
def test_opening_dlpfc_warns_about_its_low_resolution_image(dlpfc_151675):
    from napari_histosge.plugin.reader import read_spots_layers

    with pytest.warns(UserWarning, match="4 px across a spot"):
        read_spots_layers(str(dlpfc_151675))


@pytest.mark.slow
def test_super_resolve_widget_adds_the_layers_made_in_its_worker(make_napari_viewer, demo_dir, qtbot, tmp_path):
    from napari_histosge.plugin.widgets.layers import ROLE_HEATMAP
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget

    SESSION_MODELS.clear()
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    train = TrainWidget(viewer)
    train.out_dir.value = str(tmp_path)
    train.extractor.value = "none"
    train.n_genes.value = 5
    train.epochs.value = 2
    train.start()
    qtbot.waitUntil(lambda: train.worker is None, timeout=WORKER_TIMEOUT_MS)
    widget = SuperResolveWidget(viewer)
    assert widget.model.value == SESSION_MODELS.names()[-1]
    widget.fold.value = 2
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    pred, layers = widget.last_outcome.value  # the layer data were made in the worker thread
    [heat] = layers_with_role(viewer.layers, ROLE_HEATMAP)
    assert heat.data is layers[0][0] and histosge_meta(heat)["adata"] is pred
    assert status_of(widget.status) == f"{pred.n_obs} positions x {pred.n_vars} genes"
    SESSION_MODELS.clear()


@pytest.mark.slow
def test_a_run_can_start_from_a_trained_model_and_takes_the_lock(make_napari_viewer, demo_dir, qtbot, tmp_path,
                                                                 notifications, monkeypatch):
    from napari_histosge import outputs
    from napari_histosge.plugin.widgets import train

    SESSION_MODELS.clear()
    widget = _quick_widget(make_napari_viewer(), demo_dir, tmp_path)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    prior = widget.checkpoint_path
    widget.init.value = str(prior)
    # Another writer holds the next run's checkpoint: the run is refused, naming the lock.
    fixed = tmp_path / "fixed.pt"
    monkeypatch.setattr(train, "new_checkpoint_path", lambda *_a, **_k: fixed)
    held = outputs.acquire_lock(fixed)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.error is not None and ".lock" in str(widget.last_outcome.error)
    outputs.release_lock(held)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.error is None
    assert widget.last_model.meta.init["path"] == str(prior)
    assert not outputs.lock_path(fixed).exists()  # released when the run ended
    # A missing file is one clear error at Start, before any work.
    widget.init.value = str(tmp_path / "gone.pt")
    widget.start()
    assert widget.worker is None and any(kind == "error" and "start from" in msg for kind, msg in notifications)


@pytest.mark.slow
def test_the_genes_default_to_spatially_variable_ones_with_markers_kept_and_the_preview_is_what_trains(
        make_napari_viewer, demo_dir, qtbot, tmp_path, notifications):
    from napari_histosge.plugin.widgets.train import GENES_HVG, GENES_LIST, GENES_SPATIAL

    widget = _quick_widget(make_napari_viewer(), demo_dir, tmp_path)
    adata = histosge_meta(widget.data.value[0])["adata"]
    assert widget.genes_mode.value == GENES_SPATIAL and widget.train_config().gene_selection == "spatial"
    first, last = str(adata.var_names[0]), str(adata.var_names[-1])
    widget.markers.value = first
    markers = tmp_path / "markers.txt"
    markers.write_text(f"# from a file\n{last}\n")
    widget.gene_file.value = str(markers)
    config = widget.train_config()
    assert config.include_genes == [first, last] and config.genes is None

    widget.preview_button.native.click()
    qtbot.waitUntil(lambda: status_of(widget.preview).startswith("10 genes"), timeout=WORKER_TIMEOUT_MS)
    text = status_of(widget.preview)
    assert not widget.preview.native.isHidden()
    assert f"always included: {first}, {last}" in text and "spatially variable" in text
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    genes = widget.last_model.genes
    assert {first, last} <= set(genes) and ", ".join(genes) in text  # the preview named what trained
    widget.n_genes.value = 12
    assert widget.preview.native.isHidden()  # a changed setting makes the shown list stale

    widget.genes_mode.value = GENES_HVG
    assert widget.train_config().gene_selection == "hvg"
    widget.genes_mode.value = GENES_LIST
    assert widget.markers.native.isHidden() and not widget.gene_list.native.isHidden()
    widget.gene_file.value = str(tmp_path / "gone.txt")
    widget.start()
    assert widget.worker is None and "gene file does not exist" in notifications[-1][1]


def test_stain_normalisation_is_offered_with_image_features_and_reaches_the_run(make_napari_viewer, demo_dir):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = TrainWidget(viewer)
    assert widget.stain.value == "none" and widget.feature_config().stain == "none"
    widget.stain.value = "macenko"
    assert widget.feature_config().stain == "macenko"
    widget.extractor.value = "none"  # positions only: there are no patches to normalise
    assert widget.stain.native.isHidden() and widget.feature_config().stain == "none"
    widget.extractor.value = "default"
    assert not widget.stain.native.isHidden()


def test_nucleus_morphometrics_are_offered_as_the_command_line_spells_them(make_napari_viewer, demo_dir):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = TrainWidget(viewer)
    for spec in ("nuclei", "default+nuclei"):
        widget.extractor.value = spec
        assert widget.feature_config().extractor == spec and widget.feature_config().checkpoint is None


def test_typed_epochs_run_on_a_section_too_small_to_validate(make_napari_viewer, demo_dir, qtbot, tmp_path,
                                                             notifications):
    """The demo section holds back too few spots to stop early on; a typed number still runs as typed."""
    from napari_histosge.models import HisToSGEConfig

    SESSION_MODELS.clear()
    widget = _quick_widget(make_napari_viewer(), demo_dir, tmp_path)
    typed = HisToSGEConfig.default_of("schedule_epochs") + 5  # longer than the fixed schedule
    widget.epochs.value = typed
    assert "runs as typed" in widget.epochs.tooltip  # said before training
    widget.start()
    qtbot.waitUntil(lambda: any(e.stage == "train" for e in widget.events_seen), timeout=WORKER_TIMEOUT_MS)
    widget.cancel()  # the plan is in the first epoch's event ("epoch 1/N"); no need to train it all
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert {e.total for e in widget.events_seen if e.stage == "train"} == {typed}
    # the default typed is typed too: it runs as typed, as --epochs 1000 (left alone, the model's own rule
    # for small sections applies: test_plugin_train_settings)
    widget.epochs.value = HisToSGEConfig.default_of("epochs")
    config = widget.train_config()
    assert config.epochs == HisToSGEConfig.default_of("epochs") and config.schedule_epochs is None


@pytest.mark.slow
def test_the_model_panel_shows_opens_saves_and_renames_models(make_napari_viewer, demo_dir, qtbot, tmp_path):
    from napari_histosge.io import read_spots
    from napari_histosge.models import train_config
    from napari_histosge.pipeline.steps import fit
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget
    from napari_histosge.progress import run_to_end

    SESSION_MODELS.clear()
    checkpoint = tmp_path / "b4.pt"
    config = train_config("histosge", epochs=2, n_top_genes=8, val_fraction=0.0)
    run_to_end(fit(read_spots(demo_dir), train_config=config)).save(checkpoint)
    widget = SuperResolveWidget(make_napari_viewer())
    panel = widget.models_panel
    assert "no model yet" in status_of(panel.details)
    panel.open_model(str(checkpoint))  # read in the background
    qtbot.waitUntil(lambda: len(SESSION_MODELS.names()) == 1, timeout=WORKER_TIMEOUT_MS)
    [name] = SESSION_MODELS.names()
    assert name == "b4 histosge (8 genes)" and panel.models.value == name
    details = status_of(panel.details)
    for shown in ("model: histosge", "genes: 8 (", "sections: ", f"file: {checkpoint}"):
        assert shown in details, shown
    # rename: the Super-resolve choice follows
    renamed = panel.rename("a much longer name for the tumour model of section B4")
    assert SESSION_MODELS.names() == [renamed] and renamed in widget.model.choices
    view = panel.models.native.view()
    assert view.minimumWidth() >= panel.models.native.fontMetrics().horizontalAdvance(renamed)  # not cut off
    # save as: a new file, now the model's own
    copy = panel.save_as(str(tmp_path / "copy.pt"))
    assert copy.is_file() and SESSION_MODELS.get(renamed).checkpoint == copy
    assert f"file: {copy}" in status_of(panel.details)
    # outputs of a session model with a file name that file, as the CLI's outputs do
    widget.model.value = renamed
    assert widget._model_loader() is not None and widget._model_path == str(copy.resolve())
    SESSION_MODELS.clear()


def test_a_closed_super_resolve_widget_no_longer_follows_the_session_models(make_napari_viewer, qtbot):
    # The registry outlives the dock widgets: training a model after closing one must not call into its
    # deleted controls (RuntimeError: wrapped C/C++ object ... has been deleted).
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget

    widget = SuperResolveWidget(make_napari_viewer())
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: _deleted(widget.model.native), timeout=5000)
    SESSION_MODELS.clear()  # emits changed: nothing reaches the deleted widget


def _deleted(qt_object) -> bool:
    try:
        qt_object.objectName()
    except RuntimeError:
        return True
    return False
