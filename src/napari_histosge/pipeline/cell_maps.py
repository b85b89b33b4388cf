"""Expression maps of segmented cells: every cell of a segmentation a unit of the sub-spot model.

:func:`superresolve_cells` predicts each segmented cell (a nucleus from the built-in
detector, a StarDist or Cellpose label, a QuPath polygon) within one spot spacing of a
measured spot, as :func:`~napari_histosge.pipeline.grid_maps.superresolve_grid` predicts the
squares of a grid: the sub-spot model's rates at the cell's centroid, modulated by the image
features there, made consistent with the measured footprints. With ``exact`` and
``counting`` consistency a footprint's value is the mean of the cells whose centroids it
holds; with the default ``smooth`` the correction is the smooth field of the model's own
grid squares under each footprint, read at each cell's centroid, so it does not depend on
which cells the segmentation found.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd

from ..cells.detect import detect_nuclei
from ..cells.read import read_segmentation
from ..cells.segmentation import CellUnits, Segmentation
from ..errors import InputError
from ..features.cell_raster import cell_features
from ..io import require_spot_image
from ..progress import CancelToken, Progress, ProgressGenerator
from ..slide.cell_grid import CellGrid
from ..slide.open import open_slide
from ..training.cell_model import CellModel, as_cell_model
from ..training.grouping import median_spacing
from ..training.trained_model import TrainedModel
from .grid_maps import REACH_SPACINGS, unit_rates
from .map_modes import DEFAULT_CONSISTENCY, PER_FOOTPRINT, check_consistency
from .placement import check_measured_genes, finish_prediction
from .products import NUCLEI

#: Cells predicted at once where each cell's rate depends on its own position only (bounded memory).
CHUNK_CELLS = 20_000
#: A label raster may be off the slide's size by this many of its own pixels (rounding of a downscale).
SIZE_SLACK_LABEL_PX = 1.0


def slide_shape_of(adata) -> tuple[int, int]:
    """``(height, width)`` of ``adata``'s slide in full-resolution pixels (the frame of ``obsm["spatial"]``)."""
    path, scale = require_spot_image(adata)
    with open_slide(path) as slide:
        height, width = slide.shape
    return int(round(height / scale)), int(round(width / scale))


def section_segmentation(segmentation: Segmentation | str | os.PathLike, adata, *,
                         label_scale: float | None = None) -> Segmentation:
    """``segmentation`` as cells on ``adata``'s slide: read when a path, checked against the slide's size.

    ``label_scale``: full-resolution pixels per pixel of a label image file of another size.

    Raises
    ------
    InputError
        If it holds no cell, or its label raster covers another size than the slide (a
        segmentation of another slide, or of a downscaled image without its scale).
    """
    slide_shape = slide_shape_of(adata)
    mpp = adata.uns.get("histosge", {}).get("mpp")
    if not isinstance(segmentation, Segmentation):
        return read_segmentation(segmentation, slide_shape, mpp=mpp, scale=label_scale)
    if segmentation.n_cells == 0:
        raise InputError("the segmentation is empty: it holds no cell", segmentation.source)
    h, w = segmentation.labels.shape[:2]
    f = float(segmentation.px_per_label_px)
    slack = SIZE_SLACK_LABEL_PX * f + 1
    if abs(w * f - slide_shape[1]) > slack or abs(h * f - slide_shape[0]) > slack:
        raise InputError(f"the segmentation covers {w * f:.0f} x {h * f:.0f} full-resolution px but the slide is "
                         f"{slide_shape[1]} x {slide_shape[0]} px: a segmentation of another slide, or a label "
                         "image whose scale was not stated", segmentation.source)
    return segmentation


