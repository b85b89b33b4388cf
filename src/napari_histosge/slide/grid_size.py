"""The smallest grid cell a map can have, in µm: one rule for the command line, the widgets and the library.

Kept free of numpy and scipy: the command line checks ``--grid-um`` with it before anything heavy loads.
"""

from __future__ import annotations

import math

from ..errors import InputError

#: The smallest grid cell, in µm: two image pixels (a cell narrower than that has no texture to read,
#: :data:`~napari_histosge.slide.cell_grid.MIN_CELL_IMAGE_PX`) at the finest full-resolution scans in
#: use, 0.25 µm per pixel (40x). A slide's own pixel size can ask for more; that is checked when it is read.
MIN_GRID_UM = 0.5


def check_grid_um(value: float | None, name: str = "the grid cell size") -> None:
    """``value`` (µm) is a finite size of at least :data:`MIN_GRID_UM`; ``None`` (not given) passes.

    Raises
    ------
    InputError
        One line naming ``name`` (e.g. ``--grid-um``) and the value.
    """
    if value is None:
        return
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number of µm, got {value!r}")
    if value < MIN_GRID_UM:
        raise InputError(f"{name} must be at least {MIN_GRID_UM:g} µm (two pixels of the finest scans), "
                         f"got {value:g}")
