"""The Detect nuclei widget in a real (headless) viewer: the detector in the background, a Labels layer on the slide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.widgets.nuclei import ROLE_CELLS, NucleiWidget
from napari_histosge.plugin.widgets.status import status_of
from test_cells import grid_centres, he_image


def write_slide(path, *, mpp: float | None):
    shape = (200, 240)
    centres = grid_centres(shape, 40, 24, 40)
    extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    tifffile.imwrite(path, he_image(centres, shape, 7.0, glass_cols=40), photometric="rgb", **extra)
    return centres


def detect(widget: NucleiWidget, qtbot) -> None:
    widget.run()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)


def test_detected_nuclei_are_added_as_labels_over_the_slide(make_napari_viewer, qtbot, tmp_path):
    centres = write_slide(tmp_path / "he.tif", mpp=0.5)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "he.tif"), plugin="napari-histosge")
    [slide] = L.layers_with_role(viewer.layers, L.ROLE_SLIDE)
    widget = NucleiWidget(viewer)
    assert widget.slide.value is slide
    widget.settings["expand_um"].value = 1.0
    detect(widget, qtbot)
    [labels] = L.layers_with_role(viewer.layers, ROLE_CELLS)
    assert labels.name == "he nuclei"
    cells = L.histosge_meta(labels)["cells"]
    assert cells.n_obs == len(centres) == len(np.unique(labels.data)) - 1
    assert cells.uns["histosge"]["cells"]["detector"]["expand_um"] == 1.0
    # the labels sit on the slide: same scale and translate, in µm
    assert np.allclose(labels.scale, slide.scale) and np.allclose(labels.translate, slide.translate)
    assert tuple(labels.units) == tuple(slide.units)
    assert f"{len(centres)} nuclei" in status_of(widget.status)


def test_a_slide_without_a_pixel_size_asks_for_one(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    write_slide(tmp_path / "nompp.tif", mpp=None)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "nompp.tif"), plugin="napari-histosge")
    widget = NucleiWidget(viewer)
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.run()
    assert widget.worker is None and len(shown) == 1 and "slide µm/px" in shown[0]
    widget.mpp.value = 0.5
    detect(widget, qtbot)
    assert len(L.layers_with_role(viewer.layers, ROLE_CELLS)) == 1


def test_bad_settings_are_refused_before_any_work(make_napari_viewer, tmp_path, monkeypatch):
    write_slide(tmp_path / "he.tif", mpp=0.5)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "he.tif"), plugin="napari-histosge")
    widget = NucleiWidget(viewer)
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.settings["nucleus_um"].value = 0.0
    widget.run()
    assert widget.worker is None and "nucleus_um" in shown[0]


def test_cancelling_stops_the_detection(make_napari_viewer, qtbot, tmp_path):
    write_slide(tmp_path / "he.tif", mpp=0.5)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "he.tif"), plugin="napari-histosge")
    widget = NucleiWidget(viewer)
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.last_outcome is not None and widget.last_outcome.cancelled
    assert L.layers_with_role(viewer.layers, ROLE_CELLS) == []


def test_a_sections_image_gets_its_nuclei_in_the_sections_frame(make_napari_viewer, qtbot, demo_dir):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    [slide] = L.layers_with_role(viewer.layers, L.ROLE_SLIDE)
    widget = NucleiWidget(viewer)
    detect(widget, qtbot)
    outcome = widget.last_outcome
    assert outcome is not None and outcome.error is None, outcome.error
    [labels] = L.layers_with_role(viewer.layers, ROLE_CELLS)
    f = L.histosge_meta(labels)["px_per_label_px"]
    # a label pixel spans f full-res pixels: f times the slide's full-res pixel in the world
    assert np.allclose(np.asarray(labels.scale), np.asarray(slide.scale) * f)


@pytest.fixture(autouse=True)
def _no_torch_preload(monkeypatch):
    # the detector needs no torch: skip the worker's torch preload to keep the test quick
    monkeypatch.setattr("napari_histosge.plugin.widgets.worker.preload_torch", lambda: None)


def test_a_large_slides_labels_stream_from_a_zarr_pyramid_in_the_cache(make_napari_viewer, qtbot, tmp_path,
                                                                        monkeypatch):
    from napari_histosge.slide.open import cache_root

    monkeypatch.setattr("napari_histosge.cells.detect.MAX_IN_MEMORY_PIXELS", 1000)  # the test slide is "large"
    monkeypatch.setattr("napari_histosge.cells.write.PYRAMID_SMALLEST", 64)
    centres = write_slide(tmp_path / "he.tif", mpp=0.5)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "he.tif"), plugin="napari-histosge")
    widget = NucleiWidget(viewer)
    detect(widget, qtbot)
    [labels] = L.layers_with_role(viewer.layers, ROLE_CELLS)
    # napari reads the level it shows, never the whole raster on the event loop
    assert labels.multiscale and [tuple(level.shape) for level in labels.data] == [(200, 240), (100, 120), (50, 60)]
    assert not isinstance(labels.data[0], np.ndarray)
    assert len(np.unique(np.asarray(labels.data[0][:]))) - 1 == len(centres)
    store = L.histosge_meta(labels)["store"]
    assert store.parent == cache_root() / "nuclei" and store.is_dir()
    viewer.layers.remove(labels)
    assert not store.exists()


def test_a_cancelled_large_detection_leaves_no_store_in_the_cache(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import os
    import time

    from napari_histosge.slide.open import cache_root

    monkeypatch.setattr("napari_histosge.cells.detect.MAX_IN_MEMORY_PIXELS", 1000)
    write_slide(tmp_path / "he.tif", mpp=0.5)
    stale = cache_root() / "nuclei" / "stale.zarr"  # left by a session that crashed long ago
    stale.mkdir(parents=True, exist_ok=True)
    os.utime(stale, (time.time() - 30 * 86400,) * 2)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "he.tif"), plugin="napari-histosge")
    widget = NucleiWidget(viewer)
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.last_outcome is not None and widget.last_outcome.cancelled
    assert list((cache_root() / "nuclei").iterdir()) == []


def test_a_labels_layer_painted_over_the_slide_reads_as_cells(make_napari_viewer, tmp_path):
    from napari_histosge.errors import InputError
    from napari_histosge.plugin.widgets.nuclei import layer_segmentation
    from test_cells import disc_labels

    write_slide(tmp_path / "he.tif", mpp=0.5)  # 200 x 240 px
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "he.tif"), plugin="napari-histosge")
    [slide] = L.layers_with_role(viewer.layers, L.ROLE_SLIDE)
    # as StarDist or Cellpose add their result: the slide's own scale and translate
    same = viewer.add_labels(disc_labels(), scale=slide.scale, translate=slide.translate, name="stardist")
    seg = layer_segmentation(same, slide)
    assert seg.n_cells == 3 and seg.px_per_label_px == 1.0
    assert np.allclose(seg.table.obsm["spatial"][0], [60, 50])
    assert seg.table.obs["area_um2"].iloc[0] == pytest.approx(seg.table.obs["area_px"].iloc[0] * 0.25)
    # labels made on a copy downscaled twice, placed on the slide
    half = viewer.add_labels(disc_labels()[::2, ::2], scale=np.asarray(slide.scale) * 2,
                             translate=np.asarray(slide.translate) + 0.5 * np.asarray(slide.scale), name="half")
    assert layer_segmentation(half, slide).px_per_label_px == pytest.approx(2.0)
    shifted = viewer.add_labels(disc_labels(), scale=slide.scale, translate=(500, 0), name="shifted")
    with pytest.raises(InputError, match="shifted"):
        layer_segmentation(shifted, slide)
    empty = viewer.add_labels(np.zeros((200, 240), np.int32), scale=slide.scale, translate=slide.translate)
    with pytest.raises(InputError, match="empty"):
        layer_segmentation(empty, slide)
