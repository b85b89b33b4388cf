"""Render a gene's expression map over its H&E as an image, as the plugin's heatmap shows it.

:func:`render_map` paints one gene of a prediction (or spot) AnnData on the slide's
full-resolution pixel frame: grid cells as their own raster, positions as the nearest-position
raster of :func:`~.raster.rasterize`, in inferno fading to transparent over the lowest
:data:`~.colours.FADE_FRACTION` of the range, over the H&E read from a coarse pyramid level
(white when no slide image is found). :func:`~.figure.write_figure` then adds the legend and
the scale bar.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import spot_image
from ..io.gene_names import gene_label
from ..io.preprocess import resolve_gene
from ..slide.open import is_ome_zarr_image, open_slide
from .colours import FADE_FRACTION, robust_range
from .figure import Legend
from .raster import META_KEY, Raster, gene_values, map_raster, um_per_px

#: The colormap under the heatmap's fade.
HEATMAP_BASE = "inferno"
#: Opacity of the heatmap over the slide, as the plugin's heatmap layers draw it.
HEATMAP_OPACITY = 0.85
#: Longest side of a rendered map in pixels (the H&E is read at the pyramid level nearest it).
MAX_SIZE_PX = 1600
#: Margin around the map's positions, as a share of their extent.
MARGIN_SHARE = 0.03
#: Units of predicted values when the AnnData records none.
DEFAULT_UNITS = "log1p(counts per 1e4)"


def heatmap_rgba(positions: np.ndarray) -> np.ndarray:
    """RGBA (0-1) of the heatmap colormap at ``positions`` in ``[0, 1]``: inferno, transparent at its low end."""
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, 1.0)
    rgba = np.asarray(matplotlib.colormaps[HEATMAP_BASE](pos), dtype=np.float64)
    rgba[..., 3] = np.clip(pos / FADE_FRACTION, 0.0, 1.0)
    return rgba


def pick_gene(adata, name: str, *, source: str | os.PathLike | None = None) -> str:
    """The gene of ``adata`` that ``name`` stands for (a name, a gene id, or a name in another case).

    Raises
    ------
    InputError
        When no gene matches, naming close matches (and ``source``, else the data ``adata`` records).
    """
    found = resolve_gene(adata, name)
    if found is not None:
        return found
    names = [str(g) for g in adata.var_names]
    lower = {g.lower(): g for g in names}
    if name.strip().lower() in lower:
        return lower[name.strip().lower()]
    close = [lower[c] for c in difflib.get_close_matches(name.strip().lower(), list(lower), n=3, cutoff=0.6)]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    info = adata.uns.get(META_KEY, {}) or {}
    if "fold" in info or "grid" in info:  # predictions: a model predicts the genes it was trained on
        hint += (f"; the model predicts only the genes it was trained on: train again with --include-genes "
                 f"{name.strip()} (the Train widget's \"always include\") to predict it")
    source = source if source is not None else info.get("source")
    raise InputError(f"gene {name!r} is not among the {len(names)} genes of the data{hint}", source)


def find_slide(adata, near: str | os.PathLike | None = None) -> tuple[Path, float] | None:
    """The slide image ``adata`` records, with its scale (image px per full-res px), if it is on disk.

    The recorded path first, then the same relative path or name beside ``near`` (the
    predictions file: data moved together to another folder or machine); ``None`` if none exists.
    """
    recorded = spot_image(adata)
    if recorded is None or not recorded[0]:
        return None
    path, scale = Path(recorded[0]), recorded[1]
    candidates = [path]
    if near is not None:
        where = Path(near).parent
        candidates += ([where / path] if not path.is_absolute() else []) + [where / path.name]
    found = next((c for c in candidates if c.is_file() or is_ome_zarr_image(c)), None)
    return (found, scale) if found is not None else None


def _extent(raster: Raster) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` full-res bounds of the raster's filled cells."""
    rows, cols = np.nonzero(raster.index >= 0)
    if rows.size == 0:
        rows, cols = np.array([0, raster.index.shape[0] - 1]), np.array([0, raster.index.shape[1] - 1])
    half = 0.5
    corners = np.array([[r, c, 1.0] for r in (rows.min() - half, rows.max() + half)
                        for c in (cols.min() - half, cols.max() + half)])
    yx = corners @ raster.to_full_res().T
    return float(yx[:, 1].min()), float(yx[:, 0].min()), float(yx[:, 1].max()), float(yx[:, 0].max())


