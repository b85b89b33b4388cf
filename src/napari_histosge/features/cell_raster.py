"""Image features of every cell of a grid: stain, edge and texture filters of the H&E, averaged per cell.

The slide is read at the pyramid level nearest to a few pixels per cell, block by block
with a margin, so a gigapixel slide never has to be decoded whole. Each block is
separated into haematoxylin, eosin and residual optical densities (scikit-image's
``rgb2hed``), filtered at scales from a quarter of a cell to several cells (the tissue
at and around each cell, ``skimage.feature.multiscale_basic_features``), and each
filter is averaged over the pixels whose centre falls in a cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..progress import CancelToken, Progress, ProgressGenerator
from ..slide.cell_grid import CellGrid
from ..slide.open import open_slide

#: Filter scales in cells: from inside a cell to its neighbourhood.
SIGMAS_IN_CELLS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Image pixels per cell the slide is read at (fewer where the image is coarser).
PIXELS_PER_CELL = 4
#: Cells per block side: a block is read, filtered and averaged at once.
BLOCK_CELLS = 96
#: Names the features are known by (stored with a model, checked when it predicts).
IDENTITY = "cell_raster:hed-multiscale-v1"


def n_cell_features(sigmas: Sequence[float] = SIGMAS_IN_CELLS) -> int:
    """Features per cell: 3 stain channels x (intensity, edges, 2 texture) x scales."""
    return 3 * 4 * len(sigmas)


def cell_features(path: str, scale: float, grid: CellGrid, *, sigmas: Sequence[float] = SIGMAS_IN_CELLS,
                  cancel: CancelToken | None = None) -> ProgressGenerator[np.ndarray]:
    """Features of every cell of ``grid`` in use, ``(grid.n_cells, n_cell_features())`` float32.

    Parameters
    ----------
    path, scale
        The slide and its level-0 pixels per full-resolution pixel.
    grid
        Cells in full-resolution pixels.
    sigmas
        Filter scales, in cells.
    cancel
        Checked between blocks.

    Yields
    ------
    Progress
        ``stage="cell features"``, one step per block of cells.
    """
    slide = open_slide(path)
    level, level_px = _level_for(slide, scale, grid.cell_px)
    rows, cols = grid.rows_cols()
    out = np.zeros((grid.n_cells, n_cell_features(sigmas)), np.float32)
    block_of = (rows // BLOCK_CELLS) * (grid.shape[1] // BLOCK_CELLS + 1) + cols // BLOCK_CELLS
    blocks = np.unique(block_of)
    yield Progress("cell features", 0, len(blocks), f"{grid.n_cells:,} cells in {len(blocks)} blocks")
    for done, block in enumerate(blocks, 1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        members = np.flatnonzero(block_of == block)
        out[members] = _block_features(slide, level, level_px, grid, rows[members], cols[members], sigmas)
        yield Progress("cell features", done, len(blocks))
    return out


def _level_for(slide, scale: float, cell_px: float) -> tuple[int, float]:
    """The coarsest level with at least :data:`PIXELS_PER_CELL` pixels per cell, and its full-res px per pixel."""
    full_res_per_px = np.asarray(slide.downsamples, np.float64) / float(scale)
    fine_enough = np.flatnonzero(full_res_per_px <= cell_px / PIXELS_PER_CELL * 1.0001)
    level = int(fine_enough.max()) if len(fine_enough) else 0
    return level, float(full_res_per_px[level])


def _block_features(slide, level: int, level_px: float, grid: CellGrid, rows: np.ndarray, cols: np.ndarray,
                    sigmas: Sequence[float]) -> np.ndarray:
    """Mean filter responses of the cells ``(rows, cols)`` of one block."""
    from skimage.color import rgb2hed
    from skimage.feature import multiscale_basic_features

    cells_per_px = level_px / grid.cell_px
    sigma_px = [max(0.5, s / cells_per_px) for s in sigmas]
    margin = int(np.ceil(3 * max(sigma_px)))
    half = grid.cell_px / 2
    # Block bounds in level pixels (full-res / level_px), with a margin for the filters.
    x_lo = (grid.origin_xy[0] + cols.min() * grid.cell_px - half) / level_px
    y_lo = (grid.origin_xy[1] + rows.min() * grid.cell_px - half) / level_px
    x_hi = (grid.origin_xy[0] + cols.max() * grid.cell_px + half) / level_px
    y_hi = (grid.origin_xy[1] + rows.max() * grid.cell_px + half) / level_px
    x0, y0 = int(np.floor(x_lo)) - margin, int(np.floor(y_lo)) - margin
    width, height = int(np.ceil(x_hi)) + margin - x0, int(np.ceil(y_hi)) + margin - y0
    rgb = slide.read_region(x0, y0, width, height, level=level).astype(np.float32) / 255.0
    stains = rgb2hed(np.clip(rgb, 1e-3, 1.0)).astype(np.float32)
    filtered = multiscale_basic_features(stains, channel_axis=-1, intensity=True, edges=True, texture=True,
                                         sigma_min=min(sigma_px), sigma_max=max(sigma_px),
                                         num_sigma=len(sigma_px)).astype(np.float32)
    # Which cell each pixel centre falls in (full-res px -> grid row/col).
    px_x = (x0 + np.arange(width) + 0.5) * level_px
    px_y = (y0 + np.arange(height) + 0.5) * level_px
    col_of = np.floor((px_x - grid.origin_xy[0]) / grid.cell_px + 0.5).astype(np.int64)
    row_of = np.floor((px_y - grid.origin_xy[1]) / grid.cell_px + 0.5).astype(np.int64)
    r0, c0 = rows.min(), cols.min()
    n_r, n_c = rows.max() - r0 + 1, cols.max() - c0 + 1
    local = (row_of[:, None] - r0) * n_c + (col_of[None, :] - c0)
    inside = ((row_of[:, None] >= r0) & (row_of[:, None] < r0 + n_r)
              & (col_of[None, :] >= c0) & (col_of[None, :] < c0 + n_c))
    index = local[inside]
    count = np.bincount(index, minlength=n_r * n_c).astype(np.float64)
    values = filtered[inside]
    sums = np.stack([np.bincount(index, weights=values[:, k], minlength=n_r * n_c)
                     for k in range(values.shape[1])], axis=1)
    wanted = (rows - r0) * n_c + (cols - c0)
    means = sums[wanted] / np.maximum(count[wanted], 1.0)[:, None]
    # A cell narrower than one pixel holds no pixel centre: take the pixel under its centre.
    empty = count[wanted] == 0
    if np.any(empty):
        cx = (grid.origin_xy[0] + cols[empty] * grid.cell_px) / level_px - x0
        cy = (grid.origin_xy[1] + rows[empty] * grid.cell_px) / level_px - y0
        means[empty] = filtered[np.clip(cy.astype(int), 0, height - 1), np.clip(cx.astype(int), 0, width - 1)]
    return means.astype(np.float32)