def cells_near_spots(units: CellUnits, adata) -> np.ndarray:
    """Indices of the cells within :data:`~napari_histosge.pipeline.grid_maps.REACH_SPACINGS` spot spacings of a spot.

    The same region a grid map covers: farther out the measured prior is an extrapolation.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], np.float64)
    reach = REACH_SPACINGS * median_spacing(xy, undefined=float(adata.uns.get("histosge", {}).get(
        "spot_diameter_px", 1.0)))
    near, _ = cKDTree(xy).query(units.centroids_xy, distance_upper_bound=reach)
    return np.flatnonzero(np.isfinite(near))


def check_cells_in_footprints(model: CellModel, centroids: np.ndarray, source: str) -> None:
    """At least one cell centroid must lie in a measured footprint, or nothing ties the map to the measurement."""
    if len(centroids) == 0:
        raise InputError("no segmented cell lies within one spot spacing of a measured spot: a segmentation "
                         "of another slide or region?", source)
    held = model.footprints().cell_weights(centroids, nearest_if_empty=False)
    if held.nnz == 0:
        raise InputError(f"none of the {len(centroids):,} segmented cells lies in a measured footprint: a "
                         "segmentation of another slide or region?", source)


def features_at(model: CellModel, adata, centroids: np.ndarray,
                cancel: CancelToken | None = None) -> ProgressGenerator[np.ndarray]:
    """``(n, n_features)`` float32 image features at cell ``centroids``, as the model reads them.

    The model learned its image modulation from squares of its own cell size, with filters
    at scales relative to that size (:mod:`napari_histosge.features.cell_raster`). The
    features of a nucleus-sized window would be other variables than the ones it fitted, so
    each cell gets the features of a square of the model's size centred at its centroid:
    the grid of such squares around the cells is read once, and its values are interpolated
    bilinearly at each centroid (cells inside one square still differ by where they sit).
    """
    if not model.uses_image:
        return np.zeros((len(centroids), int(model.meta.n_features or 0)), np.float32)
    path, scale = require_spot_image(adata)
    cell_px = float(model.cell_px)
    grid = CellGrid.covering(centroids.min(axis=0) - cell_px, centroids.max(axis=0) + cell_px, cell_px)
    position = (centroids - np.asarray(grid.origin_xy)) / cell_px  # (col, row) in grid cells, fractional
    low = np.floor(position).astype(np.int64)
    frac = position - low
    corners = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (dcol, drow)
    flat = np.stack([(low[:, 1] + dr) * grid.shape[1] + low[:, 0] + dc for dc, dr in corners], axis=1)
    kept = grid.keep(np.isin(grid.flat_index, flat))
    feats = yield from cell_features(path, scale, kept, cancel=cancel)
    out = np.zeros((len(centroids), feats.shape[1]), np.float64)
    for k, (dc, dr) in enumerate(corners):
        weight = (frac[:, 0] if dc else 1 - frac[:, 0]) * (frac[:, 1] if dr else 1 - frac[:, 1])
        out += weight[:, None] * feats[np.searchsorted(kept.flat_index, flat[:, k])]
    return out.astype(np.float32)


def cell_rates(model: CellModel, centroids: np.ndarray, feats: np.ndarray, consistency: str,
               cancel: CancelToken | None = None) -> ProgressGenerator[np.ndarray]:
    """``(n, G)`` float32 rates of the cells (:func:`~napari_histosge.pipeline.grid_maps.unit_rates`).

    Per-footprint consistency scales all cells of a footprint together, so it takes every
    cell at once; otherwise each cell's rate depends on its own position only and cells go
    in chunks, so memory stays bounded on a slide of a million cells.
    """
    n = len(centroids)
    step = n if consistency in PER_FOOTPRINT else CHUNK_CELLS
    starts = range(0, n, max(step, 1))
    out = np.zeros((n, len(model.genes)), np.float32)
    corrector = model.smooth_corrector(counting=True) if consistency == "smooth" else None  # once, not per chunk
    yield Progress("predict", 0, len(starts), f"{n:,} cells")
    for done, start in enumerate(starts, 1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        part = slice(start, start + step)
        out[part] = unit_rates(model, centroids[part], feats[part], consistency, corrector)
        yield Progress("predict", done, len(starts))
    return out


def expanded_area_px(area_px: np.ndarray, expand_um: float, mpp: float | None) -> np.ndarray:
    """Areas of discs of each cell's equivalent radius plus ``expand_um`` µm (full-res px²)."""
    if expand_um == 0:
        return np.asarray(area_px, np.float64)
    if not mpp:
        raise InputError(f"expanding cells by {expand_um:g} µm needs the slide's pixel size, which is unknown here")
    radius = np.sqrt(np.asarray(area_px, np.float64) / math.pi) + float(expand_um) / float(mpp)
    return math.pi * radius**2


def check_expand(expand_um: float, mpp: float | None) -> None:
    """``expand_um`` must be a finite number of µm, zero or more; growing cells needs the pixel size ``mpp``."""
    if not (math.isfinite(float(expand_um)) and float(expand_um) >= 0):
        raise InputError(f"cells are expanded by zero or more µm, got {expand_um}")
    expanded_area_px(np.zeros(0), float(expand_um), mpp)  # its one line when the pixel size is unknown