def _sample(raster: Raster, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Raster values at full-res centres ``(ys[:, None], xs[None, :])``, nearest cell; NaN outside."""
    inverse = np.linalg.inv(raster.to_full_res())
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    r = np.rint(inverse[0, 0] * yy + inverse[0, 1] * xx + inverse[0, 2]).astype(np.int64)
    c = np.rint(inverse[1, 0] * yy + inverse[1, 1] * xx + inverse[1, 2]).astype(np.int64)
    n_rows, n_cols = raster.image.shape
    inside = (r >= 0) & (r < n_rows) & (c >= 0) & (c < n_cols)
    out = np.full(yy.shape, np.nan, dtype=np.float64)
    out[inside] = raster.image[r[inside], c[inside]]
    return out


def _read_background(path: Path, scale: float, bounds: tuple[float, float, float, float],
                     size: tuple[int, int]) -> np.ndarray:
    """The H&E in full-res pixel-edge ``bounds``, resampled to ``size`` = ``(rows, cols)`` from a coarse level."""
    x0, y0, x1, y1 = bounds
    n_rows, n_cols = size
    with open_slide(path) as slide:
        level = slide.best_level((x1 - x0) * scale, n_cols)
        f = scale / slide.downsamples[level]  # level px per full-res px
        ex0, ey0, ex1, ey1 = x0 * f, y0 * f, x1 * f, y1 * f  # edges in level pixels
        rx, ry = math.floor(ex0) - 1, math.floor(ey0) - 1
        region = slide.read_region(rx, ry, math.ceil(ex1) + 1 - rx, math.ceil(ey1) + 1 - ry, level=level)
    image = Image.fromarray(region).resize((n_cols, n_rows), Image.Resampling.LANCZOS,
                                           box=(ex0 - rx, ey0 - ry, ex1 - rx, ey1 - ry))
    return np.asarray(image, dtype=np.float64)[..., :3] / 255.0


def render_map(adata, gene: str, *, background: str | os.PathLike | None = None,
               limits: tuple[float, float] | None = None, near: str | os.PathLike | None = None,
               max_size: int = MAX_SIZE_PX) -> tuple[np.ndarray, float | None, Legend]:
    """Paint ``gene`` of ``adata`` over its slide as the plugin shows it: a map, or discs at spots.

    Parameters
    ----------
    adata
        Predictions (positions, or grid cells with ``uns["histosge"]["grid"]``), or measured spots.
    gene
        The gene to paint (a name, a gene id, or a name in another case).
    background
        The slide image to paint over, in full-resolution pixels (or the recorded image, moved);
        ``None``: the image ``adata`` records (see :func:`find_slide`), else white.
    limits
        ``(low, high)`` of the colour scale; default the 1st-99th percentile of the values.
    near
        The file ``adata`` was read from, where a moved slide image is looked for.
    max_size
        Longest side of the image in pixels.

    Returns
    -------
    image : numpy.ndarray
        ``(rows, cols, 4)`` uint8 RGBA, opaque.
    um_per_px : float or None
        Micrometres per image pixel, ``None`` when ``adata`` records no pixel size.
    legend : Legend
        The gene, its units, the limits and the colormap's stops.

    Raises
    ------
    InputError
        For an unknown gene, limits with ``high <= low``, or an unreadable slide image.
    """
    gene = pick_gene(adata, gene)
    values = gene_values(adata, gene)
    lo, hi = robust_range(values) if limits is None else (float(limits[0]), float(limits[1]))
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"the colour limits must be two numbers, low below high; got {lo:g} {hi:g}")
    raster = map_raster(adata, values)
    x0, y0, x1, y1 = _extent(raster)
    pad = MARGIN_SHARE * max(x1 - x0, y1 - y0)
    # From here on pixel edges: full-res pixel k spans [k, k + 1), its centre (napari's and the raster's k) at k + 0.5.
    x0, y0, x1, y1 = x0 - pad + 0.5, y0 - pad + 0.5, x1 + pad + 0.5, y1 + pad + 0.5
    step = max(x1 - x0, y1 - y0) / max(int(max_size), 1)  # full-res px per image px
    n_cols, n_rows = max(1, round((x1 - x0) / step)), max(1, round((y1 - y0) / step))
    x1, y1 = x0 + n_cols * step, y0 + n_rows * step
    centres = (np.arange(n_rows) + 0.5) * step - 0.5, (np.arange(n_cols) + 0.5) * step - 0.5
    shown = _sample(raster, y0 + centres[0], x0 + centres[1])
    rgba = heatmap_rgba((shown - lo) / (hi - lo))
    alpha = np.where(np.isfinite(shown), rgba[..., 3] * HEATMAP_OPACITY, 0.0)[..., None]
    slide = (Path(background), _scale_of(adata, Path(background))) if background is not None else find_slide(
        adata, near)
    under = np.ones((n_rows, n_cols, 3)) if slide is None else _read_background(
        slide[0], slide[1], (x0, y0, x1, y1), (n_rows, n_cols))
    rgb = rgba[..., :3] * alpha + under * (1.0 - alpha)
    image = np.concatenate([np.clip(rgb * 255.0 + 0.5, 0, 255), np.full((n_rows, n_cols, 1), 255.0)], axis=2)
    mpp = um_per_px(adata)
    units = str((adata.uns.get(META_KEY, {}) or {}).get("units") or DEFAULT_UNITS)
    legend = Legend(title=gene_label(adata, gene), vmin=lo, vmax=hi,  # the symbol of data named by id
                    colormap=heatmap_rgba(np.linspace(0.0, 1.0, 33)), units=units)
    return image.astype(np.uint8), (mpp * step if mpp else None), legend


def _scale_of(adata, path: Path) -> float:
    """Image px per full-res px of a slide given by hand: the recorded image's scale if it is that file, else 1."""
    recorded = spot_image(adata)
    return recorded[1] if recorded is not None and Path(recorded[0]).name == path.name else 1.0
