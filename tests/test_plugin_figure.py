"""The Gene viewer's "Export figure…" in a real (headless) viewer: canvas, legend, scale bar."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.widgets.figure_export import (
    camera,
    canvas_size,
    napari_scale_bar,
    um_per_screenshot_px,
    world_um,
)
from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
from napari_histosge.plugin.widgets.status import status_of


@pytest.fixture
def session(make_napari_viewer, demo_dir):
    """The demo section (in micrometres) in a viewer with the Gene viewer, napari's scale bar on."""
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    [spots] = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)
    widget = GeneViewerWidget(viewer)
    napari_scale_bar(viewer).visible = True
    return viewer, widget, spots


@pytest.fixture
def shots(session, monkeypatch):
    """Whether napari's scale bar was visible at each screenshot, and the shape taken."""
    viewer = session[0]
    seen: list[tuple[bool, tuple[int, ...]]] = []
    take = type(viewer).screenshot

    def spy(self, *args, **kwargs):
        image = take(self, *args, **kwargs)
        seen.append((bool(napari_scale_bar(self).visible), np.asarray(image).shape))
        return image

    monkeypatch.setattr(type(viewer), "screenshot", spy)  # a pydantic model: patched on its class
    return seen


def svg_texts(path: Path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_export_png_with_legend_restores_napari_scale_bar(session, shots, tmp_path: Path) -> None:
    viewer, widget, spots = session
    gene = str(L.histosge_meta(spots)["adata"].var_names[3])
    assert widget.show_gene(gene)
    out = widget.export_figure(str(tmp_path / "fig.png"))
    assert out == tmp_path / "fig.png" and out.is_file()
    [(visible_during, shape)] = shots
    assert visible_during is False  # the figure draws its own scale bar
    assert napari_scale_bar(viewer).visible is True
    with Image.open(out) as png:
        assert png.width == max(shape[1], 480) and png.height > shape[0]  # the canvas plus the legend's footer
        pixels = np.asarray(png.convert("RGB"))
    footer = pixels[shape[0]:]
    assert (footer.std(axis=2) > 40).any()  # the colour ramp is drawn there (coloured, not grey text)
    assert str(out) in status_of(widget.info)


def test_export_svg_legend_is_the_colour_bars_and_the_scale_bar_is_in_micrometres(session, shots,
                                                                                   tmp_path: Path) -> None:
    viewer, widget, spots = session
    gene = str(L.histosge_meta(spots)["adata"].var_names[5])
    widget.show_gene(gene)
    assert world_um(viewer) == 1.0  # the demo records its pixel size: layers in µm
    out = widget.export_figure(str(tmp_path / "fig.svg"))
    texts = svg_texts(out)
    assert any(t.startswith(gene) for t in texts)
    assert f"{widget.colorbar.vmin:.3g}" in texts and f"{widget.colorbar.vmax:.3g}" in texts
    assert any(re.fullmatch(r"[125]0* µm|[125]0* mm|[125] mm", t) for t in texts)


def test_without_a_gene_the_figure_has_no_legend(session, shots, tmp_path: Path) -> None:
    viewer, widget, spots = session
    spots.visible = False  # the colour bar now shows a message
    assert widget.colorbar.message is not None
    texts = svg_texts(widget.export_figure(str(tmp_path / "fig.svg")))
    assert not any(t.startswith(str(L.histosge_meta(spots)["adata"].var_names[0])) for t in texts)


def test_pixel_size_follows_the_zoom_and_the_screenshot_size(session) -> None:
    viewer, _, _ = session
    camera(viewer).zoom = 2.0
    h, w = canvas_size(viewer)
    assert um_per_screenshot_px(viewer, (h, w)) == pytest.approx(0.5)  # 2 screen px per µm
    assert um_per_screenshot_px(viewer, (2 * h, 2 * w)) == pytest.approx(0.25)  # a high-DPI screenshot
    camera(viewer).zoom = 4.0
    assert um_per_screenshot_px(viewer, (h, w)) == pytest.approx(0.25)
    # a shape that does not fit the canvas size (napari's is stale before a first resize): the screen's ratio
    assert um_per_screenshot_px(viewer, (h + 100, w), fallback_ratio=2.0) == pytest.approx(0.125)


def test_a_world_in_pixels_has_no_pixel_size(session) -> None:
    viewer, _, _ = session
    viewer.layers.clear()
    viewer.add_image(np.zeros((20, 30)))
    assert world_um(viewer) is None
    assert um_per_screenshot_px(viewer, canvas_size(viewer)) is None


def test_a_bad_path_says_so_and_still_restores_the_scale_bar(session, shots, tmp_path: Path) -> None:
    viewer, widget, _ = session
    assert widget.export_figure(str(tmp_path / "fig.bmp")) is None
    assert "figure not written" in status_of(widget.info) and ".bmp" in status_of(widget.info)
    assert napari_scale_bar(viewer).visible is True
    assert not (tmp_path / "fig.bmp").exists()


def test_the_figure_has_no_empty_canvas_bars(make_napari_viewer, demo_dir) -> None:
    """The canvas's background beside the slide is cut away (the pixel size stands)."""
    from napari_histosge.plugin.widgets.figure_export import canvas_colour, capture

    viewer = make_napari_viewer(show=True)  # drawn: a hidden canvas's screenshot is blank
    viewer.open(str(demo_dir), plugin="napari-histosge")
    viewer.window.resize(1100, 500)  # a wide window: bars beside the section
    viewer.reset_view()
    shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    image, um = capture(viewer)
    assert image.shape[1] < shot.shape[1] and um is not None
    background = np.asarray(canvas_colour(viewer))
    for edge in (image[0], image[-1], image[:, 0], image[:, -1]):
        assert (np.abs(edge[:, :3].astype(int) - background).max(axis=1) > 2).any()  # the data reach every edge


def test_the_export_button_writes_the_figure_in_a_background_worker(session, tmp_path: Path, qtbot,
                                                                     monkeypatch) -> None:
    """Rendering and writing a figure froze the viewer; only the canvas capture needs the GUI thread."""
    import threading

    from napari_histosge.plugin.widgets import figure_export

    _viewer, widget, spots = session
    assert widget.show_gene(str(L.histosge_meta(spots)["adata"].var_names[3]))
    threads, real_write = [], figure_export.write_figure

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_write(*args, **kwargs)

    monkeypatch.setattr(figure_export, "write_figure", spy)
    monkeypatch.setattr(figure_export, "ask_figure_path", lambda parent, start="figure.png": str(tmp_path / "f.png"))
    widget.export_button.clicked.emit()  # as the user clicks "Export figure…"
    qtbot.waitUntil(lambda: "figure written" in status_of(widget.info), timeout=60_000)
    assert (tmp_path / "f.png").is_file() and threads and threading.main_thread() not in threads
    assert widget.export_figure(str(tmp_path / "bad.bmp"), background=True) is None  # refused before any capture
    assert "figure not written" in status_of(widget.info)


def test_a_figure_that_cannot_be_written_is_one_status_line_not_a_traceback(session, tmp_path: Path, qtbot,
                                                                           monkeypatch) -> None:
    from napari_histosge.errors import InputError
    from napari_histosge.plugin.widgets import figure_export

    _viewer, widget, spots = session
    assert widget.show_gene(str(L.histosge_meta(spots)["adata"].var_names[3]))

    def refuse(*args, **kwargs):
        raise InputError("the folder is read-only", tmp_path)

    monkeypatch.setattr(figure_export, "write_figure", refuse)
    # pytest-qt fails the test on an exception re-raised in the GUI thread (superqt's default for a worker error)
    widget.export_figure(str(tmp_path / "f.png"), background=True)
    qtbot.waitUntil(lambda: "figure not written" in status_of(widget.info), timeout=60_000)
    qtbot.waitUntil(lambda: widget.figure_worker is None or not widget.figure_worker.is_running, timeout=10_000)
    qtbot.wait(200)
    assert "read-only" in status_of(widget.info)
