"""Predicting an unmeasured slide: a bare H&E image (no spots, no counts).

The slide becomes a section of positions: by default the model's own spot lattice (its
training spot spacing and kind, hexagonal or square, in this slide's pixels) over the
tissue mask, or square cells of a chosen size in µm, or positions the user gives. Each
position stands for a disc of the training spot diameter (converted through the pixel
sizes), so the patch read around it covers the same area in µm as in training; patches
are then resampled to the extractor's input size, as for every section. Only a model that
predicts from the image and positions alone can do this (a model that reads measured
spots, :attr:`~napari_histosge.training.trained_model.TrainedModel.predicts_other_sections`
false, cannot).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..export.scanpy_spatial import refresh_spot_diameter
from ..io.spaceranger import VISIUM_SPOT_UM
from ..io.st_v1 import ST_GRID_UM, ST_SPOT_UM
from ..prediction.lattice import check_positions
from ..progress import CancelToken, Progress, ProgressGenerator
from ..slide.cell_grid import MAX_CELLS, MIN_CELL_IMAGE_PX, CellGrid
from ..slide.grid_size import check_grid_um
from ..slide.mask import TissueMask, cells_inside, detect_tissue, read_mask
from ..slide.meta import tiff_mpp
from ..slide.open import SUPPORTED_SUFFIXES, TIFF_SUFFIXES
from ..slide.pyramid import pil_no_size_limit
from ..training.trained_model import TrainedModel
from .grid_maps import DETECT
from .map_modes import NO_MASK
from .steps import predict_spots

#: Centre-to-centre distance of Visium spots (55 µm spots).
VISIUM_SPACING_UM = 100.0
#: Spot spacing per spot diameter of each lattice kind, for a model whose metadata records no spacing.
SPACING_PER_DIAMETER = {"hexagonal": VISIUM_SPACING_UM / VISIUM_SPOT_UM, "square": ST_GRID_UM / ST_SPOT_UM}
#: The most a slide's pixel size may differ from the training slides' (either way) without being stated.
MAX_MPP_RATIO = 2.0
#: ``uns["histosge"]["mpp_source"]`` values: where the slide's pixel size came from.
MPP_METADATA, MPP_GIVEN, MPP_ASSUMED, MPP_UNKNOWN = "slide metadata", "given", "assumed (training slides')", "unknown"


def slide_header(path: str | os.PathLike) -> tuple[tuple[int, int], float | None]:
    """``((width, height), µm per px or None)`` of a slide image, from its header alone.

    Nothing is decoded and no pyramid is built, so every check on the pixel size runs before
    any heavy work.

    Raises
    ------
    InputError
        If the file is missing, of an unsupported type, or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("slide image not found", p)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"unsupported image type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}", p)
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(p) as tf:
                series = tf.series[0]
                shape = dict(zip(series.axes, series.shape, strict=True))
                return (int(shape["X"]), int(shape["Y"])), tiff_mpp(tf)
        from PIL import Image

        with pil_no_size_limit(), Image.open(p) as image:  # a slide is legitimately huge
            return (int(image.width), int(image.height)), None
    except Exception as exc:  # tifffile and PIL raise many types for a bad file
        raise InputError(f"cannot read the slide image's header ({type(exc).__name__}: {exc})", p) from exc


def require_image_model(model: TrainedModel, source: str | os.PathLike | None = None) -> None:
    """Refuse a model that reads measured spots: it cannot predict a slide without them."""
    if not model.predicts_other_sections:
        raise InputError(f"a {model.config.model} model predicts from the measured spots of the section it was "
                         "trained on, and a bare slide has none: use a histosge model (train --model histosge)",
                         source)
    if not model.meta.n_features:
        # Positions alone say nothing about another slide: its frame is unrelated to the training one.
        raise InputError("this model reads no image features (trained with --extractor none), so on an unmeasured "
                         "slide it would predict from positions alone: train it with image features", source)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def training_mpps(model: TrainedModel) -> list[float]:
    """The pixel sizes (µm per full-res px) of the model's training slides that its metadata records."""
    values = [model.meta.mpp] + [s.get("mpp") for s in model.meta.sections or []]
    return [v for v in (_positive(x) for x in values) if v is not None]


@dataclass(frozen=True)
class PixelSize:
    """The slide's µm per full-res pixel (``None``: unknown) and where it came from (``MPP_*``)."""

    mpp: float | None
    source: str


