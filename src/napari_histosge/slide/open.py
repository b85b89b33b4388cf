"""Lazy access to whole-slide and flat histology images.

Tiled TIFF-family files (Aperio SVS, pyramidal/OME TIFF, tiled TIFF, also with
JPEG-2000 tiles) are opened through tifffile's zarr interface: opening reads
only metadata, and a read decodes only the tiles it touches. Flat images (JPEG,
PNG, large non-tiled TIFFs, and tiled TIFFs of one level larger than
:data:`TILED_DIRECT_MAX`, which a viewer would otherwise read whole) are converted once
into an on-disk zarr pyramid
under ``$HISTOSGE_CACHE/pyramids/`` which later opens reuse (see
:mod:`napari_histosge.slide.flat_pyramid`). An OME-Zarr multiscale image folder (the
image element of a SpatialData store) is opened with zarr as it is. Nothing ever decodes more than
:func:`~napari_histosge.slide.pyramid.max_decode_pixels` at once: such requests are
refused with an :class:`~napari_histosge.errors.InputError`.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..io.detect import is_ome_zarr_image, ome_multiscales
from .flat_pyramid import (
    CacheWriteError,
    Deferred,
    build_pyramid,
    deferred_pyramid,
    open_cached_pyramid,
    open_pyramid_dir,
    pil_rgb,
    pyramid_dir,
    pyramid_in_memory,
    pyramid_of_pixels,
)
from .meta import tiff_mpp
from .patches import plan_patches, read_cached, render_patches
from .pyramid import PIL_SUFFIXES, Level, LevelArray, TileCache, check_decode_size, max_decode_pixels
from .pyramid import file_fingerprint as file_content_fingerprint

if TYPE_CHECKING:  # dask is imported on first use of Slide.levels: showing a slide does not need it
    import dask.array as da

__all__ = [
    "FLAT_SUFFIXES", "SUPPORTED_SUFFIXES", "TIFF_SUFFIXES", "Slide", "cache_root",
    "file_fingerprint", "is_ome_zarr_image", "is_slide_image", "max_decode_pixels", "open_slide",
]

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".btf", ".bif", ".qptiff")
FLAT_SUFFIXES = PIL_SUFFIXES
SUPPORTED_SUFFIXES = TIFF_SUFFIXES + FLAT_SUFFIXES


def is_slide_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bare slide image file (SVS, TIFF, NDPI, JPEG, PNG, ...) by its suffix."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES

# Non-tiled TIFFs at most this large are read directly instead of building a pyramid.
FLAT_DIRECT_MAX = 2048
#: Tiled TIFFs of one level larger than this get a cached pyramid too (napari would read them whole).
TILED_DIRECT_MAX = 8192
#: A JPEG/PNG at least this large opened for display (``background_cache``) is shown from memory
#: while its cached pyramid is written in a background thread...
BACKGROUND_MIN_PIXELS = 4096 * 4096
#: ... and at most this large: a larger one would hold gigabytes in memory for the session, so it
#: opens once its pyramid is written, as outside a viewer.
BACKGROUND_MAX_PIXELS = 400_000_000
#: Bytes of decoded tiles a slide keeps for reuse between patch reads.
TILE_CACHE_BYTES = 256 * 2**20
_DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


def file_fingerprint(path: str | os.PathLike) -> str:
    """What the feature and pyramid caches are keyed on: the file's content digest.

    For an OME-Zarr image folder: a digest of its metadata and of every chunk file's name
    and size, with the content of the first and last chunk of level 0 (a rewritten image
    changes them; reading every chunk of a slide would cost as much as reading the slide).
    See :func:`napari_histosge.slide.pyramid.file_fingerprint` for files.
    """
    p = Path(path)
    if not p.is_dir():
        return file_content_fingerprint(p)
    import hashlib

    digest = hashlib.sha256(b"ome-zarr")
    try:
        files = sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            rel = f.relative_to(p).as_posix()
            digest.update(f"{rel}:{f.stat().st_size}".encode())
            if f.name in ("zarr.json", ".zattrs", ".zarray"):
                digest.update(f.read_bytes())
        chunks = [f for f in files if f.name not in ("zarr.json", ".zattrs", ".zarray", ".zgroup")]
        for f in chunks[:1] + chunks[-1:]:
            digest.update(f.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read the image ({exc.strerror or exc})", p) from None
    return digest.hexdigest()


def cache_root() -> Path:
    """The cache folder: ``$HISTOSGE_CACHE`` or ``~/.cache/napari-histosge``."""
    env = os.environ.get("HISTOSGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-histosge"


class Slide:
    """A lazily read image pyramid.

    Attributes
    ----------
    path
        The file opened.
    levels
        ``(H, W, 3)`` uint8 dask arrays, largest first, one chunk per tile; never loaded whole.
    display_levels
        The same levels as numpy-like arrays read through the slide's tile cache: what
        napari shows (opening a slide for display then needs no dask).
    downsamples
        Level-0 pixels per level pixel, ``1.0`` first.
    mpp
        Micrometres per level-0 pixel from the file's metadata, or ``None``.
    shape
        ``(height, width)`` of level 0.
    tiles_decoded
        Tiles decoded so far by :meth:`read_patches` and the display levels (each at most once while cached).
    """

    def __init__(self, path: str, levels: list[Level], mpp: float | None, handle: Any = None) -> None:
        self.path = path
        self._levels = levels
        self._handle = handle  # keeps the TiffFile open while dask arrays refer to it
        self._cache = TileCache(TILE_CACHE_BYTES)
        self._pool: ThreadPoolExecutor | None = None
        self._dask_levels: list[da.Array] | None = None
        #: The background thread writing this slide's cached pyramid (``open_slide(background_cache=True)``).
        self.cache_build: threading.Thread | None = None
        #: Set once the full-resolution pixels are there, for a slide shown from a preview first (else ``None``).
        self.ready: threading.Event | None = None
        self.display_levels: list[LevelArray] = [
            LevelArray(lv, partial(self._read_display, i)) for i, lv in enumerate(levels)]
        h0, w0 = levels[0].height, levels[0].width
        self.shape: tuple[int, int] = (h0, w0)
        self.downsamples: list[float] = [float((h0 / lv.height + w0 / lv.width) / 2) for lv in levels]
        self.downsamples[0] = 1.0
        self.mpp = mpp

    def wait_ready(self) -> None:
        """Wait until a slide shown from a preview has its full-resolution pixels (at once for any other).

        Raises
        ------
        InputError
            If decoding the image behind the preview failed.
        """
        if self.ready is None:
            return
        self.ready.wait()
        error = getattr(self._levels[0].raw, "error", None)
        if error is not None:
            raise InputError(f"cannot decode the image ({type(error).__name__}: {error})", self.path)

    @property
    def levels(self) -> list[da.Array]:
        """The levels as lazy dask arrays (made on first use), largest first."""
        self.wait_ready()
        if self._dask_levels is None:
            # the file's fingerprint names the dask tasks, so equal slides share dask's cache keys
            tag = abs(hash(file_fingerprint(self.path))) if os.path.exists(self.path) else id(self)
            self._dask_levels = [lv.to_dask(f"histosge-slide-{tag}-{i}") for i, lv in enumerate(self._levels)]
        return self._dask_levels

    def _read_display(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.ready is not None and not self.ready.is_set():  # the preview: not kept in the tile cache
            return self._levels[level].read(y0, y1, x0, x1)
        return read_cached(self._levels[level], level, y0, y1, x0, x1, self._cache, self._decode_pool())

    def __repr__(self) -> str:
        return f"Slide({self.path!r}, shape={self.shape}, levels={len(self.levels)}, mpp={self.mpp})"

    @property
    def tiles_decoded(self) -> int:
        """How many tiles were decoded so far (tiles served from the cache are not counted)."""
        return self._cache.decoded

    def close(self) -> None:
        """Close the underlying file handle (the slide is unusable afterwards)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _level(self, level: int) -> Level:
        if not 0 <= level < len(self._levels):
            raise IndexError(f"level {level} out of range (slide has {len(self._levels)})")
        return self._levels[level]

    def read_region(self, x0: int, y0: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """Read a rectangle of one level, padded with white outside the image.

        Parameters
        ----------
        x0, y0
            Top-left corner in that level's pixels (may be negative).
        width, height
            Size of the rectangle in that level's pixels.
        level
            Pyramid level index.

        Returns
        -------
        numpy.ndarray
            ``(height, width, 3)`` uint8.

        Raises
        ------
        InputError
            If the region is larger than :func:`~napari_histosge.slide.pyramid.max_decode_pixels`
            (e.g. a whole gigapixel level), or a tile under it is corrupt.
        """
        self.wait_ready()
        lv = self._level(level)
        x0, y0, width, height = int(x0), int(y0), int(width), int(height)
        check_decode_size(max(height, 0), max(width, 0), f"reading a region of level {level}", self.path,
                          "; read it by tiles (Slide.levels are lazy dask arrays) or use a coarser level")
        out = np.full((max(height, 0), max(width, 0), 3), 255, np.uint8)
        ya, yb = max(y0, 0), min(y0 + height, lv.height)
        xa, xb = max(x0, 0), min(x0 + width, lv.width)
        if ya < yb and xa < xb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = lv.read(ya, yb, xa, xb)
        return out

    def best_level(self, size_level0: float, out_size: int) -> int:
        """Coarsest level on which ``size_level0`` px still span ``>= out_size`` px."""
        best = 0
        for i, ds in enumerate(self.downsamples):
            if size_level0 / ds >= out_size:
                best = i
        return best

    def read_patches(
        self, centers_xy: np.ndarray, size_px: float, out_size: int, *, scale: float = 1.0
    ) -> np.ndarray:
        """Read square patches around points, resized with antialiasing.

        Tiles are decoded once per call (and kept in a bounded cache for the next
        call), in parallel threads, and only the tiles under the patches are read.

        Parameters
        ----------
        centers_xy
            ``(n, 2)`` patch centres ``(x, y)`` in the spot coordinate system (full-res px).
        size_px
            Patch edge in full-res px.
        out_size
            Edge of the returned patches in px.
        scale
            Slide level-0 px per full-res px (e.g. 0.045 for a Visium lowres image).

        Returns
        -------
        numpy.ndarray
            ``(n, out_size, out_size, 3)`` uint8, in the order of ``centers_xy``.

        Raises
        ------
        InputError
            If one patch would need more pixels in memory than
            :func:`~napari_histosge.slide.pyramid.max_decode_pixels` (see
            :func:`~napari_histosge.slide.patches.check_patch_size`).
        """
        self.wait_ready()
        centers = np.asarray(centers_xy, dtype=np.float64).reshape(-1, 2)
        size0 = float(size_px) * scale
        level = self.best_level(size0, out_size)
        lv = self._levels[level]
        plan = plan_patches(lv, centers * (scale / self.downsamples[level]), size0 / self.downsamples[level],
                            full_res_px=float(size_px))
        return render_patches(lv, level, plan, out_size, self._cache, self._decode_pool())

    def _decode_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_DECODE_THREADS, thread_name_prefix="histosge-tiles")
        return self._pool


