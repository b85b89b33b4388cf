"""The slide a segmentation belongs to: a slide file, or a section's full-resolution H&E.

The detector and the readers work in the full-resolution pixels of a section (the frame of
``obsm["spatial"]``). A bare slide file is its own full resolution; a section (Space Ranger,
ST v1, ``.h5ad``, SpatialData) names its largest image and that image's scale in
``uns["histosge"]``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io import read_spots
from ..io.detect import is_ome_zarr_image
from ..slide.open import is_slide_image, open_slide

__all__ = ["SlideSource", "slide_source"]


@dataclass(frozen=True)
class SlideSource:
    """Where a section's H&E is and how it sits on the full-resolution grid.

    Attributes
    ----------
    image
        The image file (or OME-Zarr folder) to read.
    scale
        Image level-0 pixels per full-resolution pixel.
    mpp
        Micrometres per full-resolution pixel, or ``None`` when unknown.
    shape
        ``(height, width)`` of the full-resolution grid.
    """

    image: str
    scale: float
    mpp: float | None
    shape: tuple[int, int]


def slide_source(path: str | os.PathLike, *, mpp: float | None = None, bin_um: int | None = None) -> SlideSource:
    """The slide of ``path``: a slide file itself, or the largest image of a section.

    Parameters
    ----------
    path
        A slide (SVS, TIFF, JPEG, PNG, OME-Zarr image) or a section any reader of
        :func:`napari_histosge.io.read_spots` reads.
    mpp
        Micrometres per full-resolution pixel, replacing the one the file records.
    bin_um
        Visium HD: which bins to read the section with.

    Raises
    ------
    InputError
        If the path cannot be read, the section has no image, or ``mpp`` is not positive.
    """
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InputError(f"the pixel size must be a positive number of µm, got {mpp}")
    p = Path(path).expanduser()
    if is_slide_image(p) or (p.is_dir() and is_ome_zarr_image(p)):
        with open_slide(p) as slide:
            return SlideSource(str(p), 1.0, mpp or slide.mpp, slide.shape)
    info = read_spots(p, bin_um=bin_um).uns["histosge"]
    name = info.get("image")
    if not name:
        raise InputError("the section has no H&E image to find cells in", p)
    entry = info["images"][name]
    with open_slide(entry["path"]) as slide:
        height, width = slide.shape
    scale = float(entry["scale"])
    shape = (int(round(height / scale)), int(round(width / scale)))
    return SlideSource(str(entry["path"]), scale, mpp or info.get("mpp"), shape)
