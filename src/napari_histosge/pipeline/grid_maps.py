"""Expression maps on a grid of cells, and spots predicted as the mean of their cells (the sub-spot model).

:func:`superresolve_grid` covers the measured region of a section (within one spot
spacing of a measured spot, and inside the tissue mask) with square cells of a chosen
size, reads every cell's image features, predicts its rates and, by default, makes them
consistent with the measurement. :func:`predict_discs` predicts given discs (spots) as
the mean of the cells whose centres they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..features.cell_raster import SIGMAS_IN_CELLS, cell_features
from ..io import require_spot_image
from ..progress import CancelToken, Progress, ProgressGenerator
from ..slide.cell_grid import MIN_CELL_IMAGE_PX, CellGrid, Footprints
from ..slide.grid_size import check_grid_um
from ..slide.mask import TissueMask, cells_inside, check_covers_spots, detect_tissue, read_mask
from ..slide.open import open_slide
from ..training.cell_model import CellModel, as_cell_model
from ..training.grouping import median_spacing
from ..training.products import register_spots
from ..training.trained_model import TrainedModel
from .map_modes import CONSISTENCY as CONSISTENCY  # re-exported: where the grid maps' callers look
from .map_modes import DEFAULT_CONSISTENCY, NO_MASK, PER_FOOTPRINT, check_consistency
from .map_modes import DETECT as DETECT  # re-exported: the widget and the CLI ask for the detected tissue
from .placement import check_measured_genes, default_diameter, finish_prediction

#: Cells farther than this many spot spacings from every measured spot are left out.
REACH_SPACINGS = 1.0


def grid_cell_px(model: TrainedModel, adata, grid_um: float | None) -> float:
    """The cell side (full-res px) for ``grid_um`` µm on ``adata``: the model's own cell when ``None``.

    Raises
    ------
    InputError
        If the cells would be narrower than two image pixels, or µm cannot be converted.
    """
    _, scale = require_spot_image(adata)
    if grid_um is None:
        return float(as_cell_model(model).cell_px)
    check_grid_um(grid_um)
    mpp = adata.uns.get("histosge", {}).get("mpp")
    if mpp is None:
        raise InputError(f"a grid of {grid_um:g} µm cells needs the slide's pixel size, which is unknown here")
    cell_px = float(grid_um) / float(mpp)
    if cell_px * scale < MIN_CELL_IMAGE_PX:
        raise InputError(f"a grid cell of {grid_um:g} µm is {cell_px * scale:.2f} image pixels wide, under the "
                         f"minimum of {MIN_CELL_IMAGE_PX:g}: choose at least "
                         f"{MIN_CELL_IMAGE_PX / scale * float(mpp):.3g} µm")
    return cell_px




def section_mask(adata, mask) -> TissueMask | None:
    """The tissue mask ``mask`` stands for on ``adata``'s slide.

    ``"auto"`` detects the tissue (:func:`napari_histosge.slide.mask.detect_tissue`), a path
    reads a user's mask (label image or GeoJSON, :func:`napari_histosge.slide.mask.read_mask`),
    a :class:`~napari_histosge.slide.mask.TissueMask` is used as it is, ``None`` or ``"none"``
    means none.

    Raises
    ------
    InputError
        If the mask is empty, unreadable, or misses most of the measured spots.
    """
    if mask is None or (isinstance(mask, str) and mask == NO_MASK):
        found = None
    elif isinstance(mask, TissueMask):
        found = mask
    else:
        path, scale = require_spot_image(adata)
        if isinstance(mask, str) and mask == DETECT:
            found = detect_tissue(path, scale=scale)
        else:
            height, width = open_slide(path).levels[0].shape[:2]
            found = read_mask(mask, (width / scale, height / scale))
    if found is not None:
        check_covers_spots(found, np.asarray(adata.obsm["spatial"], np.float64))
    return found


def lattice_tissue(adata) -> TissueMask | None:
    """The tissue detected on ``adata``'s slide for drawing a lattice map, or ``None`` where none is usable.

    A detection that misses most spots (a faint or unusual stain) is not an error here: the
    map is then drawn near the positions, as without a mask, and the prediction is kept.
    """
    try:
        return section_mask(adata, DETECT)
    except InputError:
        return None


def measured_region_grid(adata, cell_px: float, mask: TissueMask | None = None) -> CellGrid:
    """Cells of ``cell_px`` within :data:`REACH_SPACINGS` spot spacings of a measured spot, and on ``mask``.

    A cell is on the mask when at least half of it is tissue.
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], np.float64)
    reach = REACH_SPACINGS * median_spacing(xy, undefined=float(adata.uns.get("histosge", {}).get(
        "spot_diameter_px", cell_px * 4)))
    grid = CellGrid.covering(xy.min(axis=0) - reach, xy.max(axis=0) + reach, cell_px)
    centres = grid.centres()
    near, _ = cKDTree(xy).query(centres, distance_upper_bound=reach)
    inside = np.isfinite(near)
    if mask is not None:
        inside &= cells_inside(mask, centres, cell_px)
    if not inside.any():
        raise InputError("no grid cell lies inside the tissue mask near the measured spots: check the mask")
    return grid.keep(inside)


