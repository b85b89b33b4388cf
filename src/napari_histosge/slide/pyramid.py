"""Pyramid levels read tile by tile, the decode limit, and the content fingerprint of image files.

A :class:`Level` wraps one zarr array (tifffile's zarr view of a TIFF level, or a
level of a pyramid :mod:`.flat_pyramid` built) and reads it by chunk ("tile"): every
decoding error becomes an :class:`~napari_histosge.errors.InputError` naming the
file, the level, the tile and, for TIFFs, its byte offset; for a cached pyramid, a
:class:`CacheDamagedError` naming the cache folder instead of the slide.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # dask is imported when a level is first wanted as a dask array (not to show it)
    import dask.array as da

#: Version 3: chunks carry zstd checksums and the group lists its chunk files (damage is found).
PYRAMID_VERSION = 3
PYRAMID_CHUNK = 512
PYRAMID_MIN_SIZE = 1024
PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Default for :func:`max_decode_pixels` (1e9 px = 3 GB of RGB).
DEFAULT_MAX_DECODE_PIXELS = 1_000_000_000


def max_decode_pixels() -> int:
    """Largest image or region (in pixels) decoded into memory at once.

    ``$HISTOSGE_MAX_DECODE_PIXELS`` overrides the default of 1e9 pixels.
    """
    env = os.environ.get("HISTOSGE_MAX_DECODE_PIXELS")
    return int(float(env)) if env else DEFAULT_MAX_DECODE_PIXELS


def check_decode_size(height: int, width: int, what: str, path: str | os.PathLike, hint: str = "") -> None:
    """Raise InputError when ``what`` would need ``height * width`` RGB pixels in memory over the limit."""
    limit = max_decode_pixels()
    if int(height) * int(width) > limit:
        gb = int(height) * int(width) * 3 / 1e9
        raise InputError(
            f"{what} needs the whole {width} x {height} px image in memory ({gb:.1f} GB), more than "
            f"the limit of {limit:,} px ($HISTOSGE_MAX_DECODE_PIXELS){hint}",
            path,
        )


def to_rgb_uint8(a: Any, axes: str) -> Any:
    """Reorder to (Y, X, S) and convert to 3-channel uint8; works on numpy and dask."""
    sample = next((ax for ax in axes if ax in "SC"), None)
    if sample is None:
        a = a[..., None]
    else:
        order = [axes.index("Y"), axes.index("X"), axes.index(sample)]
        a = a.transpose(order)
    n = a.shape[-1]
    if n >= 3:
        a = a[..., :3]  # drop alpha / extra samples
    else:
        a = a[..., :1][..., [0, 0, 0]]  # greyscale (+ alpha) -> RGB
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if a.dtype.kind == "f":
        # Floats are assumed to be intensities in [0, 1].
        return (a.clip(0, 1) * 255 + 0.5).astype(np.uint8)
    return a.clip(0, 255).astype(np.uint8)


class Level:
    """One pyramid level, read as ``(H, W, 3)`` uint8 by tile.

    Parameters
    ----------
    raw
        zarr array of the level (any axes order).
    axes
        tifffile axes string of ``raw`` (e.g. ``"YXS"``, ``"CYX"``).
    path
        The slide file (named in errors).
    index
        Level number (named in errors).
    page
        The tifffile page of this level, for byte offsets in errors; None for zarr pyramids.
    cache
        The cached pyramid folder this level is read from, if any: a decoding error is then
        the cache's damage (named with how to fix it), not the slide's.
    """

    def __init__(self, raw: Any, axes: str, *, path: str = "", index: int = 0, page: Any = None,
                 cache: Path | None = None) -> None:
        self.raw = raw
        self.axes = axes
        self.path = path
        self.index = index
        self.page = page
        self.cache = cache
        self.height = int(raw.shape[axes.index("Y")])
        self.width = int(raw.shape[axes.index("X")])
        chunks = getattr(raw, "chunks", raw.shape)
        self.tile_h = max(1, int(chunks[axes.index("Y")]))
        self.tile_w = max(1, int(chunks[axes.index("X")]))
        self.tile_rows = -(-self.height // self.tile_h)
        self.tile_cols = -(-self.width // self.tile_w)

    def _index(self, ys: slice, xs: slice) -> tuple[tuple, str]:
        # Keep Y, X and the sample axis; take the first plane of anything else (T, Z, ...).
        idx: list[slice | int] = []
        kept = ""
        for ax in self.axes:
            if ax == "Y":
                idx.append(ys)
            elif ax == "X":
                idx.append(xs)
            elif ax in "SC":
                idx.append(slice(None))
            else:
                idx.append(0)
                continue
            kept += ax
        return tuple(idx), kept

    def _raw_read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        idx, kept = self._index(slice(y0, y1), slice(x0, x1))
        return to_rgb_uint8(np.asarray(self.raw[idx]), kept)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (inside the level) as ``(h, w, 3)`` uint8."""
        try:
            return self._raw_read(y0, y1, x0, x1)
        except MemoryError:
            raise
        except Exception as exc:  # decoder errors vary by codec: find the tile to name it
            self._locate_error(y0, y1, x0, x1, exc)
            where = f"level {self.index}, rows {y0}:{y1}, columns {x0}:{x1}"
            if self.cache is not None:
                raise damaged_cache_error(self.cache, self.path, where, exc) from exc
            raise InputError(f"cannot decode {where}: {exc}", self.path) from exc

    def tile_bounds(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``(row, col)``, clipped to the level."""
        y0, x0 = row * self.tile_h, col * self.tile_w
        return y0, min(y0 + self.tile_h, self.height), x0, min(x0 + self.tile_w, self.width)

    def read_tile(self, row: int, col: int) -> np.ndarray:
        """Decode one tile (clipped at the level's edges)."""
        y0, y1, x0, x1 = self.tile_bounds(row, col)
        try:
            return self._raw_read(y0, y1, x0, x1)
        except MemoryError:
            raise
        except Exception as exc:
            raise self._tile_error(row, col, exc) from exc

    def _tile_error(self, row: int, col: int, exc: BaseException) -> InputError:
        where = f"level {self.index}, tile row {row}, column {col}"
        if self.cache is not None:
            return damaged_cache_error(self.cache, self.path, where, exc)
        offset = self._byte_offset(row, col)
        if offset is not None:
            where += f", byte offset {offset}"
        return InputError(f"corrupt or truncated tile ({where}): {type(exc).__name__}: {exc}", self.path)

    def _byte_offset(self, row: int, col: int) -> int | None:
        page = self.page
        try:
            offsets = page.dataoffsets if page is not None else None
            if not offsets:
                return None
            i = row * self.tile_cols + col if page.is_tiled else row
            return int(offsets[i]) if i < len(offsets) else None
        except Exception:  # best effort: offsets are only a hint in the message
            return None

    def _locate_error(self, y0: int, y1: int, x0: int, x1: int, exc: BaseException) -> None:
        for r in range(y0 // self.tile_h, (max(y1, y0 + 1) - 1) // self.tile_h + 1):
            for c in range(x0 // self.tile_w, (max(x1, x0 + 1) - 1) // self.tile_w + 1):
                self.read_tile(r, c)  # raises the tile's InputError

    def to_dask(self, name: str) -> da.Array:
        """The level as a lazy dask array with one chunk per tile (errors as InputError)."""
        import dask.array as da

        return da.from_array(
            LevelArray(self), chunks=(self.tile_h, self.tile_w, 3), name=name,
            meta=np.empty((0, 0, 0), np.uint8), asarray=True, fancy=False, lock=False,
        )


class LevelArray:
    """Array-like ``(H, W, 3)`` uint8 view of a :class:`Level`, sliced as a numpy array would be.

    napari shows a multiscale image from any array-like with ``shape``, ``dtype`` and slicing,
    so a slide's display levels are these (no dask needed to show a slide), and
    :meth:`Level.to_dask` wraps one for dask. ``read(y0, y1, x0, x1)`` does the reading
    (default :meth:`Level.read`; a :class:`~napari_histosge.slide.open.Slide` passes one
    that goes through its tile cache, so a view napari shows again is not decoded again).
    Asking for a whole level checks the decode limit first.
    """

    def __init__(self, level: Level, read: Callable[[int, int, int, int], np.ndarray] | None = None) -> None:
        self.level = level
        self._read = read or level.read
        self.shape = (level.height, level.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = level.height * level.width * 3
        self.chunks = (level.tile_h, level.tile_w, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LevelArray(level {self.level.index} of {self.level.path!r}, shape={self.shape})"

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        if len(key) != 3:
            raise IndexError(f"too many indices for a {self.shape} slide level: {key!r}")
        ys, xs, ss = key
        # an integer row or column is read as a one-wide slice, then dropped like numpy does
        drop = tuple(i for i, k in enumerate((ys, xs)) if not isinstance(k, slice))
        ys, xs = (k if isinstance(k, slice) else slice(int(k) % n, int(k) % n + 1)
                  for k, n in ((ys, self.shape[0]), (xs, self.shape[1])))
        y0, y1, ystep = ys.indices(self.shape[0])
        x0, x1, xstep = xs.indices(self.shape[1])
        if ystep < 0 or xstep < 0:
            raise IndexError("slide levels are read with positive steps only")
        if y1 <= y0 or x1 <= x0:
            out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        else:
            check_decode_size(y1 - y0, x1 - x0, f"reading level {self.level.index}", self.level.path,
                              "; read it by tiles or use a coarser level")
            out = self._read(y0, y1, x0, x1)
        out = out[::ystep, ::xstep, ss]
        return out.squeeze(axis=drop) if drop else out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)


class TileCache:
    """Least-recently-used decoded tiles, bounded in bytes (shared by a slide's reads)."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        # napari's reads (GUI thread) and patch reads (a worker) can share one slide
        self._lock = threading.Lock()
        self.decoded = 0  # tiles decoded so far (a measure of read efficiency)

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        """The cached tile at ``(level, row, column)``, or None; marks it as recently used."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        """Keep a decoded tile, dropping the least recently used ones over the byte budget."""
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and len(self._tiles) > 1:
                _, old = self._tiles.popitem(last=False)
                self._bytes -= old.nbytes


# --------------------------------------------------------------------------- flat images


@contextmanager
def pil_no_size_limit():
    """Lift Pillow's decompression-bomb limit for our own slide reads only."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


#: Files up to this size are hashed whole (a JPEG, PNG or small slide; well under a second).
FULL_HASH_MAX_BYTES = 64 * 2**20
#: A larger file is hashed by its first and last bytes (TIFF headers and directories)...
EDGE_BYTES = 2**20
#: ... and this many blocks of ``SAMPLE_BYTES`` spread evenly over the rest.
SAMPLE_BLOCKS = 256
SAMPLE_BYTES = 16 * 2**10

# Digests already computed in this process, by everything ``stat`` says of the file. ctime
# is among it: writing a file (or setting its mtime back with os.utime) always moves it.
_DIGESTS: dict[tuple, str] = {}


def _hash_file(fh: Any, size: int) -> str:
    h = hashlib.sha256(f"size={size}|".encode())
    if size <= FULL_HASH_MAX_BYTES:
        for block in iter(lambda: fh.read(4 * 2**20), b""):
            h.update(block)
        return "sha256:" + h.hexdigest()
    h.update(fh.read(EDGE_BYTES))
    fh.seek(size - EDGE_BYTES)
    h.update(fh.read(EDGE_BYTES))
    span = size - 2 * EDGE_BYTES - SAMPLE_BYTES
    for i in range(SAMPLE_BLOCKS):
        fh.seek(EDGE_BYTES + span * i // (SAMPLE_BLOCKS - 1))
        h.update(fh.read(SAMPLE_BYTES))
    return f"sampled{SAMPLE_BLOCKS}x{SAMPLE_BYTES}:" + h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """A digest of a file's content: what the feature and pyramid caches are keyed on.

    Files up to :data:`FULL_HASH_MAX_BYTES` are hashed whole; larger slides by their size,
    their first and last :data:`EDGE_BYTES` (a TIFF's header and directories) and
    :data:`SAMPLE_BLOCKS` blocks spread over the rest, so that a gigapixel slide costs a
    few megabytes of reading. The name, the folder and the times of the file do not count:
    an image edited in place with its size and mtime kept gets a new digest, and a copy
    of a slide reuses the caches of the original.

    Raises
    ------
    InputError
        If the file cannot be read.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
        memo = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if memo not in _DIGESTS:
            with open(p, "rb") as fh:
                _DIGESTS[memo] = _hash_file(fh, st.st_size)
    except OSError as exc:
        raise InputError(f"cannot read the image ({exc.strerror or exc})", p) from None
    return _DIGESTS[memo]


class CacheDamagedError(InputError):
    """A cached pyramid cannot be read: the cache folder is named (and how to fix it), not the slide.

    Parameters
    ----------
    cache
        The pyramid folder.
    path
        The slide it was built from.
    where
        What could not be read (a level and tile, the metadata, the chunk files).
    exc
        The error met.
    """

    def __init__(self, cache: Path, path: str, where: str, exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        self.damage = f"the cached pyramid of {Path(path).name} is damaged ({where}: {reason})"
        super().__init__(f"{self.damage}; remove this folder (it is rebuilt from the image on the next run) or "
                         "set $HISTOSGE_CACHE to another folder", cache)


def damaged_cache_error(cache: Path, path: str, where: str, exc: BaseException) -> CacheDamagedError:
    """The one-line error for a cached pyramid that cannot be decoded (see :class:`CacheDamagedError`)."""
    return CacheDamagedError(cache, path, where, exc)
