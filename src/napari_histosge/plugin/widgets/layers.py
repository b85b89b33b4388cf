"""Turn core results into napari layer data: the ONLY place that knows napari's frame.

The core speaks full-resolution image pixels as ``(x, y)`` (``adata.obsm["spatial"]``).
napari's world frame here is that full-resolution pixel grid as ``(row, col)`` = ``(y, x)``,
times ``u`` micrometres per pixel when the section records it (``uns["histosge"]["mpp"]``;
the layers then carry ``units=("um", "um")`` and napari's scale bar reads micrometres),
else ``u = 1`` in pixels. Every layer built below sits in that frame through
``scale``/``translate``:

* a slide image stored at ``scale`` image px per full-res px gets layer scale ``u/scale``
  and a half-pixel translate so that pixel centres line up;
* spots and predicted positions are Points at ``(y, x)`` with layer scale ``u``;
* a heatmap raster of cell size ``c`` centred first at ``(y0, x0)`` gets scale ``u c``
  and translate ``u (y0, x0)``.

These functions are pure (no viewer): they return napari ``LayerDataTuple``s
``(data, kwargs, layer_type)``, which readers return as is and widgets add with
``viewer._add_layer_from_data`` or ``viewer.add_<type>(data, **kwargs)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ...errors import InputError
from ...export.raster import (
    META_KEY,
    Raster,
    cells_raster,
    gene_values,
    grid_info,
    grid_raster,
    is_cells,
    is_prediction,
    lattice_raster,
    layer_values,
    nn_spacing,
    rasterize,  # noqa: F401  (re-exported: the layer tests and callers find the rasters here)
    um_per_px,
    world_frame,
)
from .colours import (
    DIFF_COLORMAP,
    HEATMAP_COLORMAP,
    SPOT_COLORMAP,
    colormap_for,
    robust_range,
    symmetric_range,
    value_range,
)
from .frame import (  # noqa: F401  (re-exported: the slide reader imports .frame alone, widgets use these)
    ROLE_HEATMAP,
    ROLE_PRED_SPOTS,
    ROLE_SLIDE,
    ROLE_SPOTS,
    ROLE_UNCERTAINTY,
    LayerDataTuple,
    image_transform,
    slide_layer,
)


# ----------------------------------------------------------------------------- frames
def spots_rc(adata) -> np.ndarray:
    """Spot centres as napari ``(row, col)`` = ``(y, x)`` full-resolution pixels."""
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    return xy[:, ::-1].copy()


# ----------------------------------------------------------------------------- values
def default_gene(adata) -> str | None:
    """The gene to show first: the one with the highest mean."""
    if adata.n_vars == 0:
        return None
    x = adata.X
    mean = np.asarray(x.mean(axis=0)).ravel()
    return str(adata.var_names[int(np.argmax(mean))])


def _gene_to_show(pred, gene: str | None) -> str:
    """``gene``, else :func:`default_gene`; predictions without genes have nothing to paint."""
    gene = gene if gene is not None else default_gene(pred)
    if gene is None:
        raise InputError("the predictions hold no genes", (pred.uns.get(META_KEY, {}) or {}).get("source"))
    return gene


# ----------------------------------------------------------------------------- spots
def spot_features(adata, gene: str | None, *, log_adata=None, values_layer: str | None = None) -> pd.DataFrame:
    """The ``features`` table of a spots layer: spot id and the gene's values."""
    table = pd.DataFrame({"spot": np.asarray(adata.obs_names, dtype=str)})
    if gene is not None:
        table[gene] = layer_values(adata, gene, values_layer, log_adata=log_adata)
    return table


