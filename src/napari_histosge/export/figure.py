"""Figures of an expression map: the image as a raster, with a vector colour bar and scale bar.

:func:`write_figure` lays out one image (a napari screenshot, or a map from
:func:`~.render.render_map`) above a footer holding the legend (gene, units, a colour ramp
with its min and max) and a scale bar of a round length. Only the image is a raster: in SVG
and PDF the legend and the scale bar stay text and paths, editable in a vector editor.
The format follows the file's suffix (:data:`FIGURE_SUFFIXES`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from ..outputs import write_with

#: Formats a figure may be written in, by file suffix.
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
#: An H&E tone under the colour ramp: its transparent low end reads as "the slide shows" (as in the plugin).
SLIDE_TONE = (236, 214, 228)
#: Figure pixels per inch: one image pixel is one figure pixel in a PNG.
DPI = 100
#: The narrowest figure in pixels: a small image still gets a readable legend.
MIN_WIDTH_PX = 480
#: Share of the image's width the scale bar aims at (then rounded to 1, 2 or 5 x 10^k).
SCALE_BAR_SHARE = 0.2
#: Segments of the colour ramp: many, so the ramp looks continuous, each a vector rectangle.
RAMP_SEGMENTS = 128


@dataclass(frozen=True)
class Legend:
    """What a colour bar shows: a title (the gene), its units and the colormap over ``[vmin, vmax]``.

    ``colormap`` is an ``(n, 4)`` array of RGBA stops evenly spaced from ``vmin`` to ``vmax``
    (0-1, or 0-255 when any value exceeds 1), or ``(position, (r, g, b, a))`` pairs with
    positions in ``[0, 1]`` and 0-255 colours (the plugin's colour bar stops).
    """

    title: str
    vmin: float
    vmax: float
    colormap: Any
    units: str = ""

    def ramp(self, n: int = RAMP_SEGMENTS) -> np.ndarray:
        """``(n, 4)`` RGBA (0-1) of the colormap at the centres of ``n`` equal segments."""
        positions, rgba = _stops(self.colormap)
        at = (np.arange(n) + 0.5) / n
        return np.column_stack([np.interp(at, positions, rgba[:, k]) for k in range(4)])


def _stops(colormap: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``[0, 1]`` and RGBA (0-1) of a :class:`Legend`'s colormap."""
    if len(colormap) and isinstance(colormap[0], tuple) and len(colormap[0]) == 2:
        positions = np.array([float(p) for p, _ in colormap])
        rgba = np.array([c for _, c in colormap], dtype=np.float64) / 255.0
    else:
        rgba = np.asarray(colormap, dtype=np.float64)
        if rgba.ndim != 2 or rgba.shape[1] not in (3, 4) or len(rgba) < 1:
            raise InputError(f"a legend's colormap must be (n, 4) RGBA stops, got shape {rgba.shape}")
        rgba = rgba / 255.0 if rgba.max() > 1.0 else rgba
        rgba = np.column_stack([rgba, np.ones(len(rgba))]) if rgba.shape[1] == 3 else rgba
        positions = np.linspace(0.0, 1.0, len(rgba)) if len(rgba) > 1 else np.zeros(1)
    return positions, np.clip(rgba, 0.0, 1.0)


def nice_length(target: float) -> float:
    """The round length (1, 2 or 5 x 10^k) nearest to ``target`` on a log scale."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"a scale bar's target length must be positive, got {target}")
    k = math.floor(math.log10(target))
    candidates = [m * 10.0 ** e for e in (k, k + 1) for m in (1, 2, 5)]
    return min(candidates, key=lambda c: abs(math.log(c / target)))


def length_label(um: float) -> str:
    """A length in words: ``"500 µm"``, ``"1 mm"``, ``"2.5 mm"``."""
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def figure_format(path: str | os.PathLike) -> str:
    """The format of a figure at ``path`` (``"png"``, ``"svg"``, ``"pdf"``), from its suffix.

    Raises
    ------
    InputError
        For any other suffix, naming the ones allowed.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_SUFFIXES:
        raise InputError(f"a figure is written as {', '.join(FIGURE_SUFFIXES)} (from the file's suffix); "
                         f"{suffix or 'no suffix'} is none of them", path)
    return suffix[1:]


def _image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"a figure's image must be (height, width, 3 or 4) RGB(A), got shape {arr.shape}")
    if arr.dtype != np.uint8:  # floats are 0-1 colours
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return arr