def superresolve_cells(model: TrainedModel, adata, segmentation: Segmentation | str | os.PathLike, *,
                       consistency: str = DEFAULT_CONSISTENCY, expand_um: float = 0.0,
                       cancel: CancelToken | None = None) -> ProgressGenerator[Any]:
    """Predict every segmented cell near ``adata``'s measured spots.

    Parameters
    ----------
    model
        A trained ``subspot`` model of this section.
    adata
        The section it was trained on.
    segmentation
        The cells: a :class:`~napari_histosge.cells.Segmentation` (the built-in detector's,
        a napari Labels layer's) or the path of a label image or GeoJSON of polygons
        (:func:`~napari_histosge.cells.read_segmentation`, at the slide's size).
    consistency
        As for grid maps (:func:`~napari_histosge.pipeline.grid_maps.grid_rates`). ``exact``
        and ``counting``: a measured footprint's value is the mean of the cells whose
        centroids it holds. ``smooth`` (the default): the correction comes from the model's
        own grid squares under each footprint, a smooth field read at each cell's centroid.
    expand_um
        Each cell stands for a disc of its equivalent radius plus this many µm (a nucleus
        grown into its cell): its area; the cell is predicted at its centroid either way.
    cancel
        Checked between blocks of the slide and of cells.

    Returns
    -------
    AnnData
        One row per cell (cells farther than a spot spacing from every spot are left out):
        X log1p(counts per 1e4) of the model's genes, ``obsm["spatial"]`` the centroids
        (full-res px), ``obs["label"]`` the label id, ``obs["area_px"]`` / ``obs["area_um2"]``
        the (expanded) area, ``uns["histosge"]["cells"]`` the segmentation's source and how
        the cells were used.

    Raises
    ------
    InputError
        Before any work: an unknown consistency, a model that does not predict cells, a
        negative expansion, an empty segmentation, one of another slide size, or cells that
        miss every measured footprint.
    """
    import anndata as ad

    check_consistency(consistency)
    check_expand(expand_um, adata.uns.get("histosge", {}).get("mpp"))
    cell_model = as_cell_model(model)  # one line for a model that predicts whole spots
    check_measured_genes(model, adata)
    cells = section_segmentation(segmentation, adata)
    units = cells.units()
    near = cells_near_spots(units, adata)
    centroids = units.centroids_xy[near]
    check_cells_in_footprints(cell_model, centroids, cells.source)
    info = dict(adata.uns.get("histosge", {}))
    info.pop("footprint", None)  # the section's spot or bin shape; a cell is a disc of its own area
    area = expanded_area_px(units.area_px[near], float(expand_um), info.get("mpp"))
    feats = yield from features_at(cell_model, adata, centroids, cancel)
    rates = yield from cell_rates(cell_model, centroids, feats, consistency, cancel)
    labels = units.label_ids[near]
    mpp = info.get("mpp")
    obs = pd.DataFrame({"label": labels, "area_px": area,
                        "area_um2": area * float(mpp) ** 2 if mpp else np.full(len(area), np.nan)},
                       index=pd.Index([str(i) for i in labels]))
    out = ad.AnnData(X=np.log1p(rates).astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(model.genes)))
    out.obsm["spatial"] = centroids
    info.update(units="log1p(counts per 1e4)", model=model.config.model, consistency=consistency,
                trained_on=str(model.meta.source), positions="cells",
                cells={"source": cells.source, "px_per_label_px": float(cells.px_per_label_px),
                       "expand_um": float(expand_um), "segmented": int(cells.n_cells),
                       "left_out_far_from_spots": int(cells.n_cells - len(near))})
    out.uns["histosge"] = info
    return finish_prediction(out, model)


def section_cells(cells: Segmentation | str | os.PathLike, adata, *, label_scale: float | None = None,
                  cancel: CancelToken | None = None) -> ProgressGenerator[Segmentation]:
    """The cells of ``adata``'s slide: ``"nuclei"`` detects them, a path is read, a segmentation is checked.

    The detector (:func:`~napari_histosge.cells.detect_nuclei`, its default settings) reads the
    section's full-resolution H&E at its pixel size; a file named ``nuclei`` is read as a file.

    Raises
    ------
    InputError
        As :func:`section_segmentation`, or when the detector needs a pixel size the section lacks.
    """
    if isinstance(cells, str) and cells == NUCLEI and not os.path.exists(cells):
        path, scale = require_spot_image(adata)
        mpp = adata.uns.get("histosge", {}).get("mpp")
        with open_slide(path) as slide:
            found = yield from detect_nuclei(slide, mpp=mpp, scale=scale, source=f"histosge nuclei of {path}",
                                             cancel=cancel)
        return found
    return section_segmentation(cells, adata, label_scale=label_scale)


def cells_product(model: TrainedModel, adata, options, *, scheduler: str | None = None,
                  n_workers: int | None = None, cancel: CancelToken | None = None) -> ProgressGenerator[Any]:
    """The ``cells`` product (:mod:`.products`): the cells found or read, then :func:`superresolve_cells`.

    ``scheduler`` and ``n_workers`` are not used: the cells are read and predicted in this process.
    """
    as_cell_model(model)  # a model that predicts whole spots is told before any detection
    check_measured_genes(model, adata)
    check_expand(options.expand_um, adata.uns.get("histosge", {}).get("mpp"))  # before the cells are read
    cells = yield from section_cells(options.cells, adata, label_scale=options.label_scale, cancel=cancel)
    return (yield from superresolve_cells(model, adata, cells, consistency=options.consistency,
                                          expand_um=options.expand_um, cancel=cancel))
