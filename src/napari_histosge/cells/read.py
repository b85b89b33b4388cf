"""Users' segmentations read as cells: label images and GeoJSON polygons, checked against the slide.

A label image (TIFF/OME-TIFF, PNG, ``.npy`` or a zarr array; 0 = background, one integer per
cell) is what StarDist, Cellpose and napari's Labels layers save. It lies on the slide at its
own size (the slide's full resolution), at a stated scale (full-resolution pixels per label
pixel), or at the scale its pixel size implies (OME/TIFF metadata, or the ``px_per_label_px``
the detector stores in a zarr array's attributes). A GeoJSON file of polygons (QuPath's cell
or detection export) gives one cell per Feature, in full-resolution pixels (QuPath's
annotations are regions, not cells: they are left out); it is drawn into a label raster and
its table comes from the polygons themselves (centroid and area exactly).

Every check runs before any work and fails with one line: a label image of another size or
pixel size than the slide without a stated scale, an empty segmentation, cells off the slide,
polygons in another coordinate system.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..slide.mask import geojson_polygons, ring_points
from ..slide.meta import tiff_mpp
from ..slide.pyramid import check_decode_size
from .segmentation import GEOJSON_SUFFIXES, Segmentation, cell_table, segmentation_from_labels

__all__ = ["GEOJSON_SUFFIXES", "LABEL_SUFFIXES", "read_cell_polygons", "read_label_image", "read_segmentation",
           "segmentation_of_array", "segmentation_of_polygons"]

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")
#: A label image may be off the slide's size by this many of its own pixels (rounding of a downscale).
SIZE_SLACK_PX = 1.0
#: Label rasters drawn from polygons have at most this many pixels (coarser beyond).
MAX_POLYGON_RASTER_PIXELS = 2**28


def read_segmentation(path: str | os.PathLike, slide_shape: tuple[int, int], *, mpp: float | None = None,
                      scale: float | None = None, nuclei: bool = False) -> Segmentation:
    """A label image or a GeoJSON file of cells, by its suffix.

    See :func:`read_label_image` and :func:`read_cell_polygons` (``nuclei``: QuPath's nucleus
    outlines of its cells).
    """
    p = Path(path).expanduser()
    if p.suffix.lower() in GEOJSON_SUFFIXES:
        if scale is not None:
            raise InputError("a scale applies to label images; GeoJSON polygons are in the slide's "
                             "full-resolution pixels", p)
        return read_cell_polygons(p, slide_shape, mpp=mpp, nuclei=nuclei)
    if nuclei:
        raise InputError("nucleus outlines apply to QuPath's GeoJSON cells, not to a label image", p)
    return read_label_image(p, slide_shape, mpp=mpp, scale=scale)


def _load_labels(p: Path) -> tuple[Any, float | None, float | None]:
    """The label array (numpy, memory-mapped or zarr: never read whole), its pixel size in µm and stored scale."""
    suffix = p.suffix.lower()
    try:
        if suffix == ".zarr":
            import zarr

            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Group):  # an OME-Zarr labels image: its finest level
                node = node[sorted(k for k in node.array_keys())[0]]
            stored = node.attrs.get("px_per_label_px")
            return node, None, float(stored) if isinstance(stored, (int, float)) and stored else None
        if suffix == ".npy":
            return np.load(p, mmap_mode="r"), None, None
        if suffix in (".tif", ".tiff"):
            return _tiff_labels(p)
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im), None, None
    except InputError:
        raise
    except Exception as exc:  # tifffile, PIL, numpy and zarr raise many types for bad files
        raise InputError(f"cannot read the label image (corrupt or not an image?): {exc}", p) from exc


def _tiff_labels(p: Path) -> tuple[Any, float | None, None]:
    """A TIFF label image read lazily: memory-mapped when stored contiguously, else chunk by chunk (zarr)."""
    import tifffile
    import zarr

    with tifffile.TiffFile(p) as tf:
        series = tf.series[0]
        mpp = tiff_mpp(tf)
        contiguous = series.dataoffset is not None and len(series.levels) == 1
    if contiguous:
        return tifffile.memmap(p, series=0, mode="r"), mpp, None
    node: Any = zarr.open(tifffile.imread(p, aszarr=True, series=0, level=0), mode="r")
    if isinstance(node, zarr.Group):
        node = node["0"]
    # a strip as wide and as tall as the image is decoded for every block read: it must fit in memory
    check_decode_size(node.chunks[-2], node.chunks[-1], "decoding one strip of this label image", p)
    return node, mpp, None


def _plane(labels: Any) -> Any:
    """The 2-D plane of an array whose other axes are all 1 (``(1, h, w)``, OME-Zarr's ``(1, 1, 1, h, w)``).

    Indexed lazily: a zarr array becomes a dask view, so a gigapixel raster is never read whole.
    """
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) <= 2:
        return labels
    kept = [i for i, n in enumerate(shape) if n != 1]
    if len(kept) > 2:
        return labels
    kept = kept if len(kept) == 2 else list(range(len(shape) - 2, len(shape)))
    index = tuple(slice(None) if i in kept else 0 for i in range(len(shape)))
    if isinstance(labels, np.ndarray):
        return labels[index]
    import dask.array as da

    return (labels if isinstance(labels, da.Array) else da.from_zarr(labels))[index]


def _check_plane(labels: Any, p: Path) -> Any:
    labels = _plane(labels)
    if len(labels.shape) != 2 or 0 in labels.shape:
        raise InputError(f"a label image must be one 2-D plane of integers, got shape {tuple(labels.shape)} "
                         "(an RGB picture is not a label image)", p)
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise InputError(f"a label image must hold integers (0 = background), got {labels.dtype}", p)
    return labels


def _label_scale(shape: tuple[int, int], slide_shape: tuple[int, int], scale: float | None,
                 label_mpp: float | None, mpp: float | None, p: Path) -> float:
    """Full-resolution pixels per label pixel: stated, implied by pixel sizes, or 1 at the slide's size."""
    (h, w), (sh, sw) = shape, slide_shape
    how = "at the stated scale"
    if scale is None and (h, w) == (sh, sw):
        return 1.0
    if scale is None and label_mpp and mpp:
        scale, how = label_mpp / mpp, f"at its pixel size ({label_mpp:.3g} µm, the slide's {mpp:.3g} µm)"
    if scale is None:
        raise InputError(f"the label image is {w} x {h} px but the slide is {sw} x {sh} px; state its scale "
                         "(full-resolution pixels per label pixel, --label-scale)", p)
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"the label image's scale must be positive, got {scale}", p)
    slack = SIZE_SLACK_PX * scale + 1
    if abs(w * scale - sw) > slack or abs(h * scale - sh) > slack:
        raise InputError(f"the label image ({w} x {h} px) {how} covers {w * scale:.0f} x {h * scale:.0f} "
                         f"full-resolution px, but the slide is {sw} x {sh} px: another image or another "
                         "pixel size", p)
    return float(scale)