def spots_layer(adata, gene: str | None = None, *, name: str | None = None,
                role: str | None = None, log_adata=None, values_layer: str | None = None) -> LayerDataTuple:
    """Points at the spot centres, sized to the real spot diameter, coloured by ``gene``.

    Parameters
    ----------
    adata
        Spot AnnData (raw counts) or predictions (``uns["histosge"]["fold"]`` set).
    gene
        Gene to colour by; the most expressed gene when ``None``.
    name
        Layer name; from ``library_id`` when ``None``.
    role
        ``"spots"`` or ``"predicted_spots"`` (default from :func:`is_prediction`).
    values_layer
        Colour by ``adata.layers[values_layer]`` (e.g. ``"std"``) instead of ``X``.
    """
    info = adata.uns.get(META_KEY, {})
    predicted = is_prediction(adata)
    role = role or (ROLE_PRED_SPOTS if predicted else ROLE_SPOTS)
    gene = gene if gene is not None else default_gene(adata)
    raster = bin_raster(adata)
    if raster is not None:  # square bins on a grid: one raster pixel each, fast for 100,000s of bins
        return bins_layer(adata, raster, gene, name=name, role=role, log_adata=log_adata, values_layer=values_layer)
    table = spot_features(adata, gene, log_adata=log_adata, values_layer=values_layer)
    diameter = float(info.get("spot_diameter_px") or nn_spacing(np.asarray(adata.obsm["spatial"])) / 2)
    library = info.get("library_id") or "spots"
    if name is None:
        name = f"{library} {'predicted ' + str(info.get('fold')) + 'x' if predicted else 'spots'}"
    kwargs: dict[str, Any] = {
        "name": name,
        "size": diameter,
        "features": table,
        "border_width": 0.05 if not predicted else 0.0,
        "border_width_is_relative": True,
        "border_color": "white",
        "opacity": 0.8,
        # Labels off, as drawn; "display text" then shows each spot's id rather than nothing.
        "text": {"string": "{spot}", "visible": False, "color": "white", "size": 8},
        "metadata": {META_KEY: {"role": role, "adata": adata, "gene": gene, "log_adata": log_adata}},
        **spots_frame(adata),
    }
    if values_layer is not None:  # the Gene viewer repaints from the same AnnData layer
        kwargs["metadata"][META_KEY]["values_layer"] = values_layer
    if gene is not None:
        values = table[gene].to_numpy()
        limits = value_range(values)
        kwargs["metadata"][META_KEY]["limits"] = limits
        kwargs.update(face_color=spot_colours(values, limits), face_colormap=SPOT_COLORMAP)
    return spots_rc(adata), kwargs, "points"


