"""A segmentation of a slide into cells: a label raster at a known scale, and its cell table.

A label raster holds one integer per cell (0 = background). Label pixel ``(row, col)``
covers full-resolution pixels ``[col * f, (col + 1) * f) x [row * f, (row + 1) * f)`` with
``f = px_per_label_px``, as a tissue mask does (:mod:`napari_histosge.slide.mask`), so its
centre lies at full-resolution ``(col + 0.5) f - 0.5``. The raster may be a numpy array or an
on-disk zarr array: the table is computed block by block, never from the whole raster at once.

The cell table is an AnnData with no genes, one row per cell: ``obsm["spatial"]`` the
centroid ``(x, y)`` in full-resolution pixels, ``obs["label"]`` the label id,
``obs["area_px"]`` the area in full-resolution pixels and ``obs["area_um2"]`` in µm² (NaN
without a pixel size), and ``uns["histosge"]["cells"]`` the segmentation's ``source``,
``px_per_label_px`` and ``mpp``. :meth:`Segmentation.units` hands a model what it needs to
use cells as units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: Suffixes of GeoJSON files of cell polygons (read by :mod:`.read`; here so that light modules can name them).
GEOJSON_SUFFIXES = (".geojson", ".json")

__all__ = ["BLOCK", "CellUnits", "Segmentation", "cell_table", "label_stats", "segmentation_from_labels"]

#: Side of the blocks a label raster is read in (label pixels).
BLOCK = 2048


@dataclass(frozen=True)
class CellUnits:
    """Cells as units of a model: where they are, how large, and their pixels.

    Attributes
    ----------
    centroids_xy
        ``(n, 2)`` float64 centroids in full-resolution ``(x, y)`` pixels.
    area_px
        ``(n,)`` areas in full-resolution pixels.
    label_ids
        ``(n,)`` int64 label ids, in the order of the rows above.
    labels
        The label raster (numpy or zarr array; 0 = background).
    px_per_label_px
        Full-resolution pixels per label pixel.
    """

    centroids_xy: np.ndarray
    area_px: np.ndarray
    label_ids: np.ndarray
    labels: Any
    px_per_label_px: float


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A label raster, its scale on the slide, and its cell table.

    Attributes
    ----------
    labels
        ``(h, w)`` integer numpy or zarr array, 0 = background.
    px_per_label_px
        Full-resolution pixels per label pixel.
    table
        The cell table (see the module docstring).
    source
        Where the cells came from: the file read, or ``"histosge nuclei"`` with the slide.
    """

    labels: Any
    px_per_label_px: float
    table: Any
    source: str

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.table.n_obs)

    def units(self) -> CellUnits:
        """The cells as a model's units (centroids, areas, ids and the raster)."""
        return CellUnits(np.asarray(self.table.obsm["spatial"], np.float64),
                         self.table.obs["area_px"].to_numpy(np.float64),
                         self.table.obs["label"].to_numpy(np.int64), self.labels, float(self.px_per_label_px))

    def label_at(self, xy: np.ndarray) -> np.ndarray:
        """``(n,)`` int64: the label id under full-resolution ``(x, y)`` positions (0 off every cell)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        f = float(self.px_per_label_px)
        h, w = self.labels.shape
        col, row = np.floor((xy[:, 0] + 0.5) / f), np.floor((xy[:, 1] + 0.5) / f)
        on = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        out = np.zeros(len(xy), np.int64)
        if on.any():
            rows, cols = row[on].astype(np.intp), col[on].astype(np.intp)
            if isinstance(self.labels, np.ndarray):
                out[on] = self.labels[rows, cols]
            elif hasattr(self.labels, "vindex"):  # zarr, dask: only the chunks under the points are read
                out[on] = np.asarray(self.labels.vindex[rows, cols])
            else:  # another array type: one read of the points' bounding box
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                out[on] = np.asarray(self.labels[r0:r1, c0:c1])[rows - r0, cols - c0]
        return out


def label_stats(labels: Any, *, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label id: pixel count and the mean label-pixel ``(col, row)``, read block by block.

    Returns
    -------
    tuple
        ``ids`` (int64, sorted, no 0), ``counts`` (label pixels), ``mean_col``, ``mean_row``.
    """
    h, w = labels.shape
    parts: list[tuple[np.ndarray, ...]] = []
    for r0 in range(0, h, block):
        for c0 in range(0, w, block):
            chunk = np.asarray(labels[r0:r0 + block, c0:c0 + block])
            rows, cols = np.nonzero(chunk)
            if rows.size == 0:
                continue
            ids, inverse = np.unique(chunk[rows, cols], return_inverse=True)
            if ids[-1] > np.iinfo(np.int64).max:  # the cell table's ids are int64
                raise InputError(f"a label id ({ids[-1]}) is past the largest the cell table holds (2^63 - 1)")
            parts.append((ids.astype(np.int64), np.bincount(inverse).astype(np.float64),
                          np.bincount(inverse, weights=cols + c0), np.bincount(inverse, weights=rows + r0)))
    if not parts:
        empty = np.zeros(0)
        return np.zeros(0, np.int64), empty, empty, empty
    ids, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([p[1] for p in parts]))
    sum_col = np.bincount(inverse, weights=np.concatenate([p[2] for p in parts]))
    sum_row = np.bincount(inverse, weights=np.concatenate([p[3] for p in parts]))
    return ids, counts, sum_col / counts, sum_row / counts