# --------------------------------------------------------------------------- opening


def _open_flat(path: Path, root: Path, background: bool = False) -> Slide:
    target = pyramid_dir(path, root)
    levels = open_cached_pyramid(target, str(path))  # a damaged one is removed (with a warning) and rebuilt
    rgb = None
    if levels is None and background and path.suffix.lower() in PIL_SUFFIXES:
        deferred, raws = deferred_pyramid(path)  # a preview decoded at an eighth of the size: quick
        if BACKGROUND_MIN_PIXELS <= deferred[0].height * deferred[0].width <= BACKGROUND_MAX_PIXELS:
            # shown from the preview at once; decoded whole, then its cache written, in a background thread
            slide = Slide(str(path), deferred, None)
            slide.ready = threading.Event()
            slide.cache_build = threading.Thread(target=_decode_behind, args=(path, target, raws, slide.ready),
                                                 name=f"histosge-pyramid-{path.name}")
            slide.cache_build.start()
            return slide
    if levels is None:
        try:
            build_pyramid(path, target, rgb)
            levels = open_pyramid_dir(target, str(path))
        except CacheWriteError as exc:  # the cache's problem, not the slide's: this run's pyramid in memory
            levels = pyramid_in_memory(path, exc)
    return Slide(str(path), levels, None)


