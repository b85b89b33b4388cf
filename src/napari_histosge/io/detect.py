"""Cheap format detection: file and folder names only, never the counts."""

from __future__ import annotations

import os
from pathlib import Path

from .spaceranger import looks_like_spaceranger
from .st_v1 import looks_like_st_v1

FORMATS = ("spaceranger", "st_v1", "h5ad")


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
        ``"spaceranger"``, ``"st_v1"``, ``"h5ad"``, or ``None`` when unsupported
        (or missing).
    """
    try:
        path = Path(path)
        if path.is_file():
            return "h5ad" if path.suffix.lower() == ".h5ad" else None
        if path.is_dir():
            if looks_like_spaceranger(path):
                return "spaceranger"
            if looks_like_st_v1(path):
                return "st_v1"
    except OSError:  # unreadable folder, broken link: not ours
        return None
    return None
