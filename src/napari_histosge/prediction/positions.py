"""Positions to predict at, read from a CSV file (``id,x,y`` in full-resolution image pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from ..errors import InputError

#: The columns a positions CSV must have.
POSITION_COLUMNS = ("id", "x", "y")


@dataclass(frozen=True)
class Positions:
    """Named positions: ``ids`` (unique, in file order) and ``xy`` ``(n, 2)`` full-res ``(x, y)``."""

    ids: list[str]
    xy: np.ndarray


def read_positions_csv(path: str | PathLike) -> Positions:
    """Read and check a positions CSV with columns ``id``, ``x``, ``y``.

    Parameters
    ----------
    path
        Comma-separated file with a header row; extra columns are ignored. ``x`` and ``y``
        are full-resolution image pixels of the section predicted on.

    Returns
    -------
    Positions
        The ids as strings, in file order, and the ``(n, 2)`` float64 positions.

    Raises
    ------
    InputError
        A missing or unreadable file, a missing column, no rows, an empty or repeated id,
        or a coordinate that is not a finite number.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError("positions file not found", path)
    try:
        table = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the positions CSV: {str(exc).strip()}", path) from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"the positions CSV needs columns id,x,y; missing {','.join(missing)} "
                         f"(found {','.join(table.columns) or 'none'})", path)
    if table.empty:
        raise InputError("the positions CSV has no rows", path)
    ids = table["id"].astype(str).str.strip()
    if (ids == "").any():
        raise InputError(f"empty id in row {int(np.flatnonzero(ids == '')[0]) + 1} of the positions CSV", path)
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise InputError(f"ids must be unique; {repeated.iloc[0]!r} appears more than once", path)
    xy = np.column_stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in ("x", "y")])
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"x and y must be finite numbers; row {row + 1} (id {ids.iloc[row]!r}) has "
                         f"x={table['x'].iloc[row]!r}, y={table['y'].iloc[row]!r}", path)
    return Positions(ids=list(ids), xy=xy)
