"""The Train widget takes a Hugging Face hub model's folder, with the command line's checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from napari_histosge.errors import InputError
from napari_histosge.plugin.widgets.state import SESSION_MODELS
from napari_histosge.plugin.widgets.status import status_of
from napari_histosge.plugin.widgets.train import TrainWidget
from test_hub_extractor import write_hub_folder

WORKER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    return write_hub_folder(tmp_path_factory.mktemp("hub") / "tiny")


def _hub_widget(viewer, demo_dir: Path, out: Path, folder: Path) -> TrainWidget:
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = TrainWidget(viewer)
    widget.out_dir.value = str(out)
    widget.extractor.value = "hub"
    widget.hub_name.value = "org/tiny"
    widget.hub_folder.value = str(folder)
    widget.n_genes.value = 8
    widget.epochs.value = 2
    return widget


@pytest.mark.slow
def test_the_widget_trains_with_a_hub_folder(make_napari_viewer, demo_dir, hub_dir, qtbot, tmp_path) -> None:
    SESSION_MODELS.clear()
    widget = _hub_widget(make_napari_viewer(), demo_dir, tmp_path, hub_dir)
    assert widget.hub_folder.native.isVisibleTo(widget.native) and not widget.weights.native.isVisibleTo(
        widget.native)
    config = widget.feature_config()
    assert config.extractor == "hf:org/tiny" and config.checkpoint == str(hub_dir)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome is not None and widget.last_outcome.error is None
    [name] = SESSION_MODELS.names()
    assert SESSION_MODELS.get(name).model.meta.feature_identity.startswith("hf:org/tiny|")
    SESSION_MODELS.clear()


@pytest.mark.slow
def test_the_widget_refuses_a_folder_without_config_in_its_worker(make_napari_viewer, demo_dir, hub_dir, qtbot,
                                                                 tmp_path, monkeypatch) -> None:
    """The extractor check (a hub probe may wait on the network) runs in the job, not on the event loop."""
    from napari_histosge import features

    broken = tmp_path / "broken"
    shutil.copytree(hub_dir, broken)
    (broken / "config.json").unlink()
    widget = _hub_widget(make_napari_viewer(), demo_dir, tmp_path, broken)
    with pytest.raises(InputError, match="has no config.json"):
        features.check_extractor(widget.feature_config().extractor, str(broken))
    shown: list[str] = []
    import threading

    import napari.utils.notifications as notifications

    checked_in: list[threading.Thread] = []
    check = features.check_extractor
    monkeypatch.setattr(features, "check_extractor",
                        lambda *a, **k: (checked_in.append(threading.current_thread()), check(*a, **k)))
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    widget.start()
    assert widget.worker is not None  # Start returned at once: the check waits in the worker
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert checked_in and checked_in[0] is not threading.main_thread()
    assert len(shown) == 1 and "has no config.json" in shown[0] and "\n" not in shown[0]
    assert status_of(widget.status) == f"error: {shown[0]}"
    assert widget.checkpoint_path is not None and not widget.checkpoint_path.exists()  # nothing written
    assert widget.start_button.enabled  # the form is usable again