def _feature_sigmas(model: CellModel, cell_px: float) -> tuple[float, ...]:
    """Filter scales (in cells of ``cell_px``) that match the ones the model was fitted with."""
    ratio = float(model.cell_px) / float(cell_px)
    return tuple(s * ratio for s in SIGMAS_IN_CELLS)


def grid_rates(model: CellModel, adata, grid: CellGrid, *, consistency: str = DEFAULT_CONSISTENCY,
               cancel: CancelToken | None = None) -> ProgressGenerator[np.ndarray]:
    """Rates (counts per 1e4) of every cell of ``grid``, ``(n_cells, G)`` float32.

    ``consistency``: ``"exact"`` reproduces each measured footprint, ``"counting"`` reads
    it through its counting noise, ``"smooth"`` corrects by a smooth field that agrees
    with the footprints in expectation, ``"none"`` leaves the model's prediction.
    """
    check_consistency(consistency)
    model = as_cell_model(model)
    if model.uses_image:
        path, scale = require_spot_image(adata)
        feats = yield from cell_features(path, scale, grid, sigmas=_feature_sigmas(model, grid.cell_px),
                                         cancel=cancel)
    else:  # the model ignores the image: no slide read for features
        feats = np.zeros((grid.n_cells, int(model.meta.n_features or 0)), np.float32)
    yield Progress("predict", 0, 1, f"{grid.n_cells:,} cells")
    rates = unit_rates(model, grid.centres(), feats, consistency)
    yield Progress("predict", 1, 1)
    return rates


