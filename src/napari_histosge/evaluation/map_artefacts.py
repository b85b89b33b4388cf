"""Artefacts of expression maps that no score at the spots sees: stamped spots and paint on glass.

:func:`disc_contrast_ratio` asks whether a grid map shows its measured spots as discs: the
map's contrast across the measured spots' edges (a ring just inside each spot against a ring
just outside) over the same contrast across circles of the same size between the spots. A
smooth map has the same small contrast across any circle (1: no disc); a map that rescales
each spot's cells to its measurement has a step at every spot's edge. :func:`glass_fraction`
is the share of a map's painted pixels whose centre the tissue mask calls glass.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import Voronoi, cKDTree

from ..errors import InputError

#: Genes the contrast is averaged over: the map's highest-mean genes.
CONTRAST_GENES = 50


def ring_contrast(cell_xy: np.ndarray, values: np.ndarray, centres: np.ndarray, radius: float,
                  width: float) -> np.ndarray:
    """``(k, G)`` ``|mean inside - mean outside|`` of ``values`` in rings of ``width`` either side of circles.

    Circles whose inner or outer ring holds no cell are left out (``k`` may be less than
    the number of ``centres``).
    """
    tree = cKDTree(cell_xy)
    out = []
    for centre, near in zip(centres, tree.query_ball_point(centres, radius + width), strict=True):
        near = np.asarray(near, np.int64)
        dist = np.linalg.norm(cell_xy[near] - centre, axis=1)
        inner, outer = near[dist >= radius - width][dist[dist >= radius - width] < radius], near[dist >= radius]
        if len(inner) and len(outer):
            out.append(np.abs(values[inner].mean(axis=0) - values[outer].mean(axis=0)))
    return np.asarray(out, np.float64).reshape(-1, values.shape[1])


def between_spots(spot_xy: np.ndarray, radius: float, width: float) -> np.ndarray:
    """Centres of circles of ``radius`` between the spots: Voronoi vertices whose outer ring touches no spot."""
    if len(spot_xy) < 4:
        raise InputError(f"{len(spot_xy)} spots are too few to place circles between them")
    vertices = Voronoi(spot_xy).vertices
    lo, hi = spot_xy.min(axis=0), spot_xy.max(axis=0)
    vertices = vertices[np.all((vertices >= lo) & (vertices <= hi), axis=1)]
    dist, _ = cKDTree(spot_xy).query(vertices)
    return vertices[dist >= 2 * radius + width]


def disc_contrast_ratio(grid, spot_xy: np.ndarray, diameter_px: float, *, genes: int = CONTRAST_GENES,
                        ) -> dict[str, float]:
    """How strongly a grid map stamps its measured spots: edge contrast at the spots over that between them.

    Parameters
    ----------
    grid
        A grid-cell AnnData (:func:`napari_histosge.superresolve_grid`): X log1p values,
        ``obsm["spatial"]`` cell centres, ``uns["histosge"]["grid"]["cell_px"]``.
    spot_xy
        ``(n, 2)`` the measured spots' centres, full-res px.
    diameter_px
        The spots' diameter.
    genes
        The contrast is averaged over this many highest-mean genes of the map.

    Returns
    -------
    dict
        ``ratio`` (1: no disc), ``at_spots`` and ``between_spots`` (mean contrasts) and the
        numbers of circles each was measured on.

    Raises
    ------
    InputError
        When no circle between the spots, or no measured spot, has cells on both sides of its edge.
    """
    values = np.asarray(grid.X.toarray() if hasattr(grid.X, "toarray") else grid.X, np.float64)
    values = values[:, np.argsort(values.mean(axis=0))[::-1][:genes]]
    cell_xy = np.asarray(grid.obsm["spatial"], np.float64)
    radius, width = diameter_px / 2, 1.5 * float(grid.uns["histosge"]["grid"]["cell_px"])
    spot_xy = np.asarray(spot_xy, np.float64)
    at_spots = ring_contrast(cell_xy, values, spot_xy, radius, width)
    between = ring_contrast(cell_xy, values, between_spots(spot_xy, radius, width), radius, width)
    if len(at_spots) == 0 or len(between) == 0:
        raise InputError("the map has no cells on both sides of a spot's edge (or of a circle between spots)")
    edge, control = float(at_spots.mean()), float(between.mean())
    return {"ratio": edge / max(control, 1e-12), "at_spots": edge, "between_spots": control,
            "spot_circles": len(at_spots), "between_circles": len(between)}


def glass_fraction(raster, tissue) -> float:
    """Share of ``raster``'s painted cells (:class:`~napari_histosge.export.raster.Raster`) whose centre is glass."""
    rows, cols = np.nonzero(raster.index >= 0)
    if len(rows) == 0:
        return 0.0
    yx = np.column_stack([rows, cols, np.ones(len(rows))]) @ raster.to_full_res().T
    return float(1.0 - tissue.contains(yx[:, [1, 0]]).mean())
