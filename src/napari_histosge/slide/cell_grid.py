"""A regular grid of square cells over a slide, and measured footprints (discs or squares) on it.

Everything is in full-resolution image pixels, ``(x, y)`` as ``obsm["spatial"]``. A grid
is the cell size, the centre of cell ``(row 0, col 0)`` and the number of rows and columns;
the cells kept (inside tissue) are a flat index into it. A footprint is the area one
measurement covers: a spot's disc, or a square bin (pooled spots, Visium HD). A cell
belongs to a footprint when its centre lies inside it, so the weights of a footprint's
cells are equal and sum to one (the footprint's value is the mean of its cells' rates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

#: The most cells one grid may have (a larger one would not fit a workstation's memory).
MAX_CELLS = 10_000_000
#: The smallest cell, in image pixels: a cell narrower than this has no texture to read.
MIN_CELL_IMAGE_PX = 2.0
FOOTPRINT_SHAPES = ("disc", "square")


@dataclass(frozen=True)
class CellGrid:
    """Square cells of side ``cell_px`` whose cell ``(0, 0)`` is centred at ``origin_xy``.

    Attributes
    ----------
    cell_px
        Side of a cell in full-resolution pixels.
    origin_xy
        ``(x, y)`` centre of the cell in row 0, column 0.
    shape
        ``(n_rows, n_cols)``.
    kept
        Flat indices (``row * n_cols + col``, increasing) of the cells in use, e.g. inside
        tissue; ``None`` keeps every cell.
    """

    cell_px: float
    origin_xy: tuple[float, float]
    shape: tuple[int, int]
    kept: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.cell_px) and self.cell_px > 0):
            raise InputError(f"a grid cell must be a positive size, got {self.cell_px!r} px")
        rows, cols = (int(v) for v in self.shape)
        if rows < 1 or cols < 1:
            raise InputError(f"a grid needs at least one row and column, got {rows} x {cols}")
        if rows * cols > MAX_CELLS:
            raise InputError(f"a grid of {rows} x {cols} = {rows * cols:,} cells is over the limit of "
                             f"{MAX_CELLS:,}; choose larger cells")
        object.__setattr__(self, "shape", (rows, cols))
        object.__setattr__(self, "origin_xy", (float(self.origin_xy[0]), float(self.origin_xy[1])))
        if self.kept is not None:
            kept = np.unique(np.asarray(self.kept, np.int64))
            if len(kept) and (kept[0] < 0 or kept[-1] >= rows * cols):
                raise InputError("kept cells must be flat indices into the grid")
            object.__setattr__(self, "kept", kept)

    @classmethod
    def covering(cls, lo_xy, hi_xy, cell_px: float) -> CellGrid:
        """The grid of ``cell_px`` cells whose cells cover the box ``lo_xy .. hi_xy`` (full-res px)."""
        lo, hi = np.asarray(lo_xy, np.float64), np.asarray(hi_xy, np.float64)
        if not (np.isfinite(cell_px) and cell_px > 0):
            raise InputError(f"a grid cell must be a positive size, got {cell_px!r} px")
        n = np.maximum(np.ceil((hi - lo) / cell_px), 1).astype(np.int64)  # (cols, rows)
        if float(n[0]) * float(n[1]) > MAX_CELLS:
            raise InputError(f"a grid of {int(n[1])} x {int(n[0])} = {int(n[0]) * int(n[1]):,} cells of "
                             f"{cell_px:.3g} px is over the limit of {MAX_CELLS:,}; choose larger cells")
        return cls(float(cell_px), (lo[0] + cell_px / 2, lo[1] + cell_px / 2), (int(n[1]), int(n[0])))

    @property
    def n_cells(self) -> int:
        """Number of cells in use."""
        return self.shape[0] * self.shape[1] if self.kept is None else len(self.kept)

    @property
    def flat_index(self) -> np.ndarray:
        """Flat indices of the cells in use, in order."""
        return np.arange(self.shape[0] * self.shape[1]) if self.kept is None else self.kept

    def rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every cell in use."""
        return np.divmod(self.flat_index, self.shape[1])

    def centres(self) -> np.ndarray:
        """``(n_cells, 2)`` float64 ``(x, y)`` centres of the cells in use."""
        rows, cols = self.rows_cols()
        return np.stack([self.origin_xy[0] + cols * self.cell_px, self.origin_xy[1] + rows * self.cell_px], 1)

    def keep(self, inside: np.ndarray) -> CellGrid:
        """The grid with only the cells in use where ``inside`` (one bool per cell in use) holds."""
        inside = np.asarray(inside, bool)
        if inside.shape != (self.n_cells,):
            raise ValueError(f"need one flag per cell ({self.n_cells}), got {inside.shape}")
        return CellGrid(self.cell_px, self.origin_xy, self.shape, self.flat_index[inside])

    def to_dict(self) -> dict[str, Any]:
        """Plain description for ``uns`` (without the kept cells, which the rows of the table give)."""
        return {"cell_px": float(self.cell_px), "origin_xy": list(self.origin_xy), "shape": list(self.shape)}