def unit_rates(model: CellModel, centres: np.ndarray, feats: np.ndarray, consistency: str,
               corrector: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Rates (counts per 1e4) of units (grid cells or segmented cells) at ``centres`` with image ``feats``.

    The model's prediction, then made consistent with the measured footprints as
    ``consistency`` says (:func:`grid_rates`); a footprint's value is the mean of the units
    whose centres it holds. ``corrector``: the model's ``smooth_corrector(counting=True)``,
    computed once by a caller that asks for many blocks of units.
    """
    rates = model.cell_rates(centres, feats)
    if consistency == "smooth":
        rates = (corrector or model.smooth_corrector(counting=True))(centres, rates)
    elif consistency != "none":
        rates = model.make_consistent(centres, rates, exact=consistency == "exact")
    return rates


def superresolve_grid(model: TrainedModel, adata, *, grid_um: float | None = None, mask=DETECT,
                      consistency: str = DEFAULT_CONSISTENCY, cancel: CancelToken | None = None,
                      ) -> ProgressGenerator[Any]:
    """Predict a grid of cells over ``adata``'s measured region: the ``grid`` product.

    ``napari_histosge.superresolve(model, adata, product="grid", ...)`` asks the model for it
    and takes the same options.

    Parameters
    ----------
    model
        A trained model of this section that predicts grid cells (a
        :class:`~napari_histosge.training.cell_model.CellModel`, e.g. ``subspot``).
    adata
        The section it was trained on.
    grid_um
        Cell side in µm; the model's own cell size when ``None``.
    mask
        Cells off the tissue are left out: ``"auto"`` detects it on the slide, a path reads a
        label image or GeoJSON, a :class:`~napari_histosge.slide.mask.TissueMask` is used as it
        is, ``None`` (or ``"none"``) keeps every cell near a spot (:func:`section_mask`).
    consistency
        ``"smooth"`` (default): a smooth correction field that agrees with the footprints in
        expectation; ``"exact"``: the cells under each measured footprint are scaled so their
        mean is its measured value; ``"counting"``: the measurement read through its
        counting noise (smoother where sparse genes were counted zero times, but it also
        pulls each spot toward its neighbours); ``"none"``: the model's prediction alone.

    Returns
    -------
    AnnData
        One row per cell: X log1p(counts per 1e4), ``obsm["spatial"]`` the cell centres (full-res
        px), ``obs["grid_row"]``/``obs["grid_col"]``, ``uns["histosge"]["grid"]`` the grid
        (``cell_px``, ``origin_xy``, ``shape``, ``cell_um``) and how it was made.
    """
    import anndata as ad

    check_consistency(consistency)
    cells = as_cell_model(model)  # before the mask is read
    check_measured_genes(model, adata)
    cell_px = grid_cell_px(model, adata, grid_um)
    tissue = section_mask(adata, mask)
    grid = measured_region_grid(adata, cell_px, tissue)
    rates = yield from grid_rates(cells, adata, grid, consistency=consistency, cancel=cancel)
    rows, cols = grid.rows_cols()
    names = pd.Index([f"cell_{r}_{c}" for r, c in zip(rows, cols, strict=True)])
    out = ad.AnnData(X=np.log1p(rates).astype(np.float32),
                     obs=pd.DataFrame({"grid_row": rows, "grid_col": cols}, index=names),
                     var=pd.DataFrame(index=pd.Index(model.genes)))
    out.obsm["spatial"] = grid.centres()
    info = dict(adata.uns.get("histosge", {}))
    mpp = info.get("mpp")
    info.update(units="log1p(counts per 1e4)", model=model.config.model, consistency=consistency,
                trained_on=str(model.meta.source), positions="grid",
                grid={**grid.to_dict(), "cell_um": float("nan") if mpp is None else float(cell_px * float(mpp))})
    if tissue is not None:
        info["tissue_mask"] = tissue.to_uns()
    out.uns["histosge"] = info
    return finish_prediction(out, model)


def grid_product(model: TrainedModel, adata, options, *, scheduler: str | None = None, n_workers: int | None = None,
                 cancel: CancelToken | None = None) -> ProgressGenerator[Any]:
    """The ``grid`` product (:mod:`.products`): :func:`superresolve_grid` with its checked ``options``.

    ``scheduler`` and ``n_workers`` are not used: the cells are read and predicted in this process.
    """
    return (yield from superresolve_grid(model, adata, grid_um=options.grid_um, mask=options.mask,
                                         consistency=options.consistency, cancel=cancel))


def predict_discs(model: TrainedModel, adata, positions: np.ndarray, diameter: float, *,
                  consistency: str = DEFAULT_CONSISTENCY, cancel: CancelToken | None = None,
                  ) -> ProgressGenerator[np.ndarray]:
    """log1p(counts per 1e4) at discs of ``diameter`` px centred at ``positions``: the mean of their cells.

    With ``consistency`` (as in :func:`grid_rates`), the cells of every measured footprint the discs reach are predicted
    too, so each footprint is made consistent over all of its cells, not only those the
    discs hold.
    """
    cells = as_cell_model(model)
    discs = Footprints(np.asarray(positions, np.float64), "disc", float(diameter))
    cell_px = cells.cell_px
    reach = diameter / 2 + cell_px
    grid = CellGrid.covering(discs.centres.min(axis=0) - reach, discs.centres.max(axis=0) + reach, cell_px)
    centres = grid.centres()
    under = np.asarray((discs.cell_weights(centres) != 0).sum(axis=0)).ravel() > 0
    if consistency in PER_FOOTPRINT:
        measured = cells.footprints().cell_weights(centres, nearest_if_empty=False)
        touched = np.asarray((measured[:, np.flatnonzero(under)] != 0).sum(axis=1)).ravel() > 0
        under |= np.asarray((measured[np.flatnonzero(touched)] != 0).sum(axis=0)).ravel() > 0
    grid = grid.keep(under)
    rates = yield from grid_rates(cells, adata, grid, consistency=consistency, cancel=cancel)
    weights = discs.cell_weights(grid.centres())
    return np.log1p(np.asarray(weights @ rates.astype(np.float64))).astype(np.float32)


def spots_from_cells(model: TrainedModel, adata, names: list[str], xy: np.ndarray, positions, diameter,
                     features, frame, *, scheduler, n_workers, cancel) -> ProgressGenerator[tuple[np.ndarray, None]]:
    """Spots of a cell model (``spots_from="cells"``) at ``xy``: the mean of its grid cells under each disc.

    No spread; precomputed spot ``features`` are not used: the cells' own are read where the
    model uses the image.
    """
    disc = default_diameter(model, adata) if diameter is None else float(diameter)
    assert disc is not None  # required=True: a missing diameter raised
    pred = yield from predict_discs(model, adata, xy, disc, cancel=cancel)
    return pred, None


register_spots("cells", spots_from_cells)