def cell_table(ids: np.ndarray, centroids_xy: np.ndarray, area_px: np.ndarray, *, mpp: float | None,
               px_per_label_px: float, source: str, extra: dict[str, Any] | None = None):
    """The cell AnnData (no genes) of cells given by id, centroid and area.

    Parameters
    ----------
    ids
        ``(n,)`` label ids (nonzero).
    centroids_xy
        ``(n, 2)`` centroids in full-resolution ``(x, y)`` pixels.
    area_px
        ``(n,)`` areas in full-resolution pixels.
    mpp
        Micrometres per full-resolution pixel, or ``None`` (then ``area_um2`` is NaN).
    px_per_label_px
        Full-resolution pixels per pixel of the label raster the cells belong to.
    source
        The segmentation's source, kept in ``uns["histosge"]["cells"]["source"]``.
    extra
        More keys for ``uns["histosge"]["cells"]`` (e.g. the detector's settings).
    """
    import anndata as ad
    import pandas as pd

    ids = np.asarray(ids, np.int64)
    area = np.asarray(area_px, np.float64)
    um2 = area * mpp**2 if mpp else np.full(len(ids), np.nan)
    obs = pd.DataFrame({"label": ids, "area_px": area, "area_um2": um2}, index=[str(i) for i in ids])
    table = ad.AnnData(obs=obs)
    table.obsm["spatial"] = np.asarray(centroids_xy, np.float64).reshape(-1, 2)
    info = {"source": str(source), "px_per_label_px": float(px_per_label_px),
            "mpp": float(mpp) if mpp else None, **(extra or {})}
    table.uns["histosge"] = {"units": "cells", "mpp": info["mpp"], "cells": info}
    return table


def segmentation_from_labels(labels: Any, px_per_label_px: float, *, mpp: float | None, source: str,
                             extra: dict[str, Any] | None = None) -> Segmentation:
    """A :class:`Segmentation` of a label raster: its cell table computed block by block.

    Raises
    ------
    InputError
        If the raster holds no cell (every pixel 0) or its scale is not positive.
    """
    f = float(px_per_label_px)
    if not (math.isfinite(f) and f > 0):
        raise InputError(f"the label image's scale must be positive, got {px_per_label_px}", source)
    ids, counts, mean_col, mean_row = label_stats(labels)
    if ids.size == 0:
        raise InputError("the segmentation is empty: every pixel of the label image is 0 (background)", source)
    if ids.min() < 0:
        raise InputError("a label image holds negative labels; cells are positive integers, 0 background", source)
    centroids = np.column_stack([(mean_col + 0.5) * f - 0.5, (mean_row + 0.5) * f - 0.5])
    table = cell_table(ids, centroids, counts * f * f, mpp=mpp, px_per_label_px=f, source=source, extra=extra)
    return Segmentation(labels, f, table, source)
