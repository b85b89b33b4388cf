"""A built-in nucleus detector: haematoxylin, blob seeds and a watershed, tile by tile.

For users without a segmentation of their own (StarDist or Cellpose labels are better, see
the user guide). The slide is read tile by tile from the pyramid level closest to the
working pixel size, so a gigapixel slide streams with bounded memory:

1. haematoxylin by colour deconvolution (:func:`skimage.color.rgb2hed`), lightly smoothed;
2. nuclear pixels: haematoxylin above one threshold for the whole slide (a share of Otsu's,
   on tiles sampled over the tissue), so tiles agree with each other;
3. seeds: maxima of the negative Laplacian of Gaussian at the nucleus radius, most of a
   nucleus diameter apart (this splits touching nuclei, and keeps a large one whole);
4. a watershed of the haematoxylin from the seeds inside the nuclear pixels; objects below the
   least area are dropped, and the rest may be grown by a few µm (cells rather than nuclei).

Every size is given in micrometres and converted at the slide's pixel size. Tiles overlap by
a margin of two nuclei plus twice the growth (a grown cell and the neighbours it stops at lie
wholly in it); an object belongs to the tile whose core holds its centroid,
so a nucleus on a seam is found once. Tiles without tissue (:func:`detect_tissue`) are
skipped, and objects whose centroid lies off the tissue are dropped.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..progress import CancelToken, Progress, ProgressGenerator
from ..slide.mask import TissueMask, detect_tissue
from ..slide.open import Slide
from .nucleus_settings import MAX_TILE_PX, NucleusSettings, margin_um
from .segmentation import Segmentation, cell_table

__all__ = ["COARSEST_UM_PER_PX", "DETECTOR_VERSION", "NucleusSettings", "detect_nuclei", "haematoxylin",
           "raster_fits_in_memory", "segment_tile"]

#: Raised whenever a change to the detector changes the nuclei it finds for the same settings: caches of
#: detected nuclei (benchmarks/superres_pooled.py) key on it beside the settings.
DETECTOR_VERSION = 1
#: Pixel sizes coarser than this draw a nucleus over too few pixels to find it reliably.
COARSEST_UM_PER_PX = 2.0
#: A nucleus drawn over fewer pixels than this across is not found at all (a low-resolution image).
MIN_NUCLEUS_PX = 2.0
#: Tiles sampled over the tissue to choose the haematoxylin threshold.
THRESHOLD_SAMPLE_TILES = 12
#: The nuclear threshold is this share of Otsu's threshold over the tissue: Otsu's alone splits
#: dark from pale nuclei where nuclei are dense, and misses the pale ones of the stroma.
OTSU_SHARE = 0.75
#: Seeds closer than this share of the nucleus diameter belong to one nucleus.
SEED_SPACING = 0.7


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density of an RGB uint8 tile (colour deconvolution), float32."""
    from skimage.color import rgb2hed

    return np.clip(rgb2hed(np.asarray(rgb, np.uint8)[..., :3])[..., 0], 0, None).astype(np.float32)