def slide_pixel_size(model: TrainedModel, metadata_mpp: float | None, given: float | None,
                     source: str | os.PathLike | None = None) -> PixelSize:
    """The slide's pixel size: ``given``, else its metadata's, else the training slides' (with a warning).

    Raises
    ------
    InputError
        If ``given`` is not a positive number, or the metadata's pixel size differs by more
        than :data:`MAX_MPP_RATIO` from every training slide's and none was given (a slide at
        another magnification, or metadata that is wrong: the user says which).
    """
    trained = training_mpps(model)
    if given is not None:
        if _positive(given) is None:
            raise InputError(f"the pixel size must be a positive number of µm per pixel, got {given!r}")
        return PixelSize(float(given), MPP_GIVEN)
    mpp = _positive(metadata_mpp)
    if mpp is not None:
        ratio = min((max(mpp / t, t / mpp) for t in trained), default=1.0)
        if ratio > MAX_MPP_RATIO:
            listed = ", ".join(f"{t:.4g}" for t in sorted(set(trained)))
            raise InputError(f"the slide's pixel size ({mpp:.4g} µm/px in its metadata) differs by more than "
                             f"{MAX_MPP_RATIO:g}x from the training slides' ({listed} µm/px): state it with "
                             f"--um-per-px {mpp:.4g} (patches are then read at the training size in µm)", source)
        return PixelSize(mpp, MPP_METADATA)
    if trained:
        assumed = _positive(model.meta.mpp) or float(np.median(trained))
        warnings.warn(f"the slide's pixel size is unknown: assuming the training slides' {assumed:.4g} µm/px "
                      "(give --um-per-px to state it)", UserWarning, stacklevel=2)
        return PixelSize(assumed, MPP_ASSUMED)
    warnings.warn("neither the slide nor the model records a pixel size: the slide's pixels are taken to be the "
                  "training slides' (give --um-per-px and a model with a known pixel size to place it in µm)",
                  UserWarning, stacklevel=2)
    return PixelSize(None, MPP_UNKNOWN)


@dataclass(frozen=True)
class SlideSpots:
    """The model's training spots on this slide: lattice kind, diameter and spacing in the slide's full-res px."""

    kind: str | None
    diameter_px: float | None
    spacing_px: float | None


def slide_spots(model: TrainedModel, pixel_size: PixelSize) -> SlideSpots:
    """The training spot geometry of ``model`` converted to a slide of ``pixel_size``.

    The spacing is the model's ``spot_spacing_px`` where its metadata records one, else the
    spacing its lattice kind has per spot diameter (:data:`SPACING_PER_DIAMETER`).
    """
    meta = model.meta
    trained_mpp = _positive(meta.mpp)
    factor = trained_mpp / pixel_size.mpp if trained_mpp and pixel_size.mpp else 1.0
    kind = meta.lattice if meta.lattice in SPACING_PER_DIAMETER else None
    diameter = _positive(meta.spot_diameter_px)
    spacing = _positive(meta.spot_spacing_px)
    if spacing is None and diameter is not None and kind is not None:
        spacing = diameter * SPACING_PER_DIAMETER[kind]
    return SlideSpots(kind, None if diameter is None else diameter * factor,
                      None if spacing is None else spacing * factor)


def slide_mask(slide_path: str, size_wh: tuple[int, int], mask) -> TissueMask:
    """The tissue mask ``mask`` stands for: ``"auto"`` detects it, a path reads it, ``None``/``"none"`` is all of it.

    Raises
    ------
    InputError
        No tissue is found, or the mask file holds none.
    """
    if isinstance(mask, TissueMask):
        return mask
    if mask is None or (isinstance(mask, str) and mask == NO_MASK):
        step = max(size_wh) / 256.0
        shape = (int(np.ceil(size_wh[1] / step)), int(np.ceil(size_wh[0] / step)))
        return TissueMask(np.ones(shape, bool), step, slide_path)
    if isinstance(mask, str) and mask == DETECT:
        return detect_tissue(slide_path)
    return read_mask(mask, (float(size_wh[0]), float(size_wh[1])))


def _tissue_box(mask: TissueMask, size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask.mask)
    if not len(rows):
        raise InputError("the tissue mask is empty: no tissue to predict on", mask.source)
    f = mask.px_per_mask_px
    lo = np.maximum([cols.min() * f, rows.min() * f], 0.0)
    hi = np.minimum([(cols.max() + 1) * f, (rows.max() + 1) * f], np.asarray(size_wh, np.float64))
    return lo, hi


