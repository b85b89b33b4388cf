"""Tissue masks: where the H&E shows tissue rather than bare glass, detected or read from a file.

A mask is a boolean raster over the slide, coarser than the full resolution: mask pixel
``(row, col)`` covers full-resolution pixels ``[col * f, (col + 1) * f) x [row * f, (row + 1) * f)``
with ``f = px_per_mask_px``, so positions in the project's convention (full-resolution
``(x, y)``) map onto it by one division.

:func:`detect_tissue` thresholds the colour saturation of a low pyramid level (Otsu's
threshold: glass is grey or white, stained tissue is coloured), adds faint tissue that is
darker than the glass and textured, then closes small gaps, drops specks and grey
artefacts and fills small holes (:func:`tissue_from_rgb`). :func:`read_mask` reads a user's mask instead: a
label or binary image (nonzero = tissue) or GeoJSON polygons in full-resolution pixels,
as QuPath exports them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from .open import Slide, open_slide

__all__ = [
    "MAX_MASK_SIDE", "TissueMask", "cells_inside", "check_covers_spots", "detect_tissue", "geojson_polygons",
    "read_geojson", "read_mask",
    "tissue_from_rgb",
]

#: Longest side of a detected or rasterised mask, in mask pixels.
MAX_MASK_SIDE = 2048
#: Saturation below which a pixel is never tissue, whatever Otsu's threshold says.
MIN_TISSUE_SATURATION = 0.05
#: When the pixels below Otsu's threshold are on average more saturated than this, the image
#: holds no glass (a crop inside the tissue) and Otsu only splits pale from dark tissue.
MAX_GLASS_SATURATION = 0.15
#: Faint tissue is darker than the glass's grey level by this factor ...
DARKER_THAN_GLASS = 0.9
#: ... and has a local grey-level standard deviation above this (0-255 scale).
MIN_TEXTURE = 5.0
#: A tissue component needs at least this share of coloured pixels.
MIN_COLOURED_SHARE = 0.05
#: Spots under the mask below this share mean the mask and the spots do not belong together.
MIN_SPOTS_INSIDE = 0.5
#: Suffixes :func:`read_mask` reads as GeoJSON.
GEOJSON_SUFFIXES = (".geojson", ".json")


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue raster and how it sits on the slide.

    Attributes
    ----------
    mask
        ``(h, w)`` bool, True on tissue.
    px_per_mask_px
        Full-resolution pixels per mask pixel (along both axes).
    source
        Where it came from: the image it was detected on, or the user's mask file.
    """

    mask: np.ndarray
    px_per_mask_px: float
    source: str

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask, dtype=bool)
        if mask.ndim != 2 or 0 in mask.shape:
            raise InputError(f"a tissue mask must be a non-empty 2-D array, got shape {mask.shape}", self.source)
        if not (math.isfinite(self.px_per_mask_px) and self.px_per_mask_px > 0):
            raise InputError(f"pixels per mask pixel must be positive, got {self.px_per_mask_px}", self.source)
        object.__setattr__(self, "mask", mask)

    @property
    def tissue_fraction(self) -> float:
        """Share of the mask's area that is tissue."""
        return float(self.mask.mean())

    def _indices(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mask (row, col) of full-res ``(x, y)`` positions, and which fall on the mask at all."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        col = np.floor(xy[:, 0] / self.px_per_mask_px)
        row = np.floor(xy[:, 1] / self.px_per_mask_px)
        h, w = self.mask.shape
        on = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        return np.where(on, row, 0).astype(np.intp), np.where(on, col, 0).astype(np.intp), on

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: which full-resolution ``(x, y)`` positions lie on tissue (off the mask: False)."""
        row, col, on = self._indices(xy)
        return on & self.mask[row, col]

    def fraction_inside(self, xy: np.ndarray) -> float:
        """Share of the positions ``xy`` that lie on tissue (0.0 for no positions)."""
        inside = self.contains(xy)
        return float(inside.mean()) if inside.size else 0.0

    def to_uns(self) -> dict[str, Any]:
        """The mask as plain values for ``AnnData.uns`` (read back by :meth:`from_uns`)."""
        return {"mask": self.mask.astype(np.uint8), "px_per_mask_px": float(self.px_per_mask_px),
                "source": self.source}

    @classmethod
    def from_uns(cls, value: dict[str, Any]) -> TissueMask:
        """A mask stored by :meth:`to_uns` (also after an ``.h5ad`` round trip)."""
        try:
            return cls(np.asarray(value["mask"]) != 0, float(value["px_per_mask_px"]), str(value["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the stored tissue mask is incomplete or damaged ({exc})") from exc


# --------------------------------------------------------------------------- detection


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] after a one-pixel blur (JPEG noise and single odd pixels)."""
    img = ndi.gaussian_filter(np.asarray(rgb, dtype=np.float32)[..., :3], sigma=(1.0, 1.0, 0))
    high, low = img.max(axis=-1), img.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)