def spot_colours(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """RGBA per spot: ``values`` on :data:`SPOT_COLORMAP` between ``limits``; NaN transparent.

    Spots layers take these colours directly (not bound to a features column): one update
    per gene switch instead of napari's several colour-cycle steps.
    """
    from napari.utils.colormaps import ensure_colormap

    lo, hi = limits
    v = np.asarray(values, dtype=np.float64)
    scaled = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    rgba = np.asarray(ensure_colormap(SPOT_COLORMAP).map(np.nan_to_num(scaled)), dtype=np.float32)
    rgba[~np.isfinite(v)] = 0.0
    return rgba


def spots_frame(adata) -> dict[str, Any]:
    """``scale`` (and ``units``) of a Points layer of ``adata``'s positions in the world frame."""
    mpp = um_per_px(adata)
    u = mpp or 1.0
    return {"scale": (u, u), **world_frame(mpp)}


def bin_raster(adata) -> Raster | None:
    """The raster of square bins on a grid (Visium HD: ``uns["histosge"]["bins"]``), one pixel per bin, else ``None``.

    Raster pixel ``(i, j)`` is the bin at ``array_row = r0 + i``, ``array_col = c0 + j``; the
    bins' affine map (``affine_xy``) places it, rotation included. Bins the affine map misses
    by more than half a bin (an image registration far from affine) are drawn as Points instead.
    """
    info = adata.uns.get(META_KEY, {}) or {}
    bins = info.get("bins") if isinstance(info, dict) else None
    if not isinstance(bins, dict) or "affine_xy" not in bins or "array_row" not in adata.obs or adata.n_obs == 0:
        return None
    side = float(info.get("spot_diameter_px") or 0)
    if not float(bins.get("fit_miss_px", 0.0)) <= 0.5 * side:
        return None
    a = np.asarray(bins["affine_xy"], dtype=np.float64)  # (x, y) = a @ (col, row, 1)
    rows = adata.obs["array_row"].to_numpy(np.int64)
    cols = adata.obs["array_col"].to_numpy(np.int64)
    r0, c0 = int(rows.min()), int(cols.min())
    index = np.full((int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1), -1, dtype=np.int64)
    index[rows - r0, cols - c0] = np.arange(len(rows))
    # napari's (row, col) = (y, x) of raster (i, j) = (row - r0, col - c0)
    shift = a[:, 2] + a[:, 0] * c0 + a[:, 1] * r0
    affine = np.array([[a[1, 1], a[1, 0], shift[1]], [a[0, 1], a[0, 0], shift[0]], [0.0, 0.0, 1.0]])
    return Raster(image=np.empty(0), cell=side, origin_rc=(float(shift[1]), float(shift[0])), index=index,
                  mpp=um_per_px(adata), affine=affine)


def bins_layer(adata, raster: Raster, gene: str | None, *, name: str | None = None, role: str = ROLE_SPOTS,
               log_adata=None, values_layer: str | None = None) -> LayerDataTuple:
    """An Image layer of square bins coloured by ``gene``, one raster pixel per bin (see :func:`bin_raster`).

    It stands in for :func:`spots_layer`'s Points (same role and metadata, plus the raster), so
    :func:`recolor_spots` and the Gene viewer repaint it in place.
    """
    info = adata.uns.get(META_KEY, {})
    meta = {"role": role, "adata": adata, "gene": gene, "log_adata": log_adata, "raster": raster,
            "values_layer": values_layer}
    if log_adata is None and values_layer is None and not is_prediction(adata):
        from ...io.preprocess import total_counts

        meta["totals"] = total_counts(adata)  # once: each gene is then normalised alone
    values = bin_values(meta, gene) if gene is not None else np.zeros(adata.n_obs)
    kwargs: dict[str, Any] = {
        "name": name or f"{info.get('library_id') or 'bins'} bins",
        "colormap": SPOT_COLORMAP,
        "contrast_limits": value_range(values),
        "opacity": 0.8,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {META_KEY: meta},
        **raster.transform,
    }
    return raster.with_values(values), kwargs, "image"


def bin_values(meta: dict[str, Any], gene: str) -> np.ndarray:
    """Values of ``gene`` for a :func:`bins_layer`'s metadata: one normalised column when raw counts."""
    if meta.get("totals") is not None:
        from ...io.preprocess import log1p_column

        return log1p_column(meta["adata"], gene, totals=meta["totals"])
    return layer_values(meta["adata"], gene, meta.get("values_layer"), log_adata=meta.get("log_adata"))


# ----------------------------------------------------------------------------- heatmap
def heatmap_layer(pred, gene: str | None = None, *, name: str | None = None,
                  values: np.ndarray | None = None, colormap: str = HEATMAP_COLORMAP,
                  raster: Raster | None = None, role: str = ROLE_HEATMAP) -> LayerDataTuple:
    """An Image layer of predicted expression on the slide's pixel grid.

    Parameters
    ----------
    pred
        Predictions from :func:`napari_histosge.pipeline.steps.superresolve`, or grid cells
        (``uns["histosge"]["grid"]``: painted cell by cell on the grid's own raster).
    gene
        Gene to show (default: highest mean).
    values
        Per-position values to paint instead of ``gene``'s predictions (e.g. a difference).
    colormap
        :data:`HEATMAP_COLORMAP` (transparent low end) or any napari colormap name;
        :data:`DIFF_COLORMAP` gets limits symmetric about 0.
    raster
        Reuse this raster geometry (saves the nearest-neighbour search).

    Notes
    -----
    Contrast limits are :func:`robust_range` (1st-99th percentile), so one outlier does not
    set the range; blending is translucent over the H&E.
    """
    gene = _gene_to_show(pred, gene)
    vals = gene_values(pred, gene) if values is None else np.asarray(values, np.float64)
    if raster is None:
        # a lattice map is drawn smooth, inside the tissue it records (never on glass)
        raster = grid_raster(pred) if grid_info(pred) is not None else lattice_raster(pred)
    image = raster.with_values(vals)
    info = pred.uns.get(META_KEY, {})
    limits = symmetric_range(vals) if colormap == DIFF_COLORMAP else robust_range(vals)
    kwargs: dict[str, Any] = {
        "name": name or f"{gene} {map_kind(pred)} heatmap",
        "colormap": colormap_for(colormap),
        "contrast_limits": limits,
        "opacity": 0.85,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {META_KEY: {"role": role, "adata": pred, "gene": gene, "raster": raster,
                                "units": info.get("units", "log1p(counts per 1e4)")}},
        **raster.transform,
    }
    return image, kwargs, "image"


def map_kind(pred) -> str:
    """What a prediction's map is of, for layer names: ``"grid"``, ``"cells"`` or its fold (``"4x"``)."""
    if grid_info(pred) is not None:
        return "grid"
    return "cells" if is_cells(pred) else f"{pred.uns.get(META_KEY, {}).get('fold', '')}x"


def prediction_layers(pred, gene: str | None = None, *, source_adata=None,
                      segmentation=None) -> list[LayerDataTuple]:
    """The layers that show a prediction AnnData, as the Super-resolve widget shows them.

    Parameters
    ----------
    pred
        Predictions from :mod:`napari_histosge.pipeline.steps` (``uns["histosge"]["fold"]`` set),
        computed in this session or read back from an ``.h5ad``.
    gene
        Gene to show first (default: highest mean).
    source_adata
        The measured spots the predictions came from, if known (kept in the metadata
        for the Gene viewer's PCC and comparison panels).
    segmentation
        The :class:`~napari_histosge.cells.Segmentation` of segmented-cell predictions: each
        cell is then painted over its own pixels (:func:`cell_layers`).

    Returns
    -------
    list of LayerDataTuple
        fold > 1: the expression heatmap, the uncertainty heatmap (hidden; only where
        ``pred.layers["std"]`` exists) and the predicted spots (hidden). fold 1 (values at
        measured spots, e.g. ``histosge recover``): the predicted spots (visible) and their
        uncertainty as spots (hidden; where ``"std"`` exists). No heatmap at fold 1: such a
        file often holds a scattered subset of spots (the hidden half), which a
        nearest-position raster would smear over the gaps.
    """
    info = pred.uns.get(META_KEY, {})
    gene = _gene_to_show(pred, gene)
    has_std = "std" in pred.layers
    if grid_info(pred) is not None:
        return grid_layers(pred, gene, source_adata=source_adata)
    if is_cells(pred):
        return cell_layers(pred, gene, segmentation=segmentation, source_adata=source_adata)
    fold = int(info.get("fold", 1))
    out: list[LayerDataTuple] = []
    if fold > 1:
        heat = heatmap_layer(pred, gene)
        heat[1]["metadata"][META_KEY]["source_adata"] = source_adata
        out.append(heat)
        if has_std:  # models that sample (conditioned + diffusion) give a spread
            out.append(uncertainty_layer(pred, gene, heat[1]["metadata"][META_KEY]["raster"], f"{fold}x"))
    elif has_std:
        spread = spots_layer(pred, gene, name=f"{gene} 1x uncertainty (std)", role=ROLE_UNCERTAINTY,
                             values_layer="std")
        spread[1]["visible"] = False
        out.append(spread)
    points = spots_layer(pred, gene)
    points[1]["metadata"][META_KEY]["source_adata"] = source_adata
    # with a heatmap the points are exact values on demand; alone they are the view
    points[1]["visible"] = fold <= 1
    out.append(points)
    return out


def uncertainty_layer(pred, gene: str, raster: Raster, label: str) -> LayerDataTuple:
    """The hidden heatmap of a prediction's spread (``layers["std"]``) on the expression's raster."""
    spread = heatmap_layer(pred, gene, values=layer_values(pred, gene, "std"), colormap="gray",
                           name=f"{gene} {label} uncertainty (std)", role=ROLE_UNCERTAINTY, raster=raster)
    spread[1]["visible"] = False  # on demand: it would hide the expression heatmap
    spread[1]["metadata"][META_KEY]["values_layer"] = "std"
    return spread


def grid_layers(pred, gene: str | None = None, *, source_adata=None) -> list[LayerDataTuple]:
    """The layers of a grid-cell AnnData: its raster heatmap, and its spread's when it has one.

    The raster has one pixel per grid cell (``uns["histosge"]["grid"]``), NaN (transparent)
    where no cell is (outside tissue); the Gene viewer repaints it in place.
    """
    gene = _gene_to_show(pred, gene)
    heat = heatmap_layer(pred, gene)
    heat[1]["metadata"][META_KEY]["source_adata"] = source_adata
    out = [heat]
    if "std" in pred.layers:
        out.append(uncertainty_layer(pred, gene, heat[1]["metadata"][META_KEY]["raster"], "grid"))
    return out


def cell_layers(pred, gene: str | None = None, *, segmentation=None, source_adata=None) -> list[LayerDataTuple]:
    """The layers of a segmented-cell AnnData: each cell painted with its value over its label pixels.

    An Image layer of the gene's values through the segmentation's label raster
    (:func:`~napari_histosge.export.raster.cells_raster`), repainted in place by the Gene viewer
    as a grid map is. Without the segmentation (a cell table read from a file) the cells are
    Points at their centroids, each as wide as a disc of its area.
    """
    gene = _gene_to_show(pred, gene)
    if segmentation is None:
        points = spots_layer(pred, gene, name=f"{gene} cells")
        points[1]["size"] = 2 * np.sqrt(pred.obs["area_px"].to_numpy(np.float64) / np.pi)
        points[1]["border_width"] = 0.0
        points[1]["metadata"][META_KEY]["source_adata"] = source_adata
        return [points]
    raster = cells_raster(pred, segmentation.labels, segmentation.px_per_label_px)
    heat = heatmap_layer(pred, gene, raster=raster)
    heat[1]["metadata"][META_KEY]["source_adata"] = source_adata
    return [heat]


# ----------------------------------------------------------------------------- finding layers
def histosge_meta(layer) -> dict[str, Any]:
    """The plugin's metadata of ``layer``; empty for layers the plugin did not make."""
    meta = getattr(layer, "metadata", {}).get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def layers_with_role(layers, *roles: str) -> list:
    """Layers of the viewer the plugin made with one of ``roles``."""
    return [lyr for lyr in layers if histosge_meta(lyr).get("role") in roles]


def measured_source(layer, layers):
    """The measured spots behind a prediction layer, or ``None``.

    That is its ``source_adata`` (a result of this session), else the AnnData of an open
    spots layer read from the path the predictions record (``uns["histosge"]["source"]``:
    a predictions file opened beside its data).
    """
    from pathlib import Path

    def recorded_source(adata) -> Path | None:
        source = (adata.uns.get(META_KEY, {}) or {}).get("source") if adata is not None else None
        return Path(str(source)).resolve() if source else None

    meta = histosge_meta(layer)
    if meta.get("source_adata") is not None:
        return meta["source_adata"]
    wanted = recorded_source(meta.get("adata"))
    if wanted is None:
        return None
    for spots in layers_with_role(layers, ROLE_SPOTS):
        if recorded_source(adata := histosge_meta(spots)["adata"]) == wanted:
            return adata
    return None