def read_label_image(path: str | os.PathLike, slide_shape: tuple[int, int], *, mpp: float | None = None,
                     scale: float | None = None) -> Segmentation:
    """Read a label image as cells on a slide of ``slide_shape`` = ``(height, width)`` full-res px.

    Parameters
    ----------
    path
        TIFF/OME-TIFF, PNG, ``.npy`` or zarr label image: one integer per cell, 0 = background.
    slide_shape
        The slide's ``(height, width)`` in full-resolution pixels.
    mpp
        Micrometres per full-resolution pixel (for areas in µm² and pixel-size checks).
    scale
        Full-resolution pixels per label pixel; needed when the image's size differs from the
        slide's and no pixel size says it.

    Raises
    ------
    InputError
        If the file is missing or unreadable, not one plane of integers, of another size or
        pixel size than the slide without a stated scale, or empty.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("label image not found", p)
    if p.suffix.lower() not in LABEL_SUFFIXES:
        raise InputError(f"unsupported segmentation type {p.suffix or '(no extension)'!r}; label images: "
                         f"{', '.join(LABEL_SUFFIXES)}; polygons: {', '.join(GEOJSON_SUFFIXES)}", p)
    labels, label_mpp, stored = _load_labels(p)
    return segmentation_of_array(labels, slide_shape, mpp=mpp, scale=scale if scale is not None else stored,
                                 label_mpp=label_mpp, source=str(p))


def segmentation_of_array(labels: Any, slide_shape: tuple[int, int], *, mpp: float | None = None,
                          scale: float | None = None, label_mpp: float | None = None,
                          source: str = "label image") -> Segmentation:
    """A label array in memory (a napari Labels layer's data, say) as cells on a slide.

    The same checks as :func:`read_label_image`: one plane of integers, of the slide's size
    or at a stated scale (or one its pixel size ``label_mpp`` implies), not empty.
    """
    where = Path(source)
    labels = _check_plane(labels, where)
    shape = (int(labels.shape[0]), int(labels.shape[1]))
    f = _label_scale(shape, (int(slide_shape[0]), int(slide_shape[1])), scale, label_mpp, mpp, where)
    return segmentation_from_labels(labels, f, mpp=mpp, source=source)


# --------------------------------------------------------------------------- polygons


#: QuPath object types that are not cells: regions drawn over the tissue, tiles, the image's root.
NOT_CELLS = ("annotation", "tile", "root", "rootobject")


def _object_type(item: dict) -> str:
    """QuPath's object type of a Feature: ``objectType`` (QuPath 0.3+), ``object_type`` or the class id (0.2)."""
    props = item.get("properties")
    props = props if isinstance(props, dict) else {}
    kind = props.get("objectType", props.get("object_type"))
    if not isinstance(kind, str) and isinstance(item.get("id"), str) and item["id"].startswith("Path"):
        kind = item["id"][len("Path"):].removesuffix("Object")  # "PathAnnotationObject" -> "Annotation"
    return kind.lower() if isinstance(kind, str) else ""


def _cells_of(data: Any, nuclei: bool = False) -> tuple[list[tuple[list, dict]], int]:
    """``(polygons, properties)`` per cell: one per Feature (a MultiPolygon is one cell of parts).

    ``nuclei``: a Feature's ``nucleusGeometry`` (QuPath's cells) where it has one. QuPath's
    annotations, tiles and root object are regions rather than cells: they are left out, and
    their count is returned with the cells.
    """
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features") or []
    items = data if isinstance(data, list) else [data]
    cells, skipped = [], 0
    for item in items:
        if not isinstance(item, dict):
            continue
        if _object_type(item) in NOT_CELLS:
            skipped += 1
            continue
        geometry = item.get("nucleusGeometry") if nuclei and item.get("nucleusGeometry") else item
        polygons = [p for p in geojson_polygons(geometry) if p]
        if polygons:
            props = item.get("properties")
            props = props if isinstance(props, dict) else {}
            cells.append((polygons, props))
    return cells, skipped


def _rings(polygons: list, p: Path) -> list[list[np.ndarray]]:
    """Each polygon's rings as ``(n, 2)`` float arrays, refused in one line when malformed."""
    out = []
    for rings in polygons:
        if not isinstance(rings, list):  # "coordinates": 5 or a MultiPolygon of numbers
            raise InputError(f"a polygon is not a list of rings of (x, y) points, got {json.dumps(rings)[:40]}", p)
        out.append([ring_points(ring, p) for ring in rings])
    return out


def _area_centroid(polygons: list[list[np.ndarray]]) -> tuple[float, float, float]:
    """Area and centroid ``(x, y)`` of polygons with holes (shoelace formula)."""
    total, sx, sy = 0.0, 0.0, 0.0
    for rings in polygons:
        for k, xy in enumerate(rings):
            x, y = xy[:, 0], xy[:, 1]
            x1, y1 = np.roll(x, -1), np.roll(y, -1)
            cross = x * y1 - x1 * y
            a = abs(cross.sum()) / 2
            sign = 1.0 if k == 0 else -1.0
            if a > 0:
                cx = ((x + x1) * cross).sum() / (6 * cross.sum() / 2)
                cy = ((y + y1) * cross).sum() / (6 * cross.sum() / 2)
                total, sx, sy = total + sign * a, sx + sign * a * cx, sy + sign * a * cy
    if total <= 0:
        xy = np.concatenate([rings[0] for rings in polygons])
        return 0.0, float(xy[:, 0].mean()), float(xy[:, 1].mean())
    return total, sx / total, sy / total


def _draw(polygons: list[list[list[np.ndarray]]], shape: tuple[int, int], f: float) -> np.ndarray:
    """A label raster of the cells (1, 2, ... in order); a pixel goes to the first cell drawn on it."""
    from skimage.draw import polygon as fill_polygon

    labels = np.zeros(shape, np.int32)
    for i, cell in enumerate(polygons, start=1):
        for rings in cell:
            for k, xy in enumerate(rings):
                # QuPath's coordinates (pixel corners at integers) -> label-pixel centres, as tissue masks read them
                rows, cols = fill_polygon(xy[:, 1] / f - 0.5, xy[:, 0] / f - 0.5, shape=shape)
                if k == 0:
                    free = labels[rows, cols] == 0
                    rows, cols = rows[free], cols[free]
                    labels[rows, cols] = i
                else:
                    hole = labels[rows, cols] == i
                    labels[rows[hole], cols[hole]] = 0
    return labels


def read_cell_polygons(path: str | os.PathLike, slide_shape: tuple[int, int], *, mpp: float | None = None,
                       nuclei: bool = False) -> Segmentation:
    """Read cell or nucleus polygons (GeoJSON, full-resolution pixels) as cells on a slide.

    Each Feature is one cell (a MultiPolygon feature one cell of several parts; holes
    honoured), labelled 1, 2, ... in file order. Coordinates are read as QuPath writes them
    and as tissue masks read them (:mod:`napari_histosge.slide.mask`): continuous, with
    full-resolution pixel ``i`` spanning ``[i, i + 1)``, so a 20 px square from 10 to 30 covers
    pixels 10 to 29 and its centroid is pixel-centre 19.5 in ``obsm["spatial"]``; QuPath's ``classification`` name, when
    present, becomes ``obs["class"]``. A few cells off the slide are dropped with a warning, as
    are QuPath's annotations, tiles and root object (regions drawn over the tissue, not cells).

    Parameters
    ----------
    path
        A ``.geojson``/``.json`` file: a FeatureCollection, a list of Features or one geometry.
    slide_shape
        The slide's ``(height, width)`` in full-resolution pixels.
    mpp
        Micrometres per full-resolution pixel (for areas in µm²).
    nuclei
        Take each Feature's ``nucleusGeometry`` (QuPath's cell export holds the nucleus outline
        there, the cell outline in ``geometry``) where it has one.

    Raises
    ------
    InputError
        If the file is missing or not JSON, holds no polygon or only annotations, or no cell lies on the slide
        (coordinates in another system: micrometres, another image's pixels).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError("segmentation file not found", p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the GeoJSON file: {exc}", p) from None
    cells, skipped = _cells_of(data, nuclei)
    if not cells and skipped:
        raise InputError(f"the GeoJSON holds only QuPath annotations ({skipped}: regions, not cells); export "
                         "the cells or detections instead", p)
    if skipped:
        warnings.warn(f"{p}: {skipped} QuPath annotation(s) (regions, not cells) are left out", UserWarning,
                      stacklevel=2)
    if not cells:
        raise InputError("the segmentation is empty: the GeoJSON holds no Polygon or MultiPolygon", p)
    return _polygon_segmentation(cells, slide_shape, mpp, p)


def segmentation_of_polygons(polygons: list[np.ndarray], slide_shape: tuple[int, int], *, mpp: float | None = None,
                             source: str = "polygons") -> Segmentation:
    """Polygons in memory (a napari Shapes layer's, say) as cells on a slide, as GeoJSON polygons are read.

    Each ``(n, 2)`` array is one cell's outline as ``(x, y)`` in the same continuous
    full-resolution pixel coordinates as :func:`read_cell_polygons` (pixel ``i`` spans
    ``[i, i + 1)``); the same checks (not empty, on the slide) apply.
    """
    if not polygons:
        raise InputError("the segmentation is empty: no polygon", source)
    cells: list[tuple[list, dict]] = [([[np.asarray(ring, np.float64).tolist()]], {}) for ring in polygons]
    return _polygon_segmentation(cells, slide_shape, mpp, Path(source))


def _polygon_segmentation(cells: list[tuple[list, dict]], slide_shape: tuple[int, int], mpp: float | None,
                          p: Path) -> Segmentation:
    """The cells of ``(polygons, properties)`` pairs: those on the slide, drawn into a label raster."""
    polygons = [_rings(c[0], p) for c in cells]
    stats = np.array([_area_centroid(c) for c in polygons])
    stats[:, 1:] -= 0.5  # corner coordinates -> the pixel-centre frame of obsm["spatial"]
    sh, sw = slide_shape
    on = (stats[:, 1] >= -0.5) & (stats[:, 1] < sw - 0.5) & (stats[:, 2] >= -0.5) & (stats[:, 2] < sh - 0.5)
    if not on.any():
        lo, hi = np.concatenate([c[0][0] for c in polygons]).min(0), np.concatenate([c[0][0] for c in polygons]).max(0)
        raise InputError(f"no cell lies on the slide ({sw} x {sh} px): the polygons span x {lo[0]:.0f}..{hi[0]:.0f}, "
                         f"y {lo[1]:.0f}..{hi[1]:.0f}; are they in another coordinate system (µm, another "
                         "image's pixels)?", p)
    if not on.all():
        warnings.warn(f"{p}: {int((~on).sum())} of {len(on)} cells lie off the slide and are left out",
                      UserWarning, stacklevel=2)
    kept = [c for c, keep in zip(polygons, on, strict=True) if keep]
    f = max(1.0, math.ceil(math.sqrt(sh * sw / MAX_POLYGON_RASTER_PIXELS)))
    labels = _draw(kept, (math.ceil(sh / f), math.ceil(sw / f)), f)
    table = cell_table(np.arange(1, len(kept) + 1), stats[on, 1:], stats[on, 0], mpp=mpp, px_per_label_px=f,
                       source=str(p))
    classes = [_class_name(props) for (_, props), keep in zip(cells, on, strict=True) if keep]
    if any(classes):
        table.obs["class"] = classes
    return Segmentation(labels, f, table, str(p))


def _class_name(props: dict) -> str:
    classification = props.get("classification")
    name = classification.get("name") if isinstance(classification, dict) else props.get("name")
    return str(name) if name else ""
