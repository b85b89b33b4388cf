"""Cheap format detection: file and folder names only, never the counts."""

from __future__ import annotations

import os
from pathlib import Path

from .spaceranger import looks_like_spaceranger
from .spatialdata_io import looks_like_spatialdata
from .st_v1 import looks_like_st_v1
from .visium_hd import looks_like_visium_hd

FORMATS = ("spaceranger", "visium_hd", "st_v1", "h5ad", "spatialdata")


def detect_format(path: str | os.PathLike) -> str | None:
    """Guess the format of a spots input from names only.

    napari calls this on every drop, so it lists at most one folder and reads
    no file contents.

    Parameters
    ----------
    path
        A folder or file.

    Returns
    -------
    str or None
        ``"spaceranger"``, ``"visium_hd"``, ``"st_v1"``, ``"h5ad"``, ``"spatialdata"`` (a zarr
        store), or ``None`` when unsupported (or missing).
    """
    try:
        path = Path(path)
        if path.is_file():
            return "h5ad" if path.suffix.lower() == ".h5ad" else None
        if path.is_dir():
            if looks_like_spatialdata(path):
                return "spatialdata"
            # before Space Ranger: an HD output's own spatial/ looks like a Visium folder
            if looks_like_visium_hd(path):
                return "visium_hd"
            if looks_like_spaceranger(path):
                return "spaceranger"
            if looks_like_st_v1(path):
                return "st_v1"
    except OSError:  # unreadable folder, broken link: not ours
        return None
    return None
