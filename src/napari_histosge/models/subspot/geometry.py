"""The sub-spot model's geometry: the cell size on a slide, and the footprints a section's measurements cover."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...slide.cell_grid import MIN_CELL_IMAGE_PX, CellGrid, Footprints

#: ``obsm`` key of footprint centres where they differ from the positions (a bin's square).
FOOTPRINT_KEY = "footprint_xy"
#: Default side of a grid cell: about two cells of tissue, a seventh of an ST v1 spot.
DEFAULT_CELL_UM = 14.0
#: Without a pixel size the default cell is this fraction of the spot diameter.
DEFAULT_CELL_PER_SPOT = 1 / 7


def cell_px_for(cell_um: float | None, mpp: float | None, scale: float, spot_diameter_px: float | None = None,
                ) -> float:
    """The side of a grid cell in full-resolution pixels.

    Parameters
    ----------
    cell_um
        The side asked for, µm; ``None``: :data:`DEFAULT_CELL_UM`, raised to
        :data:`~napari_histosge.slide.cell_grid.MIN_CELL_IMAGE_PX` image pixels on a coarse image.
    mpp
        µm per full-resolution pixel, or ``None`` (unknown: the default is then a fraction
        of the spot diameter, and a size in µm cannot be honoured).
    scale
        Image pixels per full-resolution pixel of the image features are read from.
    spot_diameter_px
        The spots' diameter, full-res px (for the default without ``mpp``).

    Raises
    ------
    InputError
        If an asked-for cell is narrower than two image pixels, or a size in µm is asked
        for while the pixel size is unknown.
    """
    least = MIN_CELL_IMAGE_PX / float(scale)
    if cell_um is None:
        if mpp is not None:
            return max(DEFAULT_CELL_UM / float(mpp), least)
        if spot_diameter_px is None or not np.isfinite(spot_diameter_px):
            raise InputError("neither the pixel size nor the spot diameter is known, so no cell size can be "
                             "chosen: give the cell size in µm and the pixel size of the slide")
        return max(float(spot_diameter_px) * DEFAULT_CELL_PER_SPOT, least)
    if mpp is None:
        raise InputError(f"a grid of {cell_um:g} µm cells needs the slide's pixel size, which is unknown here")
    cell_px = float(cell_um) / float(mpp)
    if cell_px < least:
        raise InputError(f"a grid cell of {cell_um:g} µm is {cell_px * scale:.2f} image pixels wide, under the "
                         f"minimum of {MIN_CELL_IMAGE_PX:g}: choose at least {least * float(mpp):.3g} µm")
    return cell_px


def footprints_of(adata) -> Footprints:
    """The areas ``adata``'s measurements cover: ``uns["histosge"]["footprint"]`` squares, else the spots' discs.

    The centres are ``obsm["footprint_xy"]`` where given (a bin's square is not centred on
    the mean of its spots), else the positions.
    """
    info = adata.uns.get("histosge", {})
    xy = np.asarray(adata.obsm[FOOTPRINT_KEY] if FOOTPRINT_KEY in adata.obsm else adata.obsm["spatial"], np.float64)
    described = info.get("footprint")
    if described:
        try:
            return Footprints(xy, str(described["shape"]), float(described["size_px"]),
                              float(described.get("angle", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed footprint description {described!r}: {exc}", info.get("source")) from exc
    diameter = info.get("spot_diameter_px")
    if diameter is None or not np.isfinite(float(diameter)) or float(diameter) <= 0:
        raise InputError("the spot diameter is unknown, so the area each spot covers is unknown",
                         info.get("source"))
    return Footprints(xy, "disc", float(diameter))


def footprint_cells(footprints: Footprints, cell_px: float):
    """The grid cells under the footprints (kept) and their ``(n_footprints, n_cells)`` weights."""
    reach = footprints.size_px * (np.sqrt(2.0) if footprints.shape == "square" else 1.0) / 2
    grid = CellGrid.covering(footprints.centres.min(axis=0) - reach, footprints.centres.max(axis=0) + reach, cell_px)
    weights = footprints.cell_weights(grid.centres())
    under = np.asarray((weights != 0).sum(axis=0)).ravel() > 0
    return grid.keep(under), weights[:, np.flatnonzero(under)].tocsr()
