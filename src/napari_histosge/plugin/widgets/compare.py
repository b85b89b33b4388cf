"""Observed | predicted | difference panels for the gene viewer (pure layer data, no viewer).

Each panel has its own contrast range (the 1st-99th percentile of what it shows, so a
predicted map that varies less than the measurement is not flattened on the measurement's
scale); its title says which gene and which range. The difference uses a diverging
colormap with limits symmetric about 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .colours import DIFF_COLORMAP, HEATMAP_COLORMAP, colormap_for, robust_range, symmetric_range
from .layers import META_KEY, LayerDataTuple, Raster, gene_values, nn_spacing, rasterize, um_per_px, world_frame

ROLE_COMPARE = "compare"
#: The panels, left to right.
PANELS = ("observed", "predicted", "predicted - observed")
#: Role of the Points layer that carries the panels' titles.
ROLE_COMPARE_TITLES = "compare_titles"


def parent_values(pred, source, gene: str, *, log_source=None) -> np.ndarray:
    """Measured value (log scale) of each predicted position's parent spot."""
    observed = pd.Series(gene_values(source, gene, log_adata=log_source), index=np.asarray(source.obs_names))
    return observed.reindex(np.asarray(pred.obs["parent"], dtype=str)).to_numpy(dtype=np.float64)


def spot_averaged(pred, source, gene: str) -> np.ndarray:
    """Predictions of ``gene`` averaged over each measured spot's children (NaN if none)."""
    values = pd.Series(gene_values(pred, gene)).groupby(np.asarray(pred.obs["parent"], dtype=str)).mean()
    return values.reindex(np.asarray(source.obs_names, dtype=str)).to_numpy(dtype=np.float64)


def can_compare(pred) -> bool:
    """Whether predictions say which measured spot each position belongs to (``obs["parent"]``)."""
    return "parent" in pred.obs.columns


@dataclass(frozen=True)
class Panel:
    """One panel's picture for one gene: its image, contrast limits, colormap and title."""

    label: str
    image: np.ndarray
    limits: tuple[float, float]
    colormap: str
    title: str


@dataclass(frozen=True)
class Geometry:
    """Where the panels sit: the rasters of measured and predicted positions and the shift between panels."""

    coarse: Raster
    fine: Raster
    shift_px: float


def panel_geometry(pred, source, *, slide_width_px: float = 0.0) -> Geometry:
    """Rasters of both position sets and the x shift (full-res px) that keeps panels apart."""
    xy = np.asarray(pred.obsm["spatial"], dtype=np.float64)
    src_xy = np.asarray(source.obsm["spatial"], dtype=np.float64)
    width = max(float(np.ptp(np.r_[xy[:, 0], src_xy[:, 0]])), slide_width_px)
    mpp = um_per_px(source) or um_per_px(pred)
    zeros = np.zeros(len(xy))
    return Geometry(coarse=rasterize(src_xy, np.zeros(len(src_xy)), mpp=mpp), fine=rasterize(xy, zeros, mpp=mpp),
                    shift_px=1.05 * width + 4 * nn_spacing(xy))


def panels_for(pred, source, gene: str, geometry: Geometry, *, log_source=None) -> list[Panel]:
    """The three panels of ``gene`` on ``geometry``: observed, predicted and their difference.

    Observed and predicted each on their own 1st-99th percentile range (a prediction that
    varies less than the measurement is not flattened on the measurement's scale), the
    difference centred on 0; the Gene viewer shows a legend for each. Titles are short single
    lines (longer ones ran into the next panel and the panel below) naming what each panel
    shows, not the gene or its limits (the layer names and legends do): the same for every
    gene, so a gene switch never re-renders the canvas text.
    """
    observed = gene_values(source, gene, log_adata=log_source)
    predicted = gene_values(pred, gene)
    diff = predicted - parent_values(pred, source, gene, log_source=log_source)
    return [
        Panel("observed", geometry.coarse.with_values(observed), robust_range(observed), HEATMAP_COLORMAP,
              "observed"),
        Panel("predicted", geometry.fine.with_values(predicted), robust_range(predicted), HEATMAP_COLORMAP,
              "predicted"),
        Panel("predicted - observed", geometry.fine.with_values(diff), symmetric_range(diff), DIFF_COLORMAP,
              "predicted - observed"),
    ]