@dataclass(frozen=True)
class Footprints:
    """The areas measurements cover: discs (spots) or squares (bins), one per measurement.

    Attributes
    ----------
    centres
        ``(n, 2)`` full-res ``(x, y)`` centres.
    shape
        ``"disc"`` or ``"square"``.
    size_px
        Disc diameter or square side, full-res px.
    angle
        Rotation of the squares (radians, counter-clockwise from the x axis); 0 for discs.
    """

    centres: np.ndarray
    shape: str
    size_px: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        centres = np.asarray(self.centres, np.float64)
        if centres.ndim != 2 or centres.shape[1] != 2 or not np.all(np.isfinite(centres)):
            raise InputError(f"footprint centres must be finite (n, 2) positions, got shape {centres.shape}")
        if self.shape not in FOOTPRINT_SHAPES:
            raise InputError(f"unknown footprint shape {self.shape!r}; choose one of {', '.join(FOOTPRINT_SHAPES)}")
        if not (np.isfinite(self.size_px) and self.size_px > 0):
            raise InputError(f"a footprint must have a positive size, got {self.size_px!r} px")
        object.__setattr__(self, "centres", centres)
        object.__setattr__(self, "size_px", float(self.size_px))
        object.__setattr__(self, "angle", float(self.angle))

    def __len__(self) -> int:
        return len(self.centres)

    def cell_weights(self, cell_xy: np.ndarray, *, nearest_if_empty: bool = True) -> sp.csr_matrix:
        """``(n_footprints, n_cells)`` weights: ``1 / k`` for the ``k`` cells whose centre lies in each.

        With ``nearest_if_empty``, a footprint with no cell centre inside (smaller than a
        cell) takes the one cell nearest to its centre, so every footprint has a value;
        otherwise its row stays empty.
        """
        from scipy.spatial import cKDTree

        cells = np.asarray(cell_xy, np.float64)
        if len(cells) == 0:
            raise InputError("no grid cells to aggregate over")
        tree = cKDTree(cells)
        # A square's corner is size * sqrt(2) / 2 from its centre.
        reach = self.size_px / 2 * (np.sqrt(2.0) if self.shape == "square" else 1.0)
        lists = tree.query_ball_point(self.centres, reach + 1e-9)
        rows = np.repeat(np.arange(len(self)), [len(v) for v in lists])
        cols = np.fromiter((c for v in lists for c in v), np.int64, count=len(rows))
        if self.shape == "square" and len(rows):
            rot = np.array([[np.cos(self.angle), np.sin(self.angle)], [-np.sin(self.angle), np.cos(self.angle)]])
            local = (cells[cols] - self.centres[rows]) @ rot.T
            inside = np.all(np.abs(local) <= self.size_px / 2 + 1e-9, axis=1)
            rows, cols = rows[inside], cols[inside]
        empty = np.setdiff1d(np.arange(len(self)), rows)
        if len(empty) and nearest_if_empty:
            _, nearest = tree.query(self.centres[empty])
            rows, cols = np.r_[rows, empty], np.r_[cols, nearest]
        weights = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(self), len(cells)))
        per_row = np.asarray(weights.sum(axis=1)).ravel()
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(per_row, 1.0)) @ weights)

    def to_dict(self) -> dict[str, Any]:
        """Plain description (without the centres) for ``uns`` and checkpoints."""
        return {"shape": self.shape, "size_px": self.size_px, "angle": self.angle}
