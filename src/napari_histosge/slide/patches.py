"""Reading many patches from one pyramid level, decoding each tile under them once.

Patches are visited in tile order (row band, then column), grouped so that a
group's tiles fit in the slide's tile cache; each group's missing tiles are
decoded in parallel threads, then every patch is cut from the decoded tiles and
resized. Results come back in the caller's order. A patch is cut from one region held in
memory, so its region obeys the decode limit of whole-image reads
(:func:`~napari_histosge.slide.pyramid.max_decode_pixels`): a patch too large for it is
refused before anything is read.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .pyramid import Level, TileCache, max_decode_pixels


@dataclass
class PatchPlan:
    """Where each patch lies on a level (all arrays have one entry per patch).

    Attributes
    ----------
    order
        Visiting order (indices into the caller's patches), tile by tile.
    bx0, by0
        Exact top-left corner of each patch box, in level px (float).
    side
        Patch edge in level px (float).
    ix0, iy0, ix1, iy1
        Integer region read per patch: the box plus one pixel of resampling context.
    """

    order: np.ndarray
    bx0: np.ndarray
    by0: np.ndarray
    side: float
    ix0: np.ndarray
    iy0: np.ndarray
    ix1: np.ndarray
    iy1: np.ndarray


def check_patch_size(level: Level, side: float, full_res_px: float | None = None) -> None:
    """Refuse patches of edge ``side`` (``level`` px) whose region exceeds the decode limit.

    Parameters
    ----------
    level
        The pyramid level the patches are cut from (its slide is named in the error).
    side
        Patch edge in that level's pixels.
    full_res_px
        The same edge in full-resolution pixels, for the message (``None``: not known).

    Raises
    ------
    InputError
        If one patch's region (the box plus a pixel of resampling context on each side)
        holds more pixels than :func:`~napari_histosge.slide.pyramid.max_decode_pixels`,
        or ``side`` is not a positive finite number.
    """
    if not (math.isfinite(side) and side > 0):
        raise InputError(f"the patch edge must be a positive number of pixels, got {side}", level.path)
    edge = math.ceil(side) + 3  # what plan_patches reads: the box plus one pixel each side, rounded out
    limit = max_decode_pixels()
    if edge * edge > limit:
        size = f"{full_res_px:,.0f} full-resolution px, " if full_res_px is not None else ""
        raise InputError(
            f"a patch of {size}{edge:,} x {edge:,} px on pyramid level {level.index} would need "
            f"{edge * edge * 3 / 1e9:.1f} GB in memory, more than the decode limit of {limit:,} px "
            "($HISTOSGE_MAX_DECODE_PIXELS); choose a smaller patch (--patch-um or --patch-spot-fraction)",
            level.path,
        )


def plan_patches(level: Level, centers: np.ndarray, side: float, *, full_res_px: float | None = None) -> PatchPlan:
    """Plan reads of square patches of edge ``side`` around ``centers`` ``(x, y)`` (level px).

    Raises :class:`InputError` for a patch over the decode limit (:func:`check_patch_size`,
    which names ``full_res_px`` when given).
    """
    check_patch_size(level, side, full_res_px)
    cx, cy = centers[:, 0], centers[:, 1]
    bx0, by0 = cx - side / 2, cy - side / 2
    # One extra pixel around the box so the resampling kernel has context.
    ix0 = np.floor(bx0).astype(np.int64) - 1
    iy0 = np.floor(by0).astype(np.int64) - 1
    ix1 = np.ceil(bx0 + side).astype(np.int64) + 1
    iy1 = np.ceil(by0 + side).astype(np.int64) + 1
    band = np.clip(cy, 0, level.height - 1) // level.tile_h
    order = np.lexsort((cx, band)) if len(centers) else np.zeros(0, np.int64)
    return PatchPlan(order, bx0, by0, float(side), ix0, iy0, ix1, iy1)


def _tiles_of(level: Level, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    ya, yb = max(y0, 0), min(y1, level.height)
    xa, xb = max(x0, 0), min(x1, level.width)
    if ya >= yb or xa >= xb:
        return []
    return [
        (r, c)
        for r in range(ya // level.tile_h, (yb - 1) // level.tile_h + 1)
        for c in range(xa // level.tile_w, (xb - 1) // level.tile_w + 1)
    ]


def _region(level: Level, tiles: dict[tuple[int, int], np.ndarray], x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` assembled from decoded tiles, white outside the level."""
    out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
    for r, c in _tiles_of(level, x0, y0, x1, y1):
        ty0, ty1, tx0, tx1 = level.tile_bounds(r, c)
        ya, yb = max(y0, ty0), min(y1, ty1)
        xa, xb = max(x0, tx0), min(x1, tx1)
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tiles[(r, c)][ya - ty0 : yb - ty0, xa - tx0 : xb - tx0]
    return out


def render_patches(
    level: Level, level_index: int, plan: PatchPlan, out_size: int, cache: TileCache, pool: Executor | None
) -> np.ndarray:
    """Cut and resize the planned patches to ``(n, out_size, out_size, 3)`` uint8 (caller's order)."""
    from PIL import Image

    n = len(plan.order)
    out = np.empty((n, out_size, out_size, 3), np.uint8)
    tile_bytes = level.tile_h * level.tile_w * 3
    max_group_tiles = max(16, cache.max_bytes // max(tile_bytes, 1))
    exact = plan.side == out_size
    pos = 0
    while pos < n:
        # A group of consecutive patches whose tiles fit in the cache together.
        needed: dict[tuple[int, int], None] = {}
        end = pos
        while end < n:
            i = plan.order[end]
            t = _tiles_of(level, plan.ix0[i], plan.iy0[i], plan.ix1[i], plan.iy1[i])
            if needed and len(needed) + len(t) > max_group_tiles:
                break
            needed.update(dict.fromkeys(t))
            end += 1
        tiles = _fetch_tiles(level, level_index, list(needed), cache, pool)
        for i in plan.order[pos:end]:
            x0, y0, x1, y1 = int(plan.ix0[i]), int(plan.iy0[i]), int(plan.ix1[i]), int(plan.iy1[i])
            region = _region(level, tiles, x0, y0, x1, y1)
            bx, by = plan.bx0[i] - x0, plan.by0[i] - y0
            if exact and bx == int(bx) and by == int(by):
                out[i] = region[int(by) : int(by) + out_size, int(bx) : int(bx) + out_size]
            else:
                box = (bx, by, bx + plan.side, by + plan.side)
                resized = Image.fromarray(region).resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)
                out[i] = np.asarray(resized)
        pos = end
    return out


def _fetch_tiles(
    level: Level, level_index: int, keys: list[tuple[int, int]], cache: TileCache, pool: Executor | None
) -> dict[tuple[int, int], np.ndarray]:
    """Decoded tiles for ``keys``: from the cache, else decoded (in parallel) and cached."""
    found: dict[tuple[int, int], np.ndarray] = {}
    missing = []
    for k in keys:
        tile = cache.get((level_index, *k))
        if tile is None:
            missing.append(k)
        else:
            found[k] = tile
    if missing:
        if pool is not None and len(missing) > 1:
            decoded = list(pool.map(lambda k: level.read_tile(*k), missing))
        else:
            decoded = [level.read_tile(*k) for k in missing]
        cache.decoded += len(missing)
        for k, tile in zip(missing, decoded, strict=True):
            found[k] = tile
            cache.put((level_index, *k), tile)
    return found


def read_cached(level: Level, level_index: int, y0: int, y1: int, x0: int, x1: int, cache: TileCache,
                pool: Executor | None = None) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` of ``level`` read tile by tile through ``cache`` (white outside)."""
    tiles = _fetch_tiles(level, level_index, _tiles_of(level, x0, y0, x1, y1), cache, pool)
    return _region(level, tiles, x0, y0, x1, y1)
