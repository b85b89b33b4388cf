"""On-disk pyramids built for flat images (JPEG, PNG, TIFF without reduced levels), and their cache.

A flat image is converted once into a zarr pyramid under ``$HISTOSGE_CACHE/pyramids/``
with dask, band by band, so memory stays bounded by a few rows of tiles (only JPEG/PNG
must be decoded whole: Pillow cannot decode them by region, and above
:func:`~.pyramid.max_decode_pixels` that is refused). The cache is never the slide's
problem: a cache that cannot be written gives a pyramid in memory for the run, a damaged
one (see :func:`open_pyramid_dir`) is rebuilt, both with a warning line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..outputs import write_reason
from .pyramid import (
    PIL_SUFFIXES,
    PYRAMID_CHUNK,
    PYRAMID_MIN_SIZE,
    PYRAMID_VERSION,
    CacheDamagedError,
    Level,
    check_decode_size,
    damaged_cache_error,
    file_fingerprint,
    pil_no_size_limit,
    to_rgb_uint8,
)

if TYPE_CHECKING:  # dask is imported to build a pyramid, not to open a built one
    import dask.array as da


def pyramid_dir(path: Path, root: Path) -> Path:
    """Where the pyramid of flat image ``path`` lives under cache ``root``."""
    key = hashlib.sha256(f"{file_fingerprint(path)}|v{PYRAMID_VERSION}".encode()).hexdigest()[:32]
    return root / "pyramids" / key


_PIL_HINT = (
    "; Pillow cannot decode JPEG/PNG by region. Convert it to a tiled pyramidal TIFF "
    "(e.g. `vips tiffsave in.jpg out.tif --tile --pyramid --compression jpeg`) or raise the limit"
)


def _pil_source(path: Path) -> da.Array:
    """A JPEG/PNG decoded whole (after checking its size) as a dask array."""
    import dask.array as da

    return da.from_array(pil_rgb(path), chunks=(PYRAMID_CHUNK, PYRAMID_CHUNK, 3))


def pil_rgb(path: Path) -> np.ndarray:
    """A JPEG/PNG decoded whole (after checking its size) as ``(H, W, 3)`` uint8."""
    from PIL import Image

    with pil_no_size_limit(), Image.open(path) as im:
        w, h = im.size
        check_decode_size(h, w, f"building a pyramid for this {im.format or 'flat'} image", path, _PIL_HINT)
        im.load()
        if im.mode in ("I;16", "I;16B", "I"):
            rgb = np.ascontiguousarray(to_rgb_uint8(np.asarray(im).astype(np.float64) / 65535.0, "YX"))
        else:
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return rgb


def _tiff_source(path: Path) -> tuple[da.Array, Any]:
    """A non-tiled TIFF as a lazy dask array read by strips (memory-mapped when uncompressed)."""
    import dask.array as da
    import tifffile
    import zarr

    tf = tifffile.TiffFile(path)
    series = tf.series[0]
    page = series.pages[0] if series.pages else tf.pages[0]
    axes = series.axes
    if page is not None and getattr(page, "is_memmappable", False) and page.is_contiguous:
        raw: Any = tifffile.memmap(path, series=0, mode="r")
        arr = da.from_array(raw, chunks=(PYRAMID_CHUNK,) + raw.shape[1:]) if raw.ndim else raw
    else:
        raw = zarr.open(series.aszarr(), mode="r")
        if isinstance(raw, zarr.Group):
            raw = raw["0"]
        ychunk = raw.chunks[axes.index("Y")]
        xchunk = raw.chunks[axes.index("X")]
        check_decode_size(ychunk, xchunk, "decoding one strip of this TIFF", path)
        arr = da.from_zarr(raw)
    return to_rgb_uint8(arr, axes), tf


def _halve_block(b: np.ndarray) -> np.ndarray:
    h, w = (b.shape[0] // 2) * 2, (b.shape[1] // 2) * 2
    b = b[:h, :w].astype(np.uint16)
    return ((b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2] + 2) // 4).astype(np.uint8)


def _halve(a: da.Array) -> da.Array:
    """2x2 box average with rounding (Pillow's ``reduce(2)``), trimming an odd edge.

    Blocks are even-sized except the last, so halving them one by one is exact.
    """
    import dask.array as da

    a = a.rechunk((2 * PYRAMID_CHUNK, 2 * PYRAMID_CHUNK, 3))
    chunks = tuple(tuple(c // 2 for c in cs) for cs in a.chunks[:2]) + (a.chunks[2],)
    return da.map_blocks(_halve_block, a, chunks=chunks, dtype=np.uint8)


class CacheWriteError(Exception):
    """The pyramid cache could not be written (``reason`` says why); the slide itself is fine."""

    def __init__(self, folder: Path, exc: OSError) -> None:
        self.folder = folder
        self.reason = write_reason(exc)
        super().__init__(f"{folder}: {self.reason}")


def _codec() -> Any:
    from zarr.codecs import ZstdCodec

    # zstd level 1: a quarter of the write time of the default level, ~10% larger. The
    # checksum makes a chunk damaged on disk a decoding error instead of wrong pixels.
    return ZstdCodec(level=1, checksum=True)


def _write_levels(group: Any, src: da.Array, scheduler: str | None = None) -> None:
    """Write ``src`` and its halvings into zarr ``group`` as arrays ``"0"``, ``"1"``, ...

    ``scheduler``: dask's (default: its threads; ``"synchronous"`` in a background thread).
    """
    import dask.array as da

    level, arr = 0, src
    while True:
        chunks = (min(PYRAMID_CHUNK, arr.shape[0]), min(PYRAMID_CHUNK, arr.shape[1]), 3)
        z = group.create_array(str(level), shape=arr.shape, chunks=chunks, dtype="uint8", compressors=[_codec()])
        # Written chunk by chunk; the next level reads this one back, not the source.
        arr.rechunk(chunks).store(z, lock=False, scheduler=scheduler)
        if max(arr.shape[:2]) < PYRAMID_MIN_SIZE or min(arr.shape[:2]) < 2:
            return
        arr = _halve(da.from_zarr(z))
        level += 1


def _flat_source(path: Path) -> tuple[da.Array, Any]:
    """The full-resolution pixels of a flat image (and a file handle to close, or None)."""
    if path.suffix.lower() not in PIL_SUFFIXES:
        return _tiff_source(path)
    return _pil_source(path), None


#: Zarr metadata files: not in the chunk list (the group's own file holds the list).
_META_FILES = ("zarr.json", ".zattrs", ".zarray", ".zgroup")


def _chunk_files(folder: Path) -> dict[str, int]:
    """``{relative path: size}`` of the chunk files of a pyramid folder."""
    return {f.relative_to(folder).as_posix(): f.stat().st_size
            for f in folder.rglob("*") if f.is_file() and f.name not in _META_FILES}


def build_pyramid(path: Path, target: Path, rgb: np.ndarray | None = None, *, background: bool = False) -> None:
    """Write a zarr pyramid of flat image ``path`` to ``target`` atomically, band by band.

    ``rgb``: the image's pixels when already decoded (:func:`pil_rgb`), so they are not decoded again.
    ``background``: dask computes in the calling thread (the build runs behind a viewer, which
    keeps the other cores).

    Raises
    ------
    CacheWriteError
        If the cache folder cannot be written (read-only, full, not a folder).
    """
    import zarr

    if rgb is not None:
        import dask.array as da

        src, handle = da.from_array(rgb, chunks=(PYRAMID_CHUNK, PYRAMID_CHUNK, 3)), None
    else:
        src, handle = _flat_source(path)
    try:
        if src.shape[0] == 0 or src.shape[1] == 0:
            raise InputError("image has zero size", path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        except OSError as exc:
            raise CacheWriteError(target.parent, exc) from None
        try:
            group = zarr.open_group(str(tmp), mode="w")
            _write_levels(group, src, "synchronous" if background else None)
            group.attrs.update({"source": str(path), "chunk_files": _chunk_files(tmp)})
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process finished the same pyramid first: keep theirs.
                if not (target / "0").exists():
                    raise
        except OSError as exc:
            # The source was decoded (JPEG/PNG) or opened before: an errno here is the cache's.
            if exc.errno is None:
                raise
            raise CacheWriteError(target.parent, exc) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if handle is not None:
            handle.close()


class _Tiled:
    """A numpy image with a tile grid, as :class:`~.pyramid.Level` reads a zarr array."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.chunks = (PYRAMID_CHUNK, PYRAMID_CHUNK, array.shape[2])

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]


