"""Observed | predicted | difference panels for the gene viewer (pure layer data, no viewer)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .layers import (
    DIFF_COLORMAP,
    HEATMAP_COLORMAP,
    META_KEY,
    LayerDataTuple,
    gene_values,
    nn_spacing,
    rasterize,
    value_range,
)

ROLE_COMPARE = "compare"


def parent_values(pred, source, gene: str, *, log_source=None) -> np.ndarray:
    """Measured value (log scale) of each predicted position's parent spot."""
    observed = pd.Series(gene_values(source, gene, log_adata=log_source), index=np.asarray(source.obs_names))
    return observed.reindex(np.asarray(pred.obs["parent"], dtype=str)).to_numpy(dtype=np.float64)


def spot_averaged(pred, source, gene: str) -> np.ndarray:
    """Predictions of ``gene`` averaged over each measured spot's children (NaN if none)."""
    values = pd.Series(gene_values(pred, gene)).groupby(np.asarray(pred.obs["parent"], dtype=str)).mean()
    return values.reindex(np.asarray(source.obs_names, dtype=str)).to_numpy(dtype=np.float64)


def comparison_layers(pred, source, gene: str, *, log_source=None,
                      slide: LayerDataTuple | None = None) -> list[LayerDataTuple]:
    """Observed | predicted | difference panels side by side (shifted right along x).

    The observed panel sits on the slide itself; the others are shifted by whole
    panel widths, each over its own copy of ``slide`` (the same lazy arrays) if given.
    """
    xy = np.asarray(pred.obsm["spatial"], dtype=np.float64)
    width = float(np.ptp(np.r_[xy[:, 0], np.asarray(source.obsm["spatial"])[:, 0]]))
    if slide is not None:  # panels must not overlap the slide copies under them
        data, kw, _ = slide
        level0 = data[0] if isinstance(data, (list, tuple)) else data
        width = max(width, float(level0.shape[1]) * float(kw.get("scale", (1.0, 1.0))[1]))
    shift = 1.05 * width + 4 * nn_spacing(xy)
    observed = gene_values(source, gene, log_adata=log_source)
    predicted = gene_values(pred, gene)
    diff = predicted - parent_values(pred, source, gene, log_source=log_source)
    fine = rasterize(xy, predicted)
    coarse = rasterize(np.asarray(source.obsm["spatial"]), observed)
    lo, hi = value_range(np.r_[observed, predicted])
    panels = [
        ("observed", coarse.image, coarse, HEATMAP_COLORMAP, (lo, hi)),
        ("predicted", fine.image, fine, HEATMAP_COLORMAP, (lo, hi)),
        ("predicted - observed", fine.with_values(diff), fine, DIFF_COLORMAP,
         (-(m := max(value_range(np.abs(diff))[1], 1e-6)), m)),
    ]
    out: list[LayerDataTuple] = []
    for k, (label, image, raster, cmap, limits) in enumerate(panels):
        dx = k * shift
        if slide is not None and k > 0:
            data, kw, kind = slide
            kw = {**kw, "name": f"{kw['name']} ({label})", "translate": (kw["translate"][0], kw["translate"][1] + dx),
                  "metadata": {META_KEY: {"role": ROLE_COMPARE, "panel": label}}}
            out.append((data, kw, kind))
        y0, x0 = raster.origin_rc
        out.append((image, {
            "name": f"{gene} {label}", "colormap": cmap, "contrast_limits": limits, "opacity": 0.75,
            "interpolation2d": "nearest", "scale": (raster.cell, raster.cell), "translate": (y0, x0 + dx),
            "metadata": {META_KEY: {"role": ROLE_COMPARE, "panel": label, "gene": gene}},
        }, "image"))
    return out