def _decode_behind(path: Path, target: Path, raws: list[Deferred], ready: threading.Event) -> None:
    """Decode ``path`` whole, put its levels behind the previews ``raws``, set ``ready``, then write its cache."""
    try:
        rgb = pil_rgb(path)
        for raw, level in zip(raws, pyramid_of_pixels(rgb, path), strict=True):
            raw.real = level.raw
    except Exception as exc:  # the preview stays; reads of full-resolution pixels then fail with it
        for raw in raws:
            raw.error = exc
        ready.set()
        return
    ready.set()
    _build_quietly(path, target, rgb)


def _build_quietly(path: Path, target: Path, rgb: np.ndarray) -> None:
    """Write the cached pyramid in a background thread; a failure only means the next open builds it."""
    try:
        build_pyramid(path, target, rgb, background=True)
    except Exception as exc:  # a cache that cannot be written is not the slide's problem
        if not threading.main_thread().is_alive():
            return  # the program ended first (zarr can no longer write): the next open builds it
        warnings.warn(f"{path.name}: the pyramid cache was not written ({exc}); the next open builds it again",
                      UserWarning, stacklevel=1)


def _open_tiff(path: Path, root: Path) -> Slide:
    import tifffile
    import zarr

    tf = tifffile.TiffFile(path)
    try:
        if not tf.series:
            raise InputError("no image found in the TIFF file", path)
        series = tf.series[0]
        axes = series.axes
        if 0 in series.shape or not series.shape:
            raise InputError("image has zero size", path)
        if "Y" not in axes or "X" not in axes:
            raise InputError(f"TIFF image has no Y/X axes (axes {axes!r})", path)
        shape = dict(zip(axes, series.shape, strict=True))
        mpp = tiff_mpp(tf)
        page = series.pages[0] if series.pages else tf.pages[0]
        tiled = bool(getattr(page, "is_tiled", False))
        direct_max = TILED_DIRECT_MAX if tiled else FLAT_DIRECT_MAX
        if len(series.levels) == 1 and max(shape["Y"], shape["X"]) > direct_max:
            tf.close()
            slide = _open_flat(path, root)
            slide.mpp = mpp
            return slide
        node = zarr.open(series.aszarr(), mode="r")
        arrays = [node[str(i)] for i in range(len(series.levels))] if isinstance(node, zarr.Group) else [node]
        levels = []
        # a store holding one array (not a group) serves only the first level
        for i, (a, s) in enumerate(zip(arrays, series.levels, strict=False)):
            lv_page = s.keyframe if hasattr(s, "keyframe") else None
            levels.append(Level(a, s.axes, path=str(path), index=i, page=lv_page))
        # Skip broken levels (zero-sized or not smaller than the one before).
        kept = [levels[0]]
        for lv in levels[1:]:
            if 0 < lv.height <= kept[-1].height and 0 < lv.width <= kept[-1].width:
                lv.index = len(kept)
                kept.append(lv)
        # Decode one pixel now so a file whose tiles are all unreadable fails here.
        kept[-1].read(0, 1, 0, 1)
        return Slide(str(path), kept, mpp, handle=tf)
    except BaseException:
        tf.close()
        raise