def _halve_banded(a: np.ndarray) -> np.ndarray:
    """:func:`_halve_block` of a whole image, a band of rows at a time (bounded temporary memory)."""
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    out = np.empty((h // 2, w // 2, a.shape[2]), np.uint8)
    band = 2 * PYRAMID_CHUNK
    for y in range(0, h, band):
        out[y // 2 : (y + band) // 2] = _halve_block(a[y : min(y + band, h), :w])
    return out


class Deferred:
    """A pyramid level shown from a quick low-resolution preview until the full decode replaces it.

    Reads (``[ys, xs, samples]``) return the preview scaled up to this level's size (nearest
    pixel) while :attr:`real` is ``None``, the real level's pixels once it is set.
    """

    def __init__(self, shape: tuple[int, int], preview: np.ndarray) -> None:
        self.shape = (int(shape[0]), int(shape[1]), 3)
        self.dtype = np.dtype(np.uint8)
        self.chunks = (PYRAMID_CHUNK, PYRAMID_CHUNK, 3)
        self.preview = preview
        self.real: Any = None
        self.error: BaseException | None = None  # why the full decode failed (the preview stays)

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.real is not None:
            return self.real[key]
        ys, xs, ss = key
        rows = np.arange(*ys.indices(self.shape[0])) * self.preview.shape[0] // self.shape[0]
        cols = np.arange(*xs.indices(self.shape[1])) * self.preview.shape[1] // self.shape[1]
        return self.preview[rows][:, cols][..., ss]


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """The level sizes :func:`pyramid_of_pixels` (and :func:`build_pyramid`) make for an image of this size."""
    shapes = [(height, width)]
    while max(shapes[-1]) >= PYRAMID_MIN_SIZE and min(shapes[-1]) >= 2:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    return shapes


def pil_preview(path: Path, shrink: int = 8) -> tuple[np.ndarray, tuple[int, int]]:
    """A JPEG decoded at a fraction of its size (JPEG's own draft mode: quick), and its full ``(height, width)``.

    A PNG has no draft mode and is decoded whole, then thinned. The full size is checked
    against the decode limit first (:func:`~.pyramid.check_decode_size`).
    """
    from PIL import Image

    with pil_no_size_limit(), Image.open(path) as im:
        w, h = im.size
        check_decode_size(h, w, f"building a pyramid for this {im.format or 'flat'} image", path, _PIL_HINT)
        im.draft("RGB", (max(1, w // shrink), max(1, h // shrink)))
        small = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    step = max(1, min(small.shape[0], small.shape[1]) * shrink // max(1, min(h, w)))  # a PNG came whole
    return np.ascontiguousarray(small[::step, ::step]), (h, w)


def deferred_pyramid(path: Path) -> tuple[list[Level], list[Deferred]]:
    """Levels of a JPEG/PNG shown from a preview (:class:`Deferred`) until :func:`pil_rgb` has decoded it."""
    preview, (h, w) = pil_preview(path)
    raws = [Deferred(shape, preview) for shape in level_shapes(h, w)]
    return [Level(raw, "YXS", path=str(path), index=i) for i, raw in enumerate(raws)], raws


def pyramid_of_pixels(rgb: np.ndarray, path: Path) -> list[Level]:
    """The levels :func:`build_pyramid` writes, made in memory from decoded pixels (no compression)."""
    arrays = [rgb]
    while max(arrays[-1].shape[:2]) >= PYRAMID_MIN_SIZE and min(arrays[-1].shape[:2]) >= 2:
        arrays.append(_halve_banded(arrays[-1]))
    return [Level(_Tiled(a), "YXS", path=str(path), index=i) for i, a in enumerate(arrays)]


def pyramid_in_memory(path: Path, why: CacheWriteError) -> list[Level]:
    """The pyramid of ``path`` built in memory (compressed) because the cache cannot hold it; warns."""
    import zarr
    from zarr.storage import MemoryStore

    warnings.warn(f"{why.folder}: the image cache cannot be written ({why.reason}); the pyramid of {path.name} "
                  "is built in memory for this run and not kept (set $HISTOSGE_CACHE to a writable folder)",
                  UserWarning, stacklevel=3)
    src, handle = _flat_source(path)
    try:
        group = zarr.open_group(store=MemoryStore(), mode="w")
        _write_levels(group, src)
    finally:
        if handle is not None:
            handle.close()
    names = sorted(group.array_keys(), key=int)
    return [Level(group[k], "YXS", path=str(path), index=i) for i, k in enumerate(names)]


def open_pyramid_dir(target: Path, path: str) -> list[Level]:
    """The levels of a pyramid built by :func:`build_pyramid`.

    Raises
    ------
    InputError
        Naming ``target`` if its metadata cannot be read or its chunk files are not the
        ones written (a file missing, truncated or extra).
    """
    import zarr

    try:
        group = zarr.open_group(str(target), mode="r")
        names = sorted((k for k in group.array_keys()), key=int)
        expected = group.attrs.get("chunk_files")
        found = _chunk_files(target)
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for unreadable metadata
        raise damaged_cache_error(target, path, "metadata", exc) from None
    expected = expected if isinstance(expected, dict) else {}
    if not names or expected != found:
        changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        detail = f"{len(changed)} chunk files missing, truncated or extra, e.g. {changed[0]}" if changed else "empty"
        raise damaged_cache_error(target, path, "chunk files", ValueError(detail))
    return [Level(group[k], "YXS", path=path, index=i, cache=target) for i, k in enumerate(names)]


def open_cached_pyramid(target: Path, path: str) -> list[Level] | None:
    """The levels of the cached pyramid at ``target``; ``None`` if there is none.

    A damaged one (see :func:`open_pyramid_dir`) is removed with a warning line, so that it
    is rebuilt from the image: the cache never makes a good slide fail.
    """
    if not target.exists():
        return None
    try:
        return open_pyramid_dir(target, path)
    except CacheDamagedError as exc:
        warnings.warn(f"{target}: {exc.damage}; it is rebuilt from the image", UserWarning, stacklevel=3)
        shutil.rmtree(target, ignore_errors=True)
        return None