def segment_tile(h: np.ndarray, threshold: float, radius_px: float, min_area_px: float) -> np.ndarray:
    """Nuclei of one haematoxylin tile as a label image (0 background, 1..n), sizes in pixels."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(h, max(0.5, radius_px / 4))
    nuclear = smooth > threshold
    if not nuclear.any():
        return np.zeros(h.shape, np.int32)
    blob = -ndi.gaussian_laplace(h, max(0.7, radius_px / math.sqrt(2)))
    spacing = max(1, int(round(2 * radius_px * SEED_SPACING)))
    peaks = peak_local_max(blob, min_distance=spacing, labels=nuclear.astype(np.uint8),
                           exclude_border=False)
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-smooth, markers, mask=nuclear)
    areas = np.bincount(labels.ravel())
    small = areas < max(1.0, min_area_px)
    small[0] = False
    labels[small[labels]] = 0
    return labels


@dataclass(frozen=True)
class _Plan:
    level: int
    binning: int  # level pixels averaged into one working pixel (along each axis)
    level_px: float  # full-resolution pixels per working pixel
    um_per_px: float
    tile: int
    margin: int
    shape: tuple[int, int]  # working raster (height, width)


def _plan(slide: Slide, scale: float, mpp: float, settings: NucleusSettings) -> _Plan:
    """The level to read (the coarsest at least as fine as ``work_um``), its binning, tile and margin."""
    level_um = [mpp * ds / scale for ds in slide.downsamples]
    fine_enough = [i for i, um in enumerate(level_um) if um <= settings.work_um * 1.05]
    level = fine_enough[-1] if fine_enough else 0
    # a 40x scan's levels are often 0.25, 1 and 4 µm: bin level 0 to reach about work_um
    binning = max(1, int(settings.work_um * 1.05 / level_um[level]))
    um = level_um[level] * binning
    if settings.nucleus_um / um < MIN_NUCLEUS_PX:
        raise InputError(f"the slide's finest pixels ({um:.3g} µm) draw a {settings.nucleus_um:g} µm nucleus over "
                         f"{settings.nucleus_um / um:.1f} pixels: too coarse to find nuclei; use the full-resolution "
                         "H&E", slide.path)
    if um > COARSEST_UM_PER_PX:
        warnings.warn(f"{slide.path}: {um:.2g} µm per pixel draws a {settings.nucleus_um:g} µm nucleus over "
                      f"{settings.nucleus_um / um:.1f} pixels; nuclei are found poorly at pixels "
                      f"coarser than {COARSEST_UM_PER_PX:g} µm", UserWarning, stacklevel=3)
    margin = max(8, int(math.ceil(margin_um(settings) / um)))
    # a level finer than work_um (not binned) has more pixels per tile than check() allowed for
    tile = max(64, min(int(round(settings.tile_um / um)), MAX_TILE_PX - 2 * margin))
    h, w = slide.levels[level].shape[:2]
    shape = (math.ceil(h / binning), math.ceil(w / binning))
    return _Plan(level, binning, slide.downsamples[level] / scale * binning, um, tile, margin, shape)


def _tiles(plan: _Plan, mask: TissueMask | None) -> list[tuple[int, int]]:
    """Top-left corners (level px) of the tile cores that hold tissue."""
    h, w = plan.shape
    corners = [(r, c) for r in range(0, h, plan.tile) for c in range(0, w, plan.tile)]
    if mask is None:
        return corners
    keep = []
    for r, c in corners:
        f = plan.level_px / mask.px_per_mask_px
        r0, c0 = int(r * f), int(c * f)
        r1, c1 = int(math.ceil(min(r + plan.tile, h) * f)), int(math.ceil(min(c + plan.tile, w) * f))
        if mask.mask[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)].any():
            keep.append((r, c))
    return keep


def _read_h(slide: Slide, plan: _Plan, r: int, c: int) -> tuple[np.ndarray, int, int]:
    """Haematoxylin of a tile core with its margin, and the padded tile's top-left (level px)."""
    h, w = plan.shape
    r0, c0 = max(0, r - plan.margin), max(0, c - plan.margin)
    r1, c1 = min(h, r + plan.tile + plan.margin), min(w, c + plan.tile + plan.margin)
    k = plan.binning
    rgb = slide.read_region(c0 * k, r0 * k, (c1 - c0) * k, (r1 - r0) * k, level=plan.level)
    if k > 1:
        rgb = rgb.reshape(r1 - r0, k, c1 - c0, k, 3).mean(axis=(1, 3)).astype(np.uint8)
    return haematoxylin(rgb), r0, c0


def _threshold(slide: Slide, plan: _Plan, tiles: list[tuple[int, int]], radius_px: float) -> float:
    """The nuclear threshold: a share of Otsu's over smoothed haematoxylin of tiles sampled over the tissue."""
    from skimage.filters import threshold_otsu

    pick = np.unique(np.linspace(0, len(tiles) - 1, min(len(tiles), THRESHOLD_SAMPLE_TILES)).round().astype(int))
    values = []
    for i in pick:
        h, _, _ = _read_h(slide, plan, *tiles[i])
        smooth = ndi.gaussian_filter(h, max(0.5, radius_px / 4))
        values.append(smooth[:: 2, :: 2].ravel())
    sample = np.concatenate(values)
    return OTSU_SHARE * float(threshold_otsu(sample)) if np.ptp(sample) > 0 else float("inf")