def _open_ome_zarr(path: Path) -> Slide:
    """An OME-Zarr multiscale image as a slide: level 0 first, channels as RGB (``c``, ``y``, ``x``)."""
    import zarr

    multiscales = ome_multiscales(path) or {}
    axes = "".join(str(a.get("name", a) if isinstance(a, dict) else a).upper() for a in multiscales.get("axes", []))
    datasets = [d.get("path") for d in multiscales.get("datasets", []) if isinstance(d, dict)]
    if "Y" not in axes or "X" not in axes or not datasets:
        raise InputError(f"the OME-Zarr image has no y/x axes or no levels (axes {axes.lower()!r})", path)
    group = zarr.open_group(str(path), mode="r")
    levels = [Level(group[str(d)], axes, path=str(path), index=i) for i, d in enumerate(datasets)]
    if 0 in (levels[0].height, levels[0].width):
        raise InputError("image has zero size", path)
    levels[-1].read(0, 1, 0, 1)  # a store whose chunks are unreadable fails here, not in a worker
    return Slide(str(path), levels, None)


def open_slide(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
               background_cache: bool = False) -> Slide:
    """Open a histology image lazily.

    Parameters
    ----------
    path
        An SVS, (pyramidal/OME) TIFF, JPEG or PNG file, or an OME-Zarr multiscale image
        folder (e.g. ``store.zarr/images/<name>`` of a SpatialData store).
    cache_dir
        Cache root for pyramids built from flat images; default ``$HISTOSGE_CACHE``
        or ``~/.cache/napari-histosge``.
    background_cache
        For a viewer: a large JPEG/PNG without a cached pyramid is shown from memory at once
        and its pyramid written to the cache in a background thread (``Slide.cache_build``),
        instead of opening only once the pyramid is written.

    Returns
    -------
    Slide

    Raises
    ------
    InputError
        If the file is missing, of an unsupported type, corrupt or empty, or a
        flat JPEG/PNG too large to decode (see :func:`max_decode_pixels`).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("image file not found", p)
    if p.is_dir() and is_ome_zarr_image(p):
        try:
            return _open_ome_zarr(p)
        except InputError:
            raise
        except Exception as exc:  # zarr and its codecs raise many types for a damaged store
            raise InputError(f"cannot read the OME-Zarr image: {exc}", p) from exc
    if not p.is_file():
        raise InputError("expected an image file, got a folder", p)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"unsupported image type {suffix or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}",
            p,
        )
    if p.stat().st_size == 0:
        raise InputError("image file is empty (0 bytes)", p)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    try:
        if suffix in TIFF_SUFFIXES:
            return _open_tiff(p, root)
        return _open_flat(p, root, background_cache)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile, PIL and imagecodecs raise many types for bad files
        raise InputError(f"cannot read image (corrupt or truncated file?): {exc}", p) from exc
