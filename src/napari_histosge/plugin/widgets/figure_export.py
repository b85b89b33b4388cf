"""The Gene viewer's "Export figure…": the canvas as shown, with the gene's legend and a scale bar.

The canvas is captured without napari's own scale bar (the figure draws its own, in vector
form), the pixel size of the capture comes from the camera's zoom and the layers' units, and
the legend is the Gene viewer's colour bar. The core's :func:`~napari_histosge.export.figure.write_figure`
lays out and writes the file (PNG, SVG or PDF).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ...export.figure import FIGURE_SUFFIXES, Legend, figure_format, trim_background, write_figure

#: The file dialog's filters, one per format.
FILE_FILTERS = "PNG image (*.png);;SVG vector figure (*.svg);;PDF document (*.pdf)"
#: Micrometres per world unit for the length units napari layers carry here.
UM_PER_UNIT = {"micrometer": 1.0, "millimeter": 1000.0, "nanometer": 1e-3}


def napari_scale_bar(viewer):
    """The scale bar overlay of napari (``viewer.canvas.overlays`` since napari 0.9, ``viewer.scale_bar`` before)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None)
    return bar if bar is not None else viewer.scale_bar


@contextmanager
def scale_bar_hidden(viewer):
    """Hide napari's scale bar inside the block; its visibility is restored after, even on an error."""
    bar = napari_scale_bar(viewer)
    was = bool(bar.visible)
    bar.visible = False
    try:
        yield
    finally:
        bar.visible = was


def canvas_size(viewer) -> tuple[int, int] | None:
    """``(height, width)`` of the canvas in logical (screen) pixels, or ``None`` when napari does not say."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)  # napari >= 0.6
    if size is None:
        size = getattr(viewer, "_canvas_size", None)  # older napari keeps it on the model
    return (int(size[0]), int(size[1])) if size is not None and len(size) == 2 else None


def world_um(viewer) -> float | None:
    """Micrometres per world unit: from the visible layers' units, ``None`` in pixels or mixed units."""
    units = {str(u) for layer in viewer.layers if layer.visible
             for u in tuple(getattr(layer, "units", ()))[-2:]}
    if len(units) != 1:
        return None
    return UM_PER_UNIT.get(units.pop())


def camera(viewer):
    """The camera of the 2D view (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    found = getattr(getattr(viewer, "scene", None), "camera", None)
    return found if found is not None else viewer.camera


def shot_pixel_ratio(viewer, shot_shape: tuple[int, ...], fallback: float = 1.0) -> float:
    """Screenshot pixels per logical canvas pixel (2 on a typical high-DPI screen).

    The screenshot's shape over the canvas size, when both sides agree; else ``fallback``
    (the widget's device pixel ratio): napari's canvas size is stale until the canvas was
    first resized (a viewer never shown).
    """
    size = canvas_size(viewer)
    if size is not None and min(size) > 0:
        r_h, r_w = shot_shape[0] / size[0], shot_shape[1] / size[1]
        if abs(r_h - r_w) <= 0.02 * max(r_h, r_w):
            return r_w
    return float(fallback)


def um_per_screenshot_px(viewer, shot_shape: tuple[int, ...], *, fallback_ratio: float = 1.0) -> float | None:
    """Micrometres per pixel of a canvas screenshot of ``shot_shape``, or ``None`` when unknown.

    The camera's zoom is logical screen pixels per world unit; a screenshot has physical
    pixels, more than the logical ones on a high-DPI screen (:func:`shot_pixel_ratio`).
    Unknown in 3D (perspective), in grid mode (several views) and when the world is in pixels.
    """
    um = world_um(viewer)
    grid = getattr(getattr(viewer, "canvas", None), "grid", None)
    grid = grid if grid is not None else getattr(viewer, "grid", None)
    zoom = float(camera(viewer).zoom)
    if um is None or viewer.dims.ndisplay != 2 or getattr(grid, "enabled", False) or not zoom > 0:
        return None
    return um / (zoom * shot_pixel_ratio(viewer, shot_shape, fallback_ratio))


def colorbar_legend(colorbar) -> Legend | None:
    """The Gene viewer's colour bar as a :class:`Legend`, or ``None`` while it shows a message (no gene)."""
    if colorbar.message is not None:
        return None
    return Legend(title=colorbar.title, vmin=colorbar.vmin, vmax=colorbar.vmax, colormap=list(colorbar.stops),
                  units=colorbar.units)


def capture(viewer, pixel_ratio: float = 1.0) -> tuple[np.ndarray, float | None]:
    """The canvas as shown, without napari's scale bar or the empty bars beside the data, and µm per pixel.

    ``pixel_ratio`` is the screen's device pixel ratio, used when napari's canvas size is stale.
    """
    with scale_bar_hidden(viewer):
        image = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    um = um_per_screenshot_px(viewer, image.shape, fallback_ratio=pixel_ratio)
    return trim_background(image, canvas_colour(viewer)), um


def canvas_colour(viewer) -> tuple[int, int, int]:
    """The canvas background of the viewer's theme, 0-255 RGB (what napari draws where no layer is)."""
    from napari.utils.theme import get_theme

    return tuple(int(c) for c in get_theme(viewer.theme).canvas.as_rgb_tuple()[:3])  # type: ignore[return-value]


def export_figure(viewer, colorbar, path: str | Path) -> Path:
    """Write the canvas with ``colorbar``'s legend and a scale bar to ``path`` (format from its suffix)."""
    return write_captured(path, *capture_figure(viewer, colorbar, path))


def capture_figure(viewer, colorbar, path: str | Path) -> tuple[Any, float | None, Any]:
    """What :func:`write_captured` writes: the canvas, its µm per pixel and the legend (GUI thread only)."""
    figure_format(path)  # a wrong suffix is refused before the capture
    image, um = capture(viewer, float(colorbar.devicePixelRatioF()))
    return image, um, colorbar_legend(colorbar)


def write_captured(path: str | Path, image: Any, um: float | None, legend: Any) -> Path:
    """Write a :func:`capture_figure` capture to ``path`` (no Qt: may run in a background thread)."""
    return write_figure(path, image, legend=legend, um_per_image_px=um)


def ask_figure_path(parent, start: str = "figure.png") -> str | None:
    """Ask where to write the figure (a Qt save dialog); ``None`` when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, chosen = QFileDialog.getSaveFileName(parent, "Export figure", start, FILE_FILTERS)
    if not path:
        return None
    if Path(path).suffix.lower() not in FIGURE_SUFFIXES:  # some platforms leave the suffix to the user
        path += ".svg" if "svg" in chosen else ".pdf" if "pdf" in chosen else ".png"
    return path