def trim_background(image: np.ndarray, colour: tuple[float, ...], *, tolerance: int = 2) -> np.ndarray:
    """``image`` without its border rows and columns of plain ``colour`` (0-255 RGB): a canvas's empty bars.

    A viewer shows the canvas background where the data do not reach (bars beside a slide
    whose shape differs from the window's); a figure is the data alone. The pixel size is
    unchanged. An image that is all background is returned as is.
    """
    arr = np.asarray(image)
    rgb = arr[..., :3].astype(np.int16)
    content = np.abs(rgb - np.asarray(colour[:3], dtype=np.int16)).max(axis=2) > tolerance
    if not content.any():
        return arr
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    return arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def compose_figure(image_rgba: np.ndarray, *, legend: Legend | None, um_per_image_px: float | None,
                   title: str | None = None) -> Figure:
    """The figure :func:`write_figure` writes (a matplotlib ``Figure``, not tied to any GUI backend)."""
    img = _image(image_rgba)
    h, w = img.shape[:2]
    if um_per_image_px is not None and not (math.isfinite(um_per_image_px) and um_per_image_px > 0):
        raise InputError(f"the pixel size must be a positive number of micrometres, got {um_per_image_px}")
    fig_w = max(w, MIN_WIDTH_PX)
    fs = float(np.clip(fig_w / 60.0, 11.0, 24.0))  # font height in pixels, grows with the figure
    m = 0.8 * fs  # margin
    title_h = 2.0 * fs if title else 0.0
    footer_h = 2 * m + 3.8 * fs
    fig_h = title_h + h + footer_h
    from matplotlib.figure import Figure  # here: `histosge figure` checks its options before matplotlib loads

    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(fig_h, 0)  # figure pixels, y down like the image
    ax.set_axis_off()
    x0 = (fig_w - w) / 2.0
    ax.imshow(img, extent=(x0, x0 + w, title_h + h, title_h), interpolation="nearest", aspect="auto")
    pt = 72.0 / DPI  # points per pixel
    text: dict[str, Any] = {"fontsize": fs * pt, "color": "#222222"}
    if title:
        ax.text(fig_w / 2.0, title_h / 2.0, title, ha="center", va="center", fontweight="bold", **text)
    top = title_h + h + m
    if legend is not None:
        _draw_legend(ax, legend, x=m, y=top, width=min(0.45 * fig_w, 28 * fs), fs=fs, text=text)
    if um_per_image_px is None:
        ax.text(fig_w - m, top + 1.9 * fs, "pixel size unknown: no scale bar", ha="right", va="center",
                **{**text, "fontsize": 0.8 * fs * pt, "color": "#777777"})
    else:
        _draw_scale_bar(ax, um_per_image_px, image_width=w, right=fig_w - m, y=top, fs=fs, text=text)
    return fig


def _draw_legend(ax, legend: Legend, *, x: float, y: float, width: float, fs: float, text: dict[str, Any]) -> None:
    """Title, ramp over the slide tone, and min / max below it, from the top-left corner ``(x, y)``."""
    from matplotlib.patches import Rectangle

    label = f"{legend.title}  ({legend.units})" if legend.units else legend.title
    ax.text(x, y, label, ha="left", va="top", **text)
    bar_y, bar_h = y + 1.5 * fs, 1.0 * fs
    ramp = legend.ramp()
    # Composited over the slide tone here: overlapping translucent segments would show seams.
    alpha = ramp[:, 3:]
    colours = ramp[:, :3] * alpha + np.array(SLIDE_TONE) / 255.0 * (1.0 - alpha)
    step = width / len(colours)
    for i, rgb in enumerate(colours):
        # A hair of overlap hides gaps between neighbours; no antialiasing for the same reason.
        ax.add_patch(Rectangle((x + i * step, bar_y), step * 1.05 if i < len(colours) - 1 else step, bar_h,
                               facecolor=tuple(rgb), linewidth=0, antialiased=False))
    ax.add_patch(Rectangle((x, bar_y), width, bar_h, fill=False, edgecolor="#444444", linewidth=0.8))
    ticks_y = bar_y + bar_h + 0.3 * fs
    ax.text(x, ticks_y, f"{legend.vmin:.3g}", ha="left", va="top", **text)
    ax.text(x + width, ticks_y, f"{legend.vmax:.3g}", ha="right", va="top", **text)


def _draw_scale_bar(ax, um_per_px: float, *, image_width: int, right: float, y: float, fs: float,
                    text: dict[str, Any]) -> None:
    """A black bar of a round length, right-aligned at ``right``, with its length above it."""
    from matplotlib.patches import Rectangle

    um, label = scale_bar_length(image_width, um_per_px)
    length_px = um / um_per_px  # figure pixels are image pixels
    bar_y = y + 1.5 * fs + 0.3 * fs
    ax.add_patch(Rectangle((right - length_px, bar_y), length_px, 0.4 * fs, facecolor="black", linewidth=0))
    ax.text(right - length_px / 2.0, y, label, ha="center", va="top", **text)


def scale_bar_length(image_width: int, um_per_px: float) -> tuple[float, str]:
    """The scale bar :func:`write_figure` draws for an image ``image_width`` px wide: ``(µm, label)``."""
    um = nice_length(SCALE_BAR_SHARE * image_width * um_per_px)
    return um, length_label(um)


def write_figure(path: str | os.PathLike, image_rgba: np.ndarray, *, legend: Legend | None,
                 um_per_image_px: float | None, title: str | None = None) -> Path:
    """Write ``image_rgba`` with its legend and a scale bar as a PNG, SVG or PDF figure.

    Parameters
    ----------
    path
        The figure file; its suffix chooses the format (:data:`FIGURE_SUFFIXES`).
    image_rgba
        ``(height, width, 3 or 4)`` image, uint8 or 0-1 floats; drawn pixel for pixel.
    legend
        The colour bar to draw under the image, or ``None`` for none.
    um_per_image_px
        Micrometres per image pixel for the scale bar; ``None`` writes "pixel size unknown" instead.
    title
        A line above the image, or none.

    Returns
    -------
    pathlib.Path
        ``path``, written atomically: a failed write leaves an earlier file there as it was.

    Raises
    ------
    InputError
        For a suffix other than those allowed, an image that is not RGB(A), a pixel size that
        is not positive, or a failed write.
    """
    import matplotlib

    fmt = figure_format(path)
    fig = compose_figure(image_rgba, legend=legend, um_per_image_px=um_per_image_px, title=title)
    # SVG text stays text (not glyph outlines); no date, so the same figure gives the same file.
    style: dict[Any, Any] = {"svg.fonttype": "none", "svg.hashsalt": "histosge", "pdf.fonttype": 42}
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None

    def save(tmp: Path) -> None:
        with matplotlib.rc_context(style):
            fig.savefig(tmp, format=fmt, dpi=DPI, facecolor="white", metadata=metadata)

    return write_with(path, save, what="figure")