def _slide_width_px(slide: LayerDataTuple | None, mpp: float | None) -> float:
    if slide is None:
        return 0.0
    data, kw, _ = slide
    level0 = data[0] if isinstance(data, (list, tuple)) else data
    return float(level0.shape[1]) * float(kw.get("scale", (1.0, 1.0))[1]) / (mpp or 1.0)


def comparison_layers(pred, source, gene: str, *, log_source=None,
                      slide: LayerDataTuple | None = None) -> list[LayerDataTuple]:
    """Observed | predicted | difference panels side by side (shifted right along x), and their titles.

    The observed panel sits on the slide itself; the others are shifted by whole
    panel widths, each over its own copy of ``slide`` (the same lazy arrays) if given.
    The last layer is a Points layer holding one title per panel.
    """
    mpp = um_per_px(source) or um_per_px(pred)
    u = mpp or 1.0
    geometry = panel_geometry(pred, source, slide_width_px=_slide_width_px(slide, mpp))
    panels = panels_for(pred, source, gene, geometry, log_source=log_source)
    out: list[LayerDataTuple] = []
    for k, panel in enumerate(panels):
        dx = k * geometry.shift_px * u
        if slide is not None and k > 0:
            data, kw, kind = slide
            kw = {**kw, "name": f"{kw['name']} ({panel.label})",
                  "translate": (kw["translate"][0], kw["translate"][1] + dx),
                  "metadata": {META_KEY: {"role": ROLE_COMPARE, "panel": panel.label}}}
            out.append((data, kw, kind))
        raster = geometry.coarse if panel.label == "observed" else geometry.fine
        y0, x0 = raster.transform["translate"]
        out.append((panel.image, {
            "name": f"{gene} {panel.label}", "colormap": colormap_for(panel.colormap), "contrast_limits": panel.limits,
            "opacity": 0.85, "blending": "translucent", "interpolation2d": "nearest",
            "scale": raster.transform["scale"], "translate": (y0, x0 + dx), **world_frame(mpp),
            "metadata": {META_KEY: {"role": ROLE_COMPARE, "panel": panel.label, "gene": gene,
                                    "geometry": geometry, "units": "log1p(counts per 1e4)"}},
        }, "image"))
    out.append(title_layer(pred, source, [p.title for p in panels], geometry))
    return out


def title_layer(pred, source, titles: list[str], geometry: Geometry) -> LayerDataTuple:
    """A Points layer of invisible points at each panel's top-left corner, showing ``titles`` above it."""
    xy = np.r_[np.asarray(pred.obsm["spatial"], np.float64), np.asarray(source.obsm["spatial"], np.float64)]
    top = min(0.0, float(xy[:, 1].min()) - nn_spacing(xy)) - 0.04 * geometry.shift_px  # above the slide
    left = min(0.0, float(xy[:, 0].min()) - nn_spacing(xy))
    mpp = um_per_px(source) or um_per_px(pred)
    u = mpp or 1.0
    rc = np.array([[top, left + k * geometry.shift_px] for k in range(len(titles))])
    return (rc, {
        "name": "comparison titles", "size": 1, "face_color": "transparent", "border_width": 0,
        "features": pd.DataFrame({"title": titles}),
        "text": {"string": "{title}", "color": "white", "size": 10, "anchor": "upper_left"},
        "scale": (u, u), **world_frame(mpp),
        "metadata": {META_KEY: {"role": ROLE_COMPARE_TITLES}},
    }, "points")
