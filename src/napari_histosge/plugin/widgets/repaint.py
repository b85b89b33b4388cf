"""Repainting the plugin's layers with another gene, in place and cheaply (the Gene viewer's switch).

Every napari property set costs an event round (several ms), and replacing an Image layer's
data recomputes the viewer's dims, so a switch sets as few properties as it can: spot colours
are set directly (one update), the hover table is edited in place, image values are copied
into the layer's own array and the layer refreshed once, and contrast limits and names are
set only when they change.
"""

from __future__ import annotations

import numpy as np

from .colours import robust_range, value_range
from .layers import (
    META_KEY,
    ROLE_HEATMAP,
    ROLE_UNCERTAINTY,
    bin_values,
    is_prediction,
    layer_values,
    map_kind,
    spot_colours,
)

__all__ = ["heatmap_name", "recolor_spots", "rename_hidden", "set_image_values", "update_heatmap"]

HEATMAP_ROLES = (ROLE_HEATMAP, ROLE_UNCERTAINTY)


def set_image_values(layer, image: np.ndarray, limits: tuple[float, float] | None = None) -> None:
    """Show ``image`` on Image ``layer`` (and ``limits`` as its contrast), in place where the shape allows."""
    current = layer.data
    new_limits = limits is not None and tuple(layer.contrast_limits) != tuple(limits)
    if (isinstance(current, np.ndarray) and current.shape == image.shape and current.dtype == image.dtype
            and current.flags.writeable):
        np.copyto(current, image)
        # Same shape, so the extent stands (recomputing it re-emits the viewer's transforms); the
        # thumbnail is drawn once, by the contrast setter after the new slice when the limits change.
        layer.refresh(extent=False, highlight=False, thumbnail=not new_limits)
        if new_limits:
            layer.contrast_limits = limits
    else:
        if new_limits:
            layer.contrast_limits = limits
        layer.data = image


def _set_name(layer, name: str) -> None:
    if layer.name != name:
        layer.name = name


def recolor_spots(layer, gene: str) -> None:
    """Recolour a spots layer built by :func:`.layers.spots_layer` by ``gene``.

    The features table (what hovering shows: spot id and the gene's value) is edited in
    place, its value column renamed to the gene.
    """
    meta = layer.metadata[META_KEY]
    adata = meta["adata"]
    if meta.get("raster") is not None:  # bins drawn as a raster (bins_layer)
        values = bin_values(meta, gene)
        set_image_values(layer, meta["raster"].with_values(values), value_range(values))
        meta["gene"] = gene
        return
    if meta.get("log_adata") is None and not is_prediction(adata):
        from ...io.preprocess import normalize_log1p

        meta["log_adata"] = normalize_log1p(adata)
    values = layer_values(adata, gene, meta.get("values_layer"), log_adata=meta.get("log_adata"))
    table = layer.features
    old = meta.get("gene")
    if old is not None and old != gene and old in table.columns and gene not in table.columns:
        table.rename(columns={old: gene}, inplace=True)
    table[gene] = values
    limits = value_range(values)
    meta["gene"], meta["limits"] = gene, limits  # before the colour event: the legend reads them
    layer.face_color = spot_colours(values, limits)


def heatmap_name(layer, gene: str) -> str:
    """The name of heatmap ``layer`` showing ``gene``: gene, fold (or grid) and what it shows."""
    meta = layer.metadata[META_KEY]
    label = "heatmap" if meta.get("values_layer") is None else "uncertainty (std)"
    return f"{gene} {map_kind(meta['adata'])} {label}"


def rename_hidden(layer, gene: str) -> None:
    """Name a hidden heatmap after ``gene`` without repainting it (it is repainted when shown)."""
    if layer.metadata[META_KEY].get("role") in HEATMAP_ROLES:
        _set_name(layer, heatmap_name(layer, gene))


def update_heatmap(layer, gene: str) -> None:
    """Repaint a heatmap layer built by :func:`.layers.heatmap_layer` with ``gene``, in place.

    An uncertainty heatmap (metadata ``values_layer``) repaints from that AnnData layer;
    uncertainty shown as Points (fold-1 predictions: no raster) is recoloured instead.
    """
    meta = layer.metadata[META_KEY]
    if meta.get("raster") is None:
        recolor_spots(layer, gene)
    else:
        values = layer_values(meta["adata"], gene, meta.get("values_layer"))
        meta["gene"] = gene
        set_image_values(layer, meta["raster"].with_values(values), robust_range(values))
    _set_name(layer, heatmap_name(layer, gene))