#: A label raster held in memory may have at most this many pixels; larger ones go to a zarr store.
MAX_IN_MEMORY_PIXELS = 2**29


def raster_fits_in_memory(shape: tuple[int, int], mpp: float, settings: NucleusSettings) -> bool:
    """Whether the detector's label raster of a slide of full-res ``shape`` comfortably fits in memory.

    Larger ones should go to a zarr store (``labels_store``); the rule the command line and
    the widget share.
    """
    binned = max(1.0, settings.work_um / mpp)
    return shape[0] * shape[1] / binned**2 <= MAX_IN_MEMORY_PIXELS / 4


def _check_raster_size(shape: tuple[int, int], store: Any, source: str) -> None:
    """Refuse a label raster too large for memory when no store is given (before any work)."""
    if store is None and shape[0] * shape[1] > MAX_IN_MEMORY_PIXELS:
        raise InputError(f"the nuclei's label raster ({shape[1]} x {shape[0]} px) is too large to hold in "
                         "memory; write it to a folder (histosge nuclei --out)", source)


def _label_raster(shape: tuple[int, int], store: Any, tile: int) -> Any:
    """An all-zero int32 raster: in memory, or a zarr array at ``store`` chunked like the tiles."""
    if store is None:
        return np.zeros(shape, np.int32)
    import zarr

    chunk = min(tile, 2048)
    return zarr.open_array(str(store), mode="w", shape=shape, chunks=(chunk, chunk), dtype="int32", fill_value=0)