def lattice_on_mask(mask: TissueMask, spots: SlideSpots, size_wh: tuple[int, int]) -> pd.DataFrame:
    """Spot lattice sites on tissue: columns ``x``, ``y``, ``array_row``, ``array_col``, index ``spot_<row>_<col>``.

    A hexagonal lattice indexes its sites as Visium does (``array_col`` steps by 2 in a row,
    odd rows offset by one).
    """
    if spots.spacing_px is None or spots.kind is None:
        raise InputError("the model records no spot lattice (kind and spacing) to place spots on the slide: give "
                         "--positions or --grid-um")
    s = spots.spacing_px
    hexagonal = spots.kind == "hexagonal"
    lo, hi = _tissue_box(mask, size_wh)
    dy = s * np.sqrt(3.0) / 2.0 if hexagonal else s
    n_rows, n_cols = int(np.ceil((hi[1] - lo[1]) / dy)) + 1, int(np.ceil((hi[0] - lo[0]) / s)) + 1
    if n_rows * n_cols > MAX_CELLS:
        raise InputError(f"{n_rows} x {n_cols} spot sites over the tissue are over the limit of {MAX_CELLS:,}")
    r_grid, c_grid = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    r, c = r_grid.ravel(), c_grid.ravel()
    x = lo[0] + s / 2 + c * s + (r % 2) * (s / 2 if hexagonal else 0.0)
    y = lo[1] + dy / 2 + r * dy
    xy = np.column_stack([x, y])
    keep = mask.contains(xy) & (x < size_wh[0]) & (y < size_wh[1])
    if not keep.any():
        raise InputError(f"no spot site ({s:.4g} px apart) lies on the tissue mask: the tissue is smaller than one "
                         "spot, or the mask is empty", mask.source)
    array_col = 2 * c + r % 2 if hexagonal else c
    table = pd.DataFrame({"x": x, "y": y, "array_row": r, "array_col": array_col})[keep]
    table.index = pd.Index([f"spot_{a}_{b}" for a, b in zip(table["array_row"], table["array_col"], strict=True)])
    return table


def grid_on_mask(mask: TissueMask, cell_px: float, size_wh: tuple[int, int]) -> CellGrid:
    """Square cells of ``cell_px`` over the tissue: those at least half on the mask."""
    lo, hi = _tissue_box(mask, size_wh)
    grid = CellGrid.covering(lo, hi, cell_px)
    inside = cells_inside(mask, grid.centres(), cell_px)
    if not inside.any():
        raise InputError(f"no grid cell of {cell_px:.4g} px lies on the tissue mask", mask.source)
    return grid.keep(inside)


def slide_section(slide_path: str, table: pd.DataFrame, *, pixel_size: PixelSize, spots: SlideSpots,
                  diameter: float | None):
    """A section of positions without counts on ``slide_path``: the spot AnnData the prediction steps read."""
    import anndata as ad
    import scipy.sparse as sp

    obs = table.drop(columns=["x", "y"])
    section = ad.AnnData(X=sp.csr_matrix((len(table), 0), dtype=np.float32), obs=obs)
    section.obsm["spatial"] = table[["x", "y"]].to_numpy(np.float64)
    path = str(Path(slide_path).resolve())
    disc = spots.diameter_px if diameter is None else float(diameter)
    section.uns["histosge"] = {
        "source": path, "library_id": Path(path).stem, "platform": "slide", "lattice": spots.kind,
        "mpp": pixel_size.mpp, "mpp_source": pixel_size.source, "images": {"fullres": {"path": path, "scale": 1.0}},
        "image": "fullres", **({"spot_diameter_px": float(disc)} if disc is not None else {}),
    }
    return section


def _given_positions(positions, position_ids, size_wh: tuple[int, int], source: str) -> pd.DataFrame:
    xy = check_positions(positions, "positions to predict at")
    if len(xy) == 0:
        raise InputError("no positions to predict at")
    outside = (xy < 0).any(axis=1) | (xy[:, 0] >= size_wh[0]) | (xy[:, 1] >= size_wh[1])
    if outside.any():
        raise InputError(f"{int(outside.sum())} of {len(xy)} positions lie outside the slide ({size_wh[0]} x "
                         f"{size_wh[1]} px), e.g. {xy[np.flatnonzero(outside)[0]].tolist()}", source)
    names = [str(i) for i in range(len(xy))] if position_ids is None else [str(i) for i in position_ids]
    if len(names) != len(xy) or len(set(names)) != len(names):
        raise InputError(f"position_ids must be {len(xy)} unique names, one per position")
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=pd.Index(names))


def grid_cell_size(grid_um: float, pixel_size: PixelSize) -> float:
    """The cell side in full-res px for ``grid_um`` µm; refuses an unknown pixel size or a sub-pixel cell."""
    check_grid_um(grid_um)
    if pixel_size.mpp is None:
        raise InputError(f"a grid of {grid_um:g} µm cells needs the slide's pixel size: give --um-per-px")
    cell_px = float(grid_um) / pixel_size.mpp
    if cell_px < MIN_CELL_IMAGE_PX:
        raise InputError(f"a grid cell of {grid_um:g} µm is {cell_px:.2f} pixels wide, under the minimum of "
                         f"{MIN_CELL_IMAGE_PX:g}: choose at least {MIN_CELL_IMAGE_PX * pixel_size.mpp:.3g} µm")
    return cell_px


