"""Expression maps as rasters on the slide's full-resolution pixel grid, free of napari and Qt.

The core speaks full-resolution image pixels as ``(x, y)`` (``adata.obsm["spatial"]``); a
:class:`Raster` is a regular grid of cells over that frame, in ``(row, col)`` = ``(y, x)``
order, that the plugin's heatmap layers show and :mod:`.render` paints into figures. Also the
values the plugin shows per position (:func:`gene_values`); the world frame's pixel size is in
:mod:`.frame`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ..errors import InputError
from ..io.preprocess import normalize_log1p
from ..slide.mask import TissueMask
from .frame import META_KEY as META_KEY  # re-exported: where the maps' callers look for them
from .frame import um_per_px as um_per_px
from .frame import world_frame as world_frame


# ----------------------------------------------------------------------------- values
def is_prediction(adata) -> bool:
    """Whether ``adata`` holds predictions (log-normalised) rather than raw counts.

    Predictions carry ``uns["histosge"]["fold"]`` (positions), ``["grid"]`` (grid cells) or
    ``["positions"] == "cells"`` (segmented cells).
    """
    info = adata.uns.get(META_KEY, {})
    return isinstance(info, dict) and ("fold" in info or "grid" in info or is_cells(adata))


def is_cells(adata) -> bool:
    """Whether ``adata`` holds predictions of segmented cells (:mod:`napari_histosge.pipeline.cell_maps`)."""
    info = adata.uns.get(META_KEY, {})
    return isinstance(info, dict) and info.get("positions") == "cells"


def _column(adata, gene: str, layer: str | None = None) -> np.ndarray:
    # Indexing the matrix itself: an AnnData view per gene costs milliseconds on every switch.
    matrix = adata.X if layer is None else adata.layers[layer]
    col = matrix[:, adata.var_names.get_loc(gene)]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return np.asarray(col, dtype=np.float64).ravel()


def gene_values(adata, gene: str, *, log_adata=None) -> np.ndarray:
    """Values of ``gene`` per row on the log1p(counts per 1e4) scale.

    Predictions are already on that scale; raw counts are normalised with the core's
    :func:`napari_histosge.io.preprocess.normalize_log1p` (pass ``log_adata`` to reuse a
    normalised copy).
    """
    if gene not in adata.var_names:
        raise KeyError(f"gene {gene!r} is not in the data")
    if is_prediction(adata):
        return _column(adata, gene)
    if log_adata is None:
        log_adata = normalize_log1p(adata)
    return _column(log_adata, gene)


def layer_values(adata, gene: str, values_layer: str | None = None, *, log_adata=None) -> np.ndarray:
    """Values of ``gene`` per row.

    These are :func:`gene_values`, or ``adata.layers[values_layer]`` (e.g. ``"std"``, the
    spread of a prediction) when ``values_layer`` is given.
    """
    if values_layer is None:
        return gene_values(adata, gene, log_adata=log_adata)
    return _column(adata, gene, values_layer)


# ----------------------------------------------------------------------------- rasters
def nn_spacing(xy: np.ndarray) -> float:
    """Median distance to the nearest other position (the lattice pitch)."""
    if len(xy) < 2:
        return 1.0
    dist, _ = cKDTree(xy).query(xy, k=2)
    spacing = float(np.median(dist[:, 1]))
    return spacing if spacing > 0 else 1.0


@dataclass(frozen=True)
class Raster:
    """A heatmap raster on the full-res grid.

    ``image[i, j]`` is centred at full-res ``(y0 + i * cell, x0 + j * cell)``; NaN where no
    position is near. ``mpp`` (micrometres per pixel) puts it in the micrometre world frame.
    """

    image: np.ndarray
    cell: float
    origin_rc: tuple[float, float]
    index: np.ndarray  # raster cell -> row of the source positions (-1 = empty)
    mpp: float | None = None
    #: 3 x 3 map from raster ``(row, col, 1)`` to full-res ``(y, x, 1)`` when the grid is not axis-aligned.
    affine: np.ndarray | None = None
    #: ``(filled cells, positions)``: each filled cell's value as a weighted mean of the positions'
    #: (filled cells in row-major order); ``None``: the value of the position ``index`` names.
    weights: sp.csr_matrix | None = None

    @property
    def transform(self) -> dict[str, Any]:
        """The napari ``scale`` and ``translate`` (or ``affine``, and ``units``) that place the raster in the world."""
        u = self.mpp or 1.0
        if self.affine is not None:
            world = np.array(self.affine, dtype=np.float64)
            world[:2] *= u
            return {"affine": world, **world_frame(self.mpp)}
        return {"scale": (self.cell * u, self.cell * u),
                "translate": (self.origin_rc[0] * u, self.origin_rc[1] * u), **world_frame(self.mpp)}

    def to_full_res(self) -> np.ndarray:
        """The 3 x 3 map from raster ``(row, col, 1)`` to full-res ``(y, x, 1)``."""
        if self.affine is not None:
            return np.array(self.affine, dtype=np.float64)
        return np.array([[self.cell, 0.0, self.origin_rc[0]], [0.0, self.cell, self.origin_rc[1]], [0.0, 0.0, 1.0]])

    def with_values(self, values: np.ndarray) -> np.ndarray:
        """The raster filled with other per-position ``values`` (same positions)."""
        if self.weights is None:  # one gather: index -1 reads the NaN past the values (no mask of the raster)
            return np.append(np.asarray(values, dtype=np.float32), np.float32(np.nan))[self.index]
        out = np.full(self.index.shape, np.nan, dtype=np.float32)
        out[self.index >= 0] = np.asarray(self.weights @ np.asarray(values, dtype=np.float64), dtype=np.float32)
        return out


def rasterize(xy: np.ndarray, values: np.ndarray, *, cells_per_spacing: int = 4,
              reach: float = 0.75, mpp: float | None = None) -> Raster:
    """Paint per-position ``values`` into a regular raster (nearest position per cell).

    Parameters
    ----------
    xy
        ``(n, 2)`` positions ``(x, y)`` in full-res pixels.
    values
        ``(n,)`` values per position.
    cells_per_spacing
        Raster cells per lattice pitch (the pitch is measured from ``xy``).
    reach
        Cells farther than ``reach`` pitches from every position stay empty (NaN).
    mpp
        Micrometres per full-res pixel, for the world frame of :attr:`Raster.transform`.
    """
    xy = np.asarray(xy, dtype=np.float64)
    spacing = nn_spacing(xy)
    cell = spacing / cells_per_spacing
    pad = spacing * reach
    x0, y0 = xy.min(axis=0) - pad
    x1, y1 = xy.max(axis=0) + pad
    n_cols = max(1, int(np.ceil((x1 - x0) / cell)) + 1)
    n_rows = max(1, int(np.ceil((y1 - y0) / cell)) + 1)
    rr, cc = np.mgrid[0:n_rows, 0:n_cols]
    centres = np.column_stack([x0 + cc.ravel() * cell, y0 + rr.ravel() * cell])
    dist, nearest = cKDTree(xy).query(centres, k=1)
    index = np.where(dist <= spacing * reach, nearest, -1).reshape(n_rows, n_cols)
    raster = Raster(image=np.empty(0), cell=cell, origin_rc=(float(y0), float(x0)), index=index, mpp=mpp)
    return Raster(image=raster.with_values(values), cell=cell, origin_rc=raster.origin_rc, index=index, mpp=mpp)


#: Raster cells per spacing of a lattice map's positions: fine enough that the map reads as continuous.
SMOOTH_CELLS_PER_SPACING = 8


def smooth_raster(xy: np.ndarray, *, tissue=None, reach: float = 0.75, mpp: float | None = None,
                  cells_per_spacing: int = SMOOTH_CELLS_PER_SPACING) -> Raster:
    """A raster that interpolates per-position values linearly between the positions, on tissue only.

    Each cell takes the barycentric mean of the three positions of the Delaunay triangle
    around its centre (the nearest position outside their hull), so the map changes
    gradually instead of in squares of one position each. Cells farther than ``reach``
    pitches from every position, and with ``tissue`` (a
    :class:`~napari_histosge.slide.mask.TissueMask`) cells whose centre is on glass, stay
    empty (NaN).
    """
    from scipy.spatial import Delaunay

    xy = np.asarray(xy, dtype=np.float64)
    geometry = rasterize(xy, np.zeros(len(xy)), cells_per_spacing=cells_per_spacing, reach=reach, mpp=mpp)
    index = geometry.index.copy()
    rows, cols = np.nonzero(index >= 0)
    centres = np.column_stack([geometry.origin_rc[1] + cols * geometry.cell,
                               geometry.origin_rc[0] + rows * geometry.cell])
    if tissue is not None:
        glass = ~tissue.contains(centres)
        index[rows[glass], cols[glass]] = -1
        rows, cols, centres = rows[~glass], cols[~glass], centres[~glass]
    n = len(centres)
    corners, share = index[rows, cols][:, None], np.ones((n, 1))
    if len(xy) >= 3 and np.linalg.matrix_rank(xy - xy.mean(axis=0)) == 2:
        triangles = Delaunay(xy)
        simplex = triangles.find_simplex(centres)
        inside = simplex >= 0
        transform = triangles.transform[simplex[inside]]
        bary = np.einsum("nij,nj->ni", transform[:, :2], centres[inside] - transform[:, 2])
        corners = np.repeat(corners, 3, axis=1)
        share = np.column_stack([share, np.zeros((n, 2))])
        corners[inside] = triangles.simplices[simplex[inside]]
        share[inside] = np.column_stack([bary, 1.0 - bary.sum(axis=1)])
    weights = sp.csr_matrix((share.ravel(), (np.repeat(np.arange(n), share.shape[1]), corners.ravel())),
                            shape=(n, len(xy)))
    weights.eliminate_zeros()
    return Raster(image=np.empty(0), cell=geometry.cell, origin_rc=geometry.origin_rc, index=index, mpp=mpp,
                  weights=weights)


def lattice_raster(adata) -> Raster:
    """The smooth raster of a lattice prediction (:func:`smooth_raster`), inside the tissue mask it records."""
    info = adata.uns.get(META_KEY, {}) or {}
    tissue = None
    if isinstance(info, dict) and isinstance(info.get("tissue_mask"), dict):
        tissue = TissueMask.from_uns(info["tissue_mask"])
    return smooth_raster(np.asarray(adata.obsm["spatial"]), tissue=tissue, mpp=um_per_px(adata))


def grid_info(adata) -> dict[str, Any] | None:
    """``uns["histosge"]["grid"]`` of a grid-cell AnnData (the sub-spot model's output), else ``None``."""
    info = adata.uns.get(META_KEY, {}) or {}
    grid = info.get("grid") if isinstance(info, dict) else None
    return grid if isinstance(grid, dict) else None


def grid_raster(adata) -> Raster:
    """The raster of a grid-cell AnnData: cell ``(grid_row, grid_col)`` at its own raster pixel.

    Raises
    ------
    InputError
        When the grid description or the cell indices do not fit together.
    """
    grid, source = grid_info(adata), (adata.uns.get(META_KEY, {}) or {}).get("source")
    try:
        n_rows, n_cols = (int(n) for n in grid["shape"])  # type: ignore[index]
        cell = float(grid["cell_px"])  # type: ignore[index]
        x0, y0 = (float(v) for v in grid["origin_xy"])  # type: ignore[index]
        rows = np.asarray(adata.obs["grid_row"], dtype=np.int64)
        cols = np.asarray(adata.obs["grid_col"], dtype=np.int64)
    except (TypeError, KeyError, ValueError) as exc:
        raise InputError(f"the grid cells are not described fully (uns['histosge']['grid'] needs shape, "
                         f"cell_px and origin_xy; obs needs grid_row and grid_col): {exc}", source) from exc
    if not (cell > 0 and n_rows > 0 and n_cols > 0):
        raise InputError(f"the grid has cell_px {cell} and shape {(n_rows, n_cols)}; both must be positive", source)
    if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= n_rows or cols.max() >= n_cols):
        raise InputError(f"grid cell indices fall outside the grid's shape {(n_rows, n_cols)}", source)
    index = np.full((n_rows, n_cols), -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    raster = Raster(image=np.empty(0), cell=cell, origin_rc=(y0, x0), index=index, mpp=um_per_px(adata))
    return raster


#: Label rasters with ids up to this are indexed through a lookup table of int32 (at most 64 MiB);
#: larger ids (tile-and-object numbers) through a sorted search, slower but without the table.
MAX_LOOKUP_LABEL = 2**24
#: A cell map shows at most this many pixels: a finer label raster is shown at every k-th pixel
#: (each gene switch repaints every pixel, so its cost follows this size).
MAX_CELL_RASTER_PIXELS = 2**25


def cells_raster(adata, labels: Any, px_per_label_px: float, *, max_pixels: int = MAX_CELL_RASTER_PIXELS) -> Raster:
    """The raster of a segmented-cell AnnData: each pixel of its label raster shows its cell's row.

    ``labels`` is the segmentation's raster (0 = background), ``px_per_label_px`` full-resolution
    pixels per label pixel; a cell left out of ``adata`` (far from every spot) stays empty (NaN).
    A raster of more than ``max_pixels`` is read at every k-th pixel along each axis.
    """
    h, w = labels.shape[-2:]
    k = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    raster = np.asarray(labels[::k, ::k])
    ids = np.asarray(adata.obs["label"], dtype=np.int64)
    top = int(max(int(ids.max(initial=0)), int(raster.max(initial=0))))
    if top <= MAX_LOOKUP_LABEL and raster.min(initial=0) >= 0:
        lookup = np.full(top + 1, -1, dtype=np.int32)
        lookup[ids] = np.arange(len(ids), dtype=np.int32)
        lookup[0] = -1
        index = lookup[raster]
    else:  # huge ids (tile-and-object numbers): a sorted search, no table of every id
        order = np.argsort(ids)
        pos = np.clip(np.searchsorted(ids[order], raster), 0, max(len(ids) - 1, 0))
        hit = (ids[order][pos] == raster) & (raster != 0) if len(ids) else np.zeros(raster.shape, bool)
        index = np.where(hit, order[pos], -1).astype(np.int32)
    f = float(px_per_label_px)
    centre = 0.5 * f - 0.5  # label pixel (0, 0) centred here in full-resolution pixels
    return Raster(image=np.empty(0), cell=f * k, origin_rc=(centre, centre), index=index, mpp=um_per_px(adata))


#: Raster cells per lattice pitch when spots are painted as discs (a disc is then several cells across).
DISC_CELLS_PER_SPACING = 32
#: Raster cells per median cell radius when segmented cells are painted as discs of their own area.
DISC_CELLS_PER_RADIUS = 3


def discs_raster(xy: np.ndarray, values: np.ndarray, radii: np.ndarray, *, mpp: float | None = None,
                 max_pixels: int = MAX_CELL_RASTER_PIXELS) -> Raster:
    """Each position painted as a disc of its own radius (full-res px), nearest position per raster cell.

    The raster cell is a fraction of the median radius, coarser when the raster would hold more
    than ``max_pixels`` cells; cells outside every disc stay empty (NaN).
    """
    xy, radii = np.asarray(xy, dtype=np.float64), np.asarray(radii, dtype=np.float64)
    pad = float(radii.max(initial=1.0))
    (x0, y0), (x1, y1) = xy.min(axis=0) - pad, xy.max(axis=0) + pad
    cell = max(float(np.median(radii)) / DISC_CELLS_PER_RADIUS, float(np.sqrt((x1 - x0) * (y1 - y0) / max_pixels)))
    n_cols, n_rows = max(1, int(np.ceil((x1 - x0) / cell)) + 1), max(1, int(np.ceil((y1 - y0) / cell)) + 1)
    rr, cc = np.mgrid[0:n_rows, 0:n_cols]
    dist, nearest = cKDTree(xy).query(np.column_stack([x0 + cc.ravel() * cell, y0 + rr.ravel() * cell]), k=1)
    index = np.where(dist <= radii[nearest], nearest, -1).reshape(n_rows, n_cols)
    raster = Raster(image=np.empty(0), cell=cell, origin_rc=(float(y0), float(x0)), index=index, mpp=mpp)
    return Raster(image=raster.with_values(values), cell=cell, origin_rc=raster.origin_rc, index=index, mpp=mpp)


def shown_as_spots(adata) -> bool:
    """Whether ``adata``'s positions are spots (measured, or predicted at fold 1), not a denser lattice or grid.

    Such positions are painted as discs of the spot's size, as the plugin's points show
    them: a fold-1 file often holds a scattered subset (the hidden spots of ``histosge
    recover``), and a map filled between its positions would paint values nobody predicted.
    Visium HD bins tile the tissue and stay a filled map.
    """
    info = adata.uns.get(META_KEY, {}) or {}
    if grid_info(adata) is not None or (isinstance(info, dict) and "bins" in info):
        return False
    return not is_prediction(adata) or int(info.get("fold", 1)) <= 1


def map_raster(adata, values: np.ndarray) -> Raster:
    """The raster showing per-row ``values`` of ``adata``.

    A grid's own raster; segmented cells as discs of their own area (:func:`discs_raster`);
    spots (:func:`shown_as_spots`) as discs of the recorded spot
    diameter (half the pitch when none is recorded); Visium HD bins by :func:`rasterize`; a
    denser lattice as a smooth raster inside its tissue (:func:`lattice_raster`).
    """
    if grid_info(adata) is not None:
        raster = grid_raster(adata)
        return Raster(image=raster.with_values(values), cell=raster.cell, origin_rc=raster.origin_rc,
                      index=raster.index, mpp=raster.mpp)
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if is_cells(adata) and "area_px" in adata.obs:  # segmented cells: discs of their own area, not of a spot
        radii = np.sqrt(adata.obs["area_px"].to_numpy(np.float64) / np.pi)
        return discs_raster(xy, values, radii, mpp=um_per_px(adata))
    if shown_as_spots(adata):
        spacing = nn_spacing(xy)
        info = adata.uns.get(META_KEY, {}) or {}
        diameter = float(info.get("spot_diameter_px") or 0) or spacing / 2
        return rasterize(xy, values, cells_per_spacing=DISC_CELLS_PER_SPACING, reach=0.5 * diameter / spacing,
                         mpp=um_per_px(adata))
    if "bins" in (adata.uns.get(META_KEY, {}) or {}):
        return rasterize(xy, values, mpp=um_per_px(adata))
    raster = lattice_raster(adata)
    return Raster(image=raster.with_values(values), cell=raster.cell, origin_rc=raster.origin_rc,
                  index=raster.index, mpp=raster.mpp, weights=raster.weights)
