"""Lazy access to whole-slide and flat histology images.

Tiled TIFF-family files (Aperio SVS, pyramidal/OME TIFF, tiled TIFF, also with
JPEG-2000 tiles) are opened through tifffile's zarr interface, so a read only
decodes the tiles it touches. Flat images (JPEG, PNG, large non-tiled TIFFs)
cannot be read by tile: they are decoded once into an on-disk zarr pyramid under
``$HISTOSGE_CACHE/pyramids/`` which later opens reuse.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .errors import InputError

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".btf", ".bif", ".qptiff")
FLAT_SUFFIXES = (".jpg", ".jpeg", ".png")
SUPPORTED_SUFFIXES = TIFF_SUFFIXES + FLAT_SUFFIXES

PYRAMID_VERSION = 1
PYRAMID_CHUNK = 512
PYRAMID_MIN_SIZE = 1024
# Non-tiled TIFFs at most this large are read directly instead of building a pyramid.
FLAT_DIRECT_MAX = 2048

# Micrometres per unit for TIFF ResolutionUnit values we trust (2 = inch is not trusted).
_RES_UNIT_UM = {3: 1e4, "CENTIMETER": 1e4, 4: 1e3, 5: 1.0}


def cache_root() -> Path:
    """The cache folder: ``$HISTOSGE_CACHE`` or ``~/.cache/napari-histosge``."""
    env = os.environ.get("HISTOSGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "napari-histosge"


def file_fingerprint(path: str | os.PathLike) -> str:
    """Resolved path, size and mtime of a file: changes whenever the file does."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


class _Level:
    """One pyramid level: a raw zarr array with its axes, read as (H, W, 3) uint8."""

    def __init__(self, raw: Any, axes: str) -> None:
        self.raw = raw
        self.axes = axes
        self.height = int(raw.shape[axes.index("Y")])
        self.width = int(raw.shape[axes.index("X")])

    def _index(self, ys: slice, xs: slice) -> tuple[tuple, str]:
        # Keep Y, X and the sample axis; take the first plane of anything else (T, Z, ...).
        idx, kept = [], ""
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

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        idx, kept = self._index(slice(y0, y1), slice(x0, x1))
        return _to_rgb_uint8(np.asarray(self.raw[idx]), kept)

    def to_dask(self) -> da.Array:
        idx, kept = self._index(slice(None), slice(None))
        return _to_rgb_uint8(da.from_zarr(self.raw)[idx], kept)


def _to_rgb_uint8(a: Any, axes: str) -> Any:
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