def _drop_small(mask: np.ndarray, max_area: int) -> np.ndarray:
    """``mask`` without its 8-connected components of at most ``max_area`` pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    area = np.bincount(labels.ravel())
    keep = area > max_area
    keep[0] = False
    return keep[labels]


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing with a Euclidean disk, by distance transforms (fast for big disks).

    The image border counts as open, so tissue at the edge is not eroded.
    """
    pad = int(math.ceil(radius)) + 1
    padded = np.pad(mask, pad)
    grown = ndi.distance_transform_edt(~padded) <= radius
    closed = ndi.distance_transform_edt(grown) > radius
    return closed[pad:-pad, pad:-pad]


def _touches_colour(mask: np.ndarray, coloured: np.ndarray) -> np.ndarray:
    """The components of ``mask`` at least :data:`MIN_COLOURED_SHARE` coloured.

    A grey component (a bubble, dust, a pen ring) is no tissue.
    """
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    area = np.bincount(labels.ravel(), minlength=n + 1)
    share = np.bincount(labels.ravel(), weights=coloured.ravel(), minlength=n + 1) / np.maximum(area, 1)
    keep = share >= MIN_COLOURED_SHARE
    keep[0] = False
    return keep[labels]


def _grey_texture(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blurred grey level and its local standard deviation (5 x 5 window), both 0-255."""
    grey = ndi.gaussian_filter(np.asarray(rgb, dtype=np.float32)[..., :3].mean(axis=-1), 1.0)
    mean = ndi.uniform_filter(grey, 5)
    return grey, np.sqrt(np.maximum(ndi.uniform_filter(grey * grey, 5) - mean * mean, 0))


def tissue_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Tissue pixels of a low-resolution RGB image of a slide.

    A pixel is tissue when it is coloured (saturation above Otsu's threshold: stain against
    grey or white glass), or when it is darker than the glass and textured (faintly stained
    tissue; a smooth pink haze of eosin on the glass is neither). Specks are dropped, a
    closing by about 1% of the image bridges the membranes of fat and the gaps of pale
    tissue, fragments under 0.16% of the image and grey ones (bubbles, dust, pen rings:
    under 5% coloured) go, and enclosed holes under 4% of the image are filled. Sizes are
    relative to the image, so the result does not depend on its resolution.

    Parameters
    ----------
    rgb
        ``(h, w, 3)`` image, uint8 or float in [0, 255].

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` bool.
    """
    from skimage.filters import threshold_otsu

    saturation = _saturation(rgb)
    long_side = max(saturation.shape)
    if saturation.min() == saturation.max():
        return np.zeros(saturation.shape, bool)
    otsu = float(threshold_otsu(saturation))
    if float(saturation[saturation <= otsu].mean()) > MAX_GLASS_SATURATION:
        coloured = saturation > MIN_TISSUE_SATURATION  # no glass in the picture: all of it is tissue
    else:
        coloured = saturation > max(otsu, MIN_TISSUE_SATURATION)
    grey, texture = _grey_texture(rgb)
    glass_grey = float(np.median(grey[~coloured])) if (~coloured).any() else 255.0
    faint = (grey < DARKER_THAN_GLASS * glass_grey) & (texture > MIN_TEXTURE)
    tissue = _drop_small(coloured | faint, (long_side // 100) ** 2)
    tissue = _close(tissue, max(1.0, long_side / 100))
    tissue = _drop_small(tissue, (long_side // 25) ** 2) & _touches_colour(tissue, coloured)
    holes = ndi.binary_fill_holes(tissue) & ~tissue
    return tissue | (holes & ~_drop_small(holes, (long_side // 5) ** 2))


def low_resolution_rgb(slide: Slide, max_side: int) -> tuple[np.ndarray, float]:
    """The finest level no longer than ``max_side`` (block-averaged when none is).

    Returns the RGB array and its level-0 pixels per pixel.
    """
    import dask.array as da

    fitting = [i for i, lv in enumerate(slide.levels) if max(lv.shape[:2]) <= max_side]
    index = fitting[0] if fitting else len(slide.levels) - 1
    level = slide.levels[index]
    step = max(1, math.ceil(max(level.shape[:2]) / max_side))
    if step > 1:
        h, w = (level.shape[0] // step) * step, (level.shape[1] // step) * step
        level = da.coarsen(np.mean, level[:h, :w].rechunk((step * 256, step * 256, 3)), {0: step, 1: step})
    return np.asarray(level.compute()), slide.downsamples[index] * step


def detect_tissue(image: str | os.PathLike | Slide, *, scale: float = 1.0,
                  max_side: int = MAX_MASK_SIDE) -> TissueMask:
    """Detect the tissue of a slide on one of its low-resolution levels.

    Parameters
    ----------
    image
        A slide file (anything :func:`~napari_histosge.slide.open.open_slide` opens) or an
        open :class:`~napari_histosge.slide.open.Slide`.
    scale
        The image's level-0 pixels per full-resolution pixel (1.0 for the full-resolution
        H&E; e.g. a Visium lowres image's scale factor).
    max_side
        Longest side of the mask in pixels.

    Returns
    -------
    TissueMask

    Raises
    ------
    InputError
        If the image cannot be read, ``scale`` or ``max_side`` is not positive, or no tissue
        is found.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"the image scale must be positive, got {scale}",
                         image.path if isinstance(image, Slide) else image)
    if int(max_side) < 16:
        raise InputError(f"the mask must be at least 16 pixels long, got {max_side}")
    slide = image if isinstance(image, Slide) else open_slide(image)
    try:
        rgb, downsample = low_resolution_rgb(slide, int(max_side))
    finally:
        if slide is not image:
            slide.close()
    tissue = tissue_from_rgb(rgb)
    if not tissue.any():
        raise InputError("no tissue found in the image (it looks like bare glass); "
                         "pass a tissue mask file instead", slide.path)
    return TissueMask(tissue, downsample / scale, slide.path)


# --------------------------------------------------------------------------- user masks


def _check_size(image_size_xy: tuple[float, float], path: Path) -> tuple[float, float]:
    width, height = (float(v) for v in image_size_xy)
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise InputError(f"the slide size must be positive, got {image_size_xy}", path)
    return width, height


def _read_label_image(path: Path) -> np.ndarray:
    """A 2-D label image (nonzero = tissue) from a PNG, JPEG or TIFF."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                data = np.asarray(im.convert("L") if im.mode in ("P", "RGB", "RGBA", "LA") else im)
    except Exception as exc:  # PIL and tifffile raise many types for bad files
        raise InputError(f"cannot read the mask image (corrupt or not an image?): {exc}", path) from exc
    data = np.squeeze(data)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = data[..., :3].max(axis=-1)
    if data.ndim != 2 or 0 in data.shape:
        raise InputError(f"a mask image must be one 2-D plane, got shape {data.shape}", path)
    return data != 0


def _image_mask(path: Path, width: float, height: float) -> TissueMask:
    mask = _read_label_image(path)
    h, w = mask.shape
    fx, fy = width / w, height / h
    # one mask pixel of rounding either way is fine; more means another picture
    if abs(w * fy - width) > fy + 1e-9 or abs(h * fx - height) > fx + 1e-9:
        raise InputError(f"the mask's aspect ratio ({w} x {h} px) does not match the slide's "
                         f"({width:g} x {height:g} px)", path)
    return TissueMask(mask, (fx + fy) / 2, str(path))


def geojson_polygons(node: Any) -> list[list]:
    """Every polygon (a list of rings: exterior first, then holes) in a parsed GeoJSON value."""
    if isinstance(node, list):
        return [p for item in node for p in geojson_polygons(item)]
    if not isinstance(node, dict):
        return []
    kind = node.get("type")
    if kind == "FeatureCollection":
        return geojson_polygons(node.get("features") or [])
    if kind == "Feature":
        return geojson_polygons(node.get("geometry"))
    if kind == "GeometryCollection":
        return geojson_polygons(node.get("geometries") or [])
    if kind == "Polygon":
        return [node.get("coordinates") or []]
    if kind == "MultiPolygon":
        coordinates = node.get("coordinates") or []
        # malformed coordinates go to the caller as one polygon, which refuses it as Polygon's are
        return list(coordinates) if isinstance(coordinates, list) else [coordinates]
    return []


def ring_points(ring: Any, path: Path) -> np.ndarray:
    """A GeoJSON ring as ``(n, 2)`` float ``(x, y)`` points, refused in one line unless 3 or more finite ones."""
    try:
        xy = np.asarray(ring, dtype=np.float64)[:, :2]
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"a polygon ring is not a list of (x, y) points: {exc}", path) from exc
    if len(xy) < 3 or not np.all(np.isfinite(xy)):
        raise InputError(f"a polygon ring needs at least 3 finite points, got {len(xy)}", path)
    return xy


def _ring(ring: Any, factor: float, path: Path) -> tuple[np.ndarray, np.ndarray]:
    xy = ring_points(ring, path)
    return xy[:, 1] / factor - 0.5, xy[:, 0] / factor - 0.5  # rows, cols of pixel centres


def read_geojson(path: str | os.PathLike) -> list[list]:
    """Every polygon of a GeoJSON file (QuPath style: full-resolution pixel coordinates).

    Returns a list of polygons, each a list of rings (exterior first, then holes) as GeoJSON
    gives them. Features, collections and multi-polygons are flattened; points and lines,
    which have no area, are skipped.

    Raises
    ------
    InputError
        When the file cannot be read as JSON or holds no polygon.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the GeoJSON file: {exc}", path) from exc
    polygons = [p for p in geojson_polygons(data) if p]
    if not polygons:
        raise InputError("the GeoJSON holds no Polygon or MultiPolygon geometry", path)
    return polygons


def _geojson_mask(path: Path, width: float, height: float, max_side: int) -> TissueMask:
    from skimage.draw import polygon as fill_polygon

    polygons = read_geojson(path)
    factor = max(width, height) / max_side if max(width, height) > max_side else 1.0
    shape = (max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor)))
    mask = np.zeros(shape, bool)
    for rings in polygons:
        filled = np.zeros(shape, bool)
        for i, ring in enumerate(rings):
            rows, cols = fill_polygon(*_ring(ring, factor, path), shape=shape)
            filled[rows, cols] = i == 0  # the exterior, then its holes
        mask |= filled
    return TissueMask(mask, factor, str(path))


def read_mask(path: str | os.PathLike, image_size_xy: tuple[float, float], *,
              max_side: int = MAX_MASK_SIDE) -> TissueMask:
    """Read a user's tissue mask for a slide of ``image_size_xy`` full-resolution pixels.

    Parameters
    ----------
    path
        A label or binary image (PNG, JPEG, TIFF; nonzero = tissue; any resolution, scaled
        onto the slide by the size ratio) or a GeoJSON file (``.geojson``/``.json``:
        Polygon and MultiPolygon geometries, bare, in Features, a FeatureCollection or a
        list of Features, in full-resolution pixels as QuPath exports them; holes honoured).
    image_size_xy
        ``(width, height)`` of the slide in full-resolution pixels.
    max_side
        Longest side of the raster a GeoJSON file is drawn on.

    Returns
    -------
    TissueMask

    Raises
    ------
    InputError
        If the file is missing or unreadable, an image mask's aspect ratio differs from the
        slide's, a GeoJSON file holds no polygon, or the mask holds no tissue.
    """
    p = Path(path).expanduser()
    width, height = _check_size(image_size_xy, p)
    if not p.is_file():
        raise InputError("mask file not found", p)
    if p.suffix.lower() in GEOJSON_SUFFIXES:
        mask = _geojson_mask(p, width, height, int(max_side))
    else:
        mask = _image_mask(p, width, height)
    if not mask.mask.any():
        raise InputError("the mask holds no tissue (every pixel is zero or no polygon lies on the slide)", p)
    return mask


# --------------------------------------------------------------------------- using a mask


def check_covers_spots(mask: TissueMask, spot_xy: np.ndarray, *,
                       min_fraction: float = MIN_SPOTS_INSIDE) -> float:
    """The share of measured spots on the mask; refuse a mask that misses most of them.

    Parameters
    ----------
    mask
        The tissue mask.
    spot_xy
        ``(n, 2)`` spot centres in full-resolution ``(x, y)`` pixels.
    min_fraction
        The least share of spots that must lie on tissue.

    Returns
    -------
    float
        The share of spots on tissue.

    Raises
    ------
    InputError
        If there are no spots, or fewer than ``min_fraction`` of them lie on the mask
        (a mask of another slide, or at another scale).
    """
    inside = mask.contains(spot_xy)
    if inside.size == 0:
        raise InputError("there are no spots to check the tissue mask against", mask.source)
    share = float(inside.mean())
    if share < min_fraction:
        raise InputError(
            f"only {int(inside.sum())} of {inside.size} spots ({share:.0%}) lie on the tissue mask, fewer than "
            f"{min_fraction:.0%}: is it the mask of this slide, at this slide's size?", mask.source)
    return share


def cells_inside(mask: TissueMask, centres_xy: np.ndarray, cell_px: float) -> np.ndarray:
    """Which square grid cells are tissue: at least half of the cell's area on the mask.

    The area is exact for the piecewise-constant mask: the summed-area table of the mask,
    interpolated bilinearly (exact, since its integral is bilinear within each mask pixel),
    is read at the four corners of each cell. Vectorised: a million cells take one pass.

    Parameters
    ----------
    mask
        The tissue mask.
    centres_xy
        ``(n, 2)`` cell centres in full-resolution ``(x, y)`` pixels.
    cell_px
        Cell edge in full-resolution pixels.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` bool.

    Raises
    ------
    InputError
        If ``cell_px`` is not positive or a centre is not finite.
    """
    if not (math.isfinite(cell_px) and cell_px > 0):
        raise InputError(f"the cell size must be positive, got {cell_px} px", mask.source)
    centres = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(centres)):
        raise InputError("cell centres must be finite numbers", mask.source)
    h, w = mask.mask.shape
    table = np.zeros((h + 1, w + 1), np.float64)
    table[1:, 1:] = mask.mask.cumsum(0).cumsum(1)
    half = cell_px / 2 / mask.px_per_mask_px
    x = centres[:, 0] / mask.px_per_mask_px
    y = centres[:, 1] / mask.px_per_mask_px

    def integral(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        xs, ys = np.clip(xs, 0, w), np.clip(ys, 0, h)
        x0 = np.minimum(np.floor(xs).astype(np.intp), w - 1)
        y0 = np.minimum(np.floor(ys).astype(np.intp), h - 1)
        dx, dy = xs - x0, ys - y0
        return (table[y0, x0] * (1 - dx) * (1 - dy) + table[y0, x0 + 1] * dx * (1 - dy)
                + table[y0 + 1, x0] * (1 - dx) * dy + table[y0 + 1, x0 + 1] * dx * dy)

    area = (integral(x + half, y + half) - integral(x - half, y + half)
            - integral(x + half, y - half) + integral(x - half, y - half))
    return area >= 0.5 * (2 * half) ** 2 * (1 - 1e-9)
