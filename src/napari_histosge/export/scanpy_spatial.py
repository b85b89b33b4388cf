"""The scanpy and squidpy view of an output: ``uns["spatial"][library_id]`` with the slide and its scale.

``sc.pl.spatial`` and squidpy's ``sq.pl.spatial_scatter`` read Space Ranger's convention, as
``sc.read_visium`` writes it: ``uns["spatial"][library_id]`` holds ``images`` (``hires`` and
``lowres``: uint8 RGB copies of the slide, downsampled), ``scalefactors``
(``tissue_hires_scalef`` and ``tissue_lowres_scalef``: image pixels per full-resolution
pixel; ``spot_diameter_fullres``: the spot, or the grid cell's side, in full-resolution
pixels) and ``metadata``. ``obsm["spatial"]`` stays in full-resolution pixels, so both
libraries place every point on its image by the scale factor alone.

The images are read from a coarse pyramid level of the slide, never from the whole
full-resolution image. Without a readable slide only the scale factors are written: both
libraries then plot the points without an image, at the right size.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import spot_image
from ..slide.open import is_ome_zarr_image, open_slide

#: Longest side of the ``hires`` image in pixels (Space Ranger's hires image is 2,000 px).
HIRES_MAX_PX = 2000
#: Longest side of the ``lowres`` image in pixels (Space Ranger's lowres image is 600 px).
LOWRES_MAX_PX = 600
#: ``library_id`` of an output that records none.
DEFAULT_LIBRARY = "histosge"


def spot_diameter_fullres(info: dict[str, Any]) -> float | None:
    """What one row of an output covers, in full-resolution px: a grid cell's side, else the spot's diameter."""
    grid = info.get("grid")
    value = grid.get("cell_px") if isinstance(grid, dict) else info.get("spot_diameter_px")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def library_id(adata) -> str:
    """The section's name: ``uns["histosge"]["library_id"]``, else :data:`DEFAULT_LIBRARY`."""
    return str((adata.uns.get("histosge", {}) or {}).get("library_id") or DEFAULT_LIBRARY)


def read_downsampled(path: str | Path, scale: float, max_px: int) -> tuple[np.ndarray, float]:
    """The slide at ``path`` resampled so that its longest side is at most ``max_px`` pixels.

    Parameters
    ----------
    path
        The slide image (anything :func:`~napari_histosge.slide.open.open_slide` opens).
    scale
        The slide's pixels per full-resolution pixel (``1.0`` for the full-resolution image).
    max_px
        Longest side of the result; a smaller slide is kept at its own size (never enlarged).

    Returns
    -------
    image : numpy.ndarray
        ``(rows, cols, 3)`` uint8 RGB.
    scalefactor : float
        The image's pixels per full-resolution pixel.
    """
    with open_slide(path) as slide:
        height, width = slide.shape
        shrink = min(1.0, max_px / max(height, width))  # result px per slide px
        rows, cols = max(1, round(height * shrink)), max(1, round(width * shrink))
        level = slide.best_level(max(height, width), max(rows, cols))  # the coarsest level still as large
        level_rows, level_cols = slide.display_levels[level].shape[:2]
        region = slide.read_region(0, 0, level_cols, level_rows, level=level)
    image = region if (level_rows, level_cols) == (rows, cols) else np.asarray(
        Image.fromarray(region[..., :3]).resize((cols, rows), Image.Resampling.LANCZOS))
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8), float(scale) * cols / width


def _shrink(image: np.ndarray, max_px: int) -> np.ndarray:
    """``image`` resampled so that its longest side is at most ``max_px`` (never enlarged)."""
    rows, cols = image.shape[:2]
    shrink = min(1.0, max_px / max(rows, cols))
    size = max(1, round(cols * shrink)), max(1, round(rows * shrink))
    return image if size == (cols, rows) else np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _slide_of(adata) -> tuple[Path, float] | None:
    """The slide an output records, with its scale, if it is on disk."""
    recorded = spot_image(adata)
    if recorded is None or not recorded[0]:
        return None
    path = Path(recorded[0])
    return (path, recorded[1]) if path.is_file() or is_ome_zarr_image(path) else None


def scanpy_spatial(adata) -> dict[str, Any]:
    """``uns["spatial"]`` of an output in scanpy's convention: ``{library_id: {images, scalefactors, metadata}}``.

    Parameters
    ----------
    adata
        An output (predictions at spots, a lattice, a grid map) with ``uns["histosge"]``:
        its recorded slide, ``spot_diameter_px`` or ``grid["cell_px"]``, ``library_id``.

    Returns
    -------
    dict
        ``images`` ``hires`` (at most :data:`HIRES_MAX_PX` px) and ``lowres`` (at most
        :data:`LOWRES_MAX_PX` px) with their ``tissue_*_scalef``, when the slide can be read;
        ``spot_diameter_fullres`` when the output records it.
    """
    info = adata.uns.get("histosge", {}) or {}
    scalefactors: dict[str, float] = {}
    diameter = spot_diameter_fullres(info)
    if diameter is not None:
        scalefactors["spot_diameter_fullres"] = diameter
    images: dict[str, np.ndarray] = {}
    slide = _slide_of(adata)
    if slide is not None:
        try:
            hires, hires_scalef = read_downsampled(slide[0], slide[1], HIRES_MAX_PX)
        except (InputError, OSError, ValueError, MemoryError) as exc:
            # an unreadable slide must not lose the prediction: points without the H&E
            warnings.warn(f"the slide is not copied into uns['spatial'] ({exc})", stacklevel=2)
        else:
            lowres = _shrink(hires, LOWRES_MAX_PX)
            images = {"hires": hires, "lowres": lowres}
            scalefactors["tissue_hires_scalef"] = hires_scalef
            scalefactors["tissue_lowres_scalef"] = hires_scalef * lowres.shape[1] / hires.shape[1]
    metadata = {"source_image_path": str(slide[0]) if slide is not None else "", "software": "napari-histosge"}
    return {library_id(adata): {"images": images, "scalefactors": scalefactors, "metadata": metadata}}


def add_scanpy_spatial(adata):
    """Set ``adata.uns["spatial"]`` to :func:`scanpy_spatial` (in place); returns ``adata``."""
    adata.uns["spatial"] = scanpy_spatial(adata)
    return adata


def ensure_scanpy_spatial(adata):
    """Add :func:`scanpy_spatial` to predictions that lack it (files written before outputs carried it).

    Returns ``adata``. Measured spots (no ``fold`` or ``grid`` in ``uns["histosge"]``) keep their own
    ``uns["spatial"]`` as their reader made it, and so do predictions whose library has images.
    """
    info = adata.uns.get("histosge", {}) or {}
    if "fold" not in info and "grid" not in info:
        return adata
    library = (adata.uns.get("spatial") or {}).get(library_id(adata))
    if not isinstance(library, dict) or not len(library.get("images") or {}):
        add_scanpy_spatial(adata)
    return adata


def refresh_spot_diameter(adata) -> None:
    """Re-derive ``spot_diameter_fullres`` after ``uns["histosge"]`` changed what one row covers (a grid)."""
    for library in (adata.uns.get("spatial") or {}).values():
        diameter = spot_diameter_fullres(adata.uns.get("histosge", {}) or {})
        if diameter is not None and isinstance(library, dict):
            library.setdefault("scalefactors", {})["spot_diameter_fullres"] = diameter