class Slide:
    """A lazily read image pyramid.

    Attributes
    ----------
    path
        The file opened.
    levels
        ``(H, W, 3)`` uint8 dask arrays, largest first; never loaded whole.
    downsamples
        Level-0 pixels per level pixel, ``1.0`` first.
    mpp
        Micrometres per level-0 pixel from the file's metadata, or ``None``.
    shape
        ``(height, width)`` of level 0.
    """

    def __init__(self, path: str, levels: list[_Level], mpp: float | None, handle: Any = None) -> None:
        self.path = path
        self._levels = levels
        self._handle = handle  # keeps the TiffFile open while dask arrays refer to it
        self.levels: list[da.Array] = [lv.to_dask() for lv in levels]
        h0, w0 = levels[0].height, levels[0].width
        self.shape: tuple[int, int] = (h0, w0)
        self.downsamples: list[float] = [
            float((h0 / lv.height + w0 / lv.width) / 2) for lv in levels
        ]
        self.downsamples[0] = 1.0
        self.mpp = mpp

    def __repr__(self) -> str:
        return f"Slide({self.path!r}, shape={self.shape}, levels={len(self.levels)}, mpp={self.mpp})"

    def close(self) -> None:
        """Close the underlying file handle (the slide is unusable afterwards)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        """
        if not 0 <= level < len(self._levels):
            raise IndexError(f"level {level} out of range (slide has {len(self._levels)})")
        lv = self._levels[level]
        x0, y0, width, height = int(x0), int(y0), int(width), int(height)
        out = np.full((max(height, 0), max(width, 0), 3), 255, np.uint8)
        ya, yb = max(y0, 0), min(y0 + height, lv.height)
        xa, xb = max(x0, 0), min(x0 + width, lv.width)
        if ya < yb and xa < xb:
            try:
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = lv.read(ya, yb, xa, xb)
            except Exception as exc:  # decoder errors of corrupt tiles vary by codec
                raise InputError(f"cannot decode image data (corrupt tile?): {exc}", self.path) from exc
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
            ``(n, out_size, out_size, 3)`` uint8.
        """
        from PIL import Image

        centers = np.asarray(centers_xy, dtype=np.float64).reshape(-1, 2)
        out = np.empty((len(centers), out_size, out_size, 3), np.uint8)
        size0 = float(size_px) * scale
        level = self.best_level(size0, out_size)
        ds = self.downsamples[level]
        side = size0 / ds  # patch edge in this level's px (float)
        for i, (cx, cy) in enumerate(centers * (scale / ds)):
            bx0, by0 = cx - side / 2, cy - side / 2
            # One extra pixel around the box so the resampling kernel has context.
            ix0, iy0 = int(np.floor(bx0)) - 1, int(np.floor(by0)) - 1
            ix1, iy1 = int(np.ceil(bx0 + side)) + 1, int(np.ceil(by0 + side)) + 1
            region = self.read_region(ix0, iy0, ix1 - ix0, iy1 - iy0, level)
            box = (bx0 - ix0, by0 - iy0, bx0 - ix0 + side, by0 - iy0 + side)
            img = Image.fromarray(region).resize((out_size, out_size), Image.BILINEAR, box=box)
            out[i] = np.asarray(img)
        return out


# --------------------------------------------------------------------------- metadata


def _svs_mpp(description: str) -> float | None:
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    return float(m.group(1)) if m else None


def _ome_mpp(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit)
            return float(el.attrib["PhysicalSizeX"]) * factor if factor else None
    return None


def _tiff_mpp(tf: Any) -> float | None:
    page = tf.pages[0]
    if tf.is_svs:
        return _svs_mpp(page.description)
    if tf.is_ome and tf.ome_metadata:
        mpp = _ome_mpp(tf.ome_metadata)
        if mpp:
            return mpp
    xres = page.tags.get("XResolution")
    if xres is None:
        return None
    num, den = xres.value
    if not num or not den:
        return None
    px_per_unit = num / den
    unit = page.tags.get("ResolutionUnit")
    unit_value = unit.value if unit is not None else None
    um_per_unit = _RES_UNIT_UM.get(int(unit_value)) if unit_value is not None else None
    ij = tf.imagej_metadata or {}
    if str(ij.get("unit", "")).lower() in ("micron", "um", "µm", "\\u00b5m"):
        um_per_unit = 1.0
    if um_per_unit is None or (px_per_unit <= 1.0 and um_per_unit != 1.0):
        # px_per_unit == 1 is tifffile's default placeholder, not a measurement.
        return None
    return um_per_unit / px_per_unit


# --------------------------------------------------------------------------- opening


@contextmanager
def _pil_no_size_limit():
    """Lift Pillow's decompression-bomb limit for our own slide reads only."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _decode_flat(path: Path) -> np.ndarray:
    """Decode a whole flat image to (H, W, 3) uint8."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            return np.ascontiguousarray(_to_rgb_uint8(series.asarray(), series.axes))
    from PIL import Image

    with _pil_no_size_limit(), Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im).astype(np.float64) / 65535.0
            return np.ascontiguousarray(_to_rgb_uint8(arr, "YX"))
        return np.asarray(im.convert("RGB"))


def _pyramid_dir(path: Path, root: Path) -> Path:
    key = hashlib.sha256(f"{file_fingerprint(path)}|v{PYRAMID_VERSION}".encode()).hexdigest()[:32]
    return root / "pyramids" / key


def _build_pyramid(path: Path, target: Path) -> None:
    """Decode ``path`` once and write a zarr pyramid to ``target`` atomically."""
    import zarr
    from PIL import Image

    rgb = _decode_flat(path)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError("image has zero size", path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        group = zarr.open_group(str(tmp), mode="w")
        img = Image.fromarray(rgb)
        level = 0
        while True:
            arr = np.asarray(img)
            chunks = (min(PYRAMID_CHUNK, arr.shape[0]), min(PYRAMID_CHUNK, arr.shape[1]), 3)
            z = group.create_array(str(level), shape=arr.shape, chunks=chunks, dtype="uint8")
            z[:] = arr
            if max(img.size) < PYRAMID_MIN_SIZE or min(img.size) < 2:
                break
            img = img.reduce(2)  # 2x2 box average: antialiased halving
            level += 1
        group.attrs["source"] = str(path)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same pyramid first: keep theirs.
            if not (target / "0").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _open_pyramid_dir(target: Path) -> list[_Level]:
    import zarr

    group = zarr.open_group(str(target), mode="r")
    names = sorted((k for k in group.array_keys()), key=int)
    return [_Level(group[k], "YXS") for k in names]


def _open_flat(path: Path, root: Path) -> Slide:
    target = _pyramid_dir(path, root)
    if not (target / "0").exists():
        _build_pyramid(path, target)
    return Slide(str(path), _open_pyramid_dir(target), None)


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
        shape = dict(zip(axes, series.shape))
        if shape["Y"] == 0 or shape["X"] == 0:
            raise InputError("image has zero size", path)
        mpp = _tiff_mpp(tf)
        page = series.pages[0] if series.pages else tf.pages[0]
        tiled = bool(getattr(page, "is_tiled", False))
        if not tiled and len(series.levels) == 1 and max(shape["Y"], shape["X"]) > FLAT_DIRECT_MAX:
            tf.close()
            slide = _open_flat(path, root)
            slide.mpp = mpp
            return slide
        store = series.aszarr()
        node = zarr.open(store, mode="r")
        if isinstance(node, zarr.Group):
            arrays = [node[str(i)] for i in range(len(series.levels))]
        else:
            arrays = [node]
        levels = [_Level(a, lv.axes) for a, lv in zip(arrays, series.levels)]
        # Skip broken levels (zero-sized or not smaller than the one before).
        kept = [levels[0]]
        for lv in levels[1:]:
            if 0 < lv.height <= kept[-1].height and 0 < lv.width <= kept[-1].width:
                kept.append(lv)
        # Decode one pixel now so corrupt tiles fail here with a clear message.
        kept[-1].read(0, 1, 0, 1)
        return Slide(str(path), kept, mpp, handle=tf)
    except BaseException:
        tf.close()
        raise


def open_slide(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Slide:
    """Open a histology image lazily.

    Parameters
    ----------
    path
        An SVS, (pyramidal/OME) TIFF, JPEG or PNG file.
    cache_dir
        Cache root for pyramids built from flat images; default ``$HISTOSGE_CACHE``
        or ``~/.cache/napari-histosge``.

    Returns
    -------
    Slide

    Raises
    ------
    InputError
        If the file is missing, of an unsupported type, corrupt or empty.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("image file not found", p)
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
        return _open_flat(p, root)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile, PIL and imagecodecs raise many types for bad files
        raise InputError(f"cannot read image (corrupt or truncated file?): {exc}", p) from exc