def _write_tile(out: Any, labels: np.ndarray, keep: np.ndarray, first_id: int, r0: int, c0: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write the kept objects of a padded tile where the raster is still 0; their new ids and stats.

    ``keep`` is a boolean per tile label id. Returns the new ids, pixel counts and the mean
    working-pixel ``(col, row)`` of what was written (pixels a neighbour tile took stay its own).
    """
    new_id = np.zeros(len(keep), np.int64)
    new_id[keep] = np.arange(first_id, first_id + int(keep.sum()))
    target = np.asarray(out[r0:r0 + labels.shape[0], c0:c0 + labels.shape[1]])
    written = (target == 0) & keep[labels]
    rows, cols = np.nonzero(written)
    ids = new_id[labels[rows, cols]]
    target[rows, cols] = ids
    out[r0:r0 + labels.shape[0], c0:c0 + labels.shape[1]] = target
    uniq, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    return (uniq, counts, np.bincount(inverse, weights=cols + c0) / np.maximum(counts, 1),
            np.bincount(inverse, weights=rows + r0) / np.maximum(counts, 1))


def _kept(labels: np.ndarray, r: int, c: int, r0: int, c0: int, plan: _Plan, mask: TissueMask | None) -> np.ndarray:
    """Boolean per label id: its centroid lies in the tile's core (and on the tissue)."""
    n = int(labels.max()) + 1
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols]
    count = np.bincount(ids, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        row = np.bincount(ids, weights=rows, minlength=n) / count + r0
        col = np.bincount(ids, weights=cols, minlength=n) / count + c0
    keep = (count > 0) & (row >= r) & (row < r + plan.tile) & (col >= c) & (col < c + plan.tile)
    if mask is not None and keep.any():
        xy = np.column_stack([(col + 0.5) * plan.level_px - 0.5, (row + 0.5) * plan.level_px - 0.5])
        keep &= mask.contains(np.nan_to_num(xy, nan=-1.0))
    keep[0] = False
    return keep


def detect_nuclei(slide: Slide, *, mpp: float, scale: float = 1.0, settings: NucleusSettings | None = None,
                  tissue: TissueMask | bool = True, labels_store: Any = None, source: str | None = None,
                  cancel: CancelToken | None = None) -> ProgressGenerator[Segmentation]:
    """Detect nuclei over a slide, tile by tile; a generator of progress events.

    Parameters
    ----------
    slide
        The open slide.
    mpp
        Micrometres per full-resolution pixel.
    scale
        Slide level-0 pixels per full-resolution pixel (1.0 for the full-resolution H&E).
    settings
        The detector's settings (sizes in µm); default :class:`NucleusSettings`.
    tissue
        A tissue mask, ``True`` to detect one (tiles on bare glass are skipped and objects off
        the tissue dropped) or ``False`` to search the whole slide.
    labels_store
        A path for the label raster as a zarr array (bounded memory for a gigapixel slide), or
        ``None`` to hold it in memory.
    source
        What the cell table names as the source (default: the slide's path).
    cancel
        Checked between tiles.

    Returns
    -------
    Segmentation
        The label raster (at the working pixel size: ``px_per_label_px`` full-resolution pixels
        per label pixel) and the cell table, whose ``uns["histosge"]["cells"]`` holds the settings.

    Raises
    ------
    InputError
        If ``mpp`` or ``scale`` is not positive, a setting is out of range, or no tissue is found.
    """
    settings = (settings or NucleusSettings()).check()
    if not (mpp is not None and math.isfinite(mpp) and mpp > 0):
        raise InputError(f"the detector needs the slide's pixel size in µm (got {mpp}); state it", slide.path)
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"the image scale must be positive, got {scale}", slide.path)
    plan = _plan(slide, scale, mpp, settings)
    _check_raster_size(plan.shape, labels_store, slide.path)
    yield Progress("nuclei", 0, None, "finding the tissue")
    mask = detect_tissue(slide, scale=scale) if tissue is True else (tissue or None)
    tiles = _tiles(plan, mask)
    if not tiles:
        raise InputError("the tissue mask covers none of the slide (a mask of another image?)", slide.path)
    radius = settings.nucleus_um / 2 / plan.um_per_px
    min_area = settings.min_area_um2 / plan.um_per_px**2
    threshold = settings.threshold if settings.threshold is not None else _threshold(slide, plan, tiles, radius)
    out = _label_raster(plan.shape, labels_store, plan.tile)
    found: list[tuple[np.ndarray, ...]] = []
    next_id = 1
    for i, (r, c) in enumerate(tiles):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield Progress("nuclei", i, len(tiles), f"tile {i + 1} of {len(tiles)}", {"nuclei": next_id - 1})
        h, r0, c0 = _read_h(slide, plan, r, c)
        labels = segment_tile(h, threshold, radius, min_area)
        if settings.expand_um > 0:
            from skimage.segmentation import expand_labels

            labels = expand_labels(labels, settings.expand_um / plan.um_per_px)
        keep = _kept(labels, r, c, r0, c0, plan, mask)
        if keep.any():
            found.append(_write_tile(out, labels, keep, next_id, r0, c0))
            next_id += int(keep.sum())
    yield Progress("nuclei", len(tiles), len(tiles), "done", {"nuclei": next_id - 1})
    return _segmentation(out, found, plan, mpp, threshold, settings, source or slide.path)


def _segmentation(out: Any, found: list[tuple[np.ndarray, ...]], plan: _Plan, mpp: float, threshold: float,
                  settings: NucleusSettings, source: str) -> Segmentation:
    f = plan.level_px
    parts = [np.concatenate([p[k] for p in found]) if found else np.zeros(0) for k in range(4)]
    ids, counts, mean_col, mean_row = parts
    order = np.argsort(ids, kind="stable")
    ids, counts, mean_col, mean_row = ids[order].astype(np.int64), counts[order], mean_col[order], mean_row[order]
    centroids = np.column_stack([(mean_col + 0.5) * f - 0.5, (mean_row + 0.5) * f - 0.5])
    extra = {"detector": {**asdict(settings), "threshold": float(threshold), "um_per_label_px": plan.um_per_px}}
    table = cell_table(ids, centroids, counts * f * f, mpp=mpp, px_per_label_px=f, source=source, extra=extra)
    return Segmentation(out, f, table, source)