def predict_slide(model: TrainedModel, slide_path: str | os.PathLike, *, positions=None, position_ids=None,
                  grid_um: float | None = None, mask=DETECT, um_per_px: float | None = None,
                  diameter: float | None = None, scheduler: str | None = None, n_workers: int | None = None,
                  cancel: CancelToken | None = None) -> ProgressGenerator[Any]:
    """Predict expression on a bare slide image: on the model's spot lattice, a µm grid, or given positions.

    Parameters
    ----------
    model
        A model that predicts from the image and positions alone (histosge).
    slide_path
        The slide image (anything :func:`~napari_histosge.slide.open.open_slide` opens).
    positions, position_ids
        ``(n, 2)`` full-res ``(x, y)`` to predict at (and their names), instead of the lattice.
    grid_um
        Predict square cells of this side (µm) over the tissue instead of the lattice.
    mask
        Tissue mask: ``"auto"`` detects it, a path reads a label image or GeoJSON, a
        :class:`~napari_histosge.slide.mask.TissueMask` is used as is, ``None`` is the whole slide.
    um_per_px
        The slide's pixel size, overriding its metadata.
    diameter
        The disc (full-res px) each position stands for; default: the training spot.
    scheduler, n_workers, cancel
        As in :func:`~napari_histosge.pipeline.steps.predict_spots`.

    Returns
    -------
    AnnData
        As :func:`~napari_histosge.pipeline.steps.predict_spots` (lattice: ``obs`` ``array_row``/
        ``array_col``), or for a grid as :func:`~napari_histosge.pipeline.grid_maps.superresolve_grid`
        (``obs`` ``grid_row``/``grid_col``, ``uns["histosge"]["grid"]``).

    Raises
    ------
    InputError
        A model that needs measured spots, a pixel size that differs more than
        :data:`MAX_MPP_RATIO` from the training slides' and was not stated, an empty tissue
        mask, positions off the slide; all before any feature is read.
    """
    source = str(slide_path)
    require_image_model(model, source)
    size_wh, metadata_mpp = slide_header(slide_path)
    pixel_size = slide_pixel_size(model, metadata_mpp, um_per_px, source)
    spots = slide_spots(model, pixel_size)
    if spots.diameter_px is None and diameter is None:
        raise InputError("the model records no spot diameter: give the diameter of the discs to predict")
    cell_px = None if grid_um is None else grid_cell_size(grid_um, pixel_size)
    tissue = grid = None
    if positions is not None:
        table = _given_positions(positions, position_ids, size_wh, source)
        placed = "given"
    else:
        yield Progress("tissue", 0, 1, "finding the tissue")
        tissue = slide_mask(source, size_wh, mask)
        if cell_px is not None:
            grid = grid_on_mask(tissue, cell_px, size_wh)
            rows, cols = grid.rows_cols()
            xy = grid.centres()
            table = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "grid_row": rows, "grid_col": cols},
                                 index=pd.Index([f"cell_{r}_{c}" for r, c in zip(rows, cols, strict=True)]))
            placed = "grid"
        else:
            table = lattice_on_mask(tissue, spots, size_wh)
            placed = "spot lattice"
        yield Progress("tissue", 1, 1, f"{len(table):,} positions on the tissue")
    section = slide_section(source, table, pixel_size=pixel_size, spots=spots, diameter=diameter)
    # A grid cell is predicted from the model's training patch centred on it, not a patch
    # of the cell's size: the model learnt expression from spot-sized patches, and a small
    # patch resampled to the extractor's input is an image it never saw. The map is then
    # sampled at the cell size with the spot's footprint: as sharp as the spots trained on.
    pred = yield from predict_spots(model, section, diameter=diameter, scheduler=scheduler, n_workers=n_workers,
                                    cancel=cancel)
    for column in section.obs.columns:  # lattice indices, or grid rows and columns
        pred.obs[column] = section.obs[column].to_numpy()
    info = pred.uns["histosge"]
    info["positions"] = placed
    if tissue is not None:
        info["tissue_mask"] = tissue.to_uns()
    if grid is not None:
        assert cell_px is not None  # a grid is made only for a cell size
        del info["fold"]  # the grid contract of superresolve_grid: a raster, not positions
        mpp = pixel_size.mpp
        info["grid"] = {**grid.to_dict(), "cell_um": float("nan") if mpp is None else float(cell_px * mpp)}
        refresh_spot_diameter(pred)  # a row is now a grid cell: scanpy draws it at the cell's side
    return pred
