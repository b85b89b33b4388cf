"""SpatialData zarr stores in: spots from a store's shapes (or points) and table, over its image.

Reading takes the table, the shapes (circles, polygons) or points it annotates and the finest
image that shares a coordinate system with them. Positions come out in that image's level-0
pixels (the full-resolution frame of docs/architecture.md), through the elements'
transformations, and the image is recorded by its folder inside the store
(``store.zarr/images/<name>``), which :func:`napari_histosge.slide.open.open_slide` opens.

A store written by :mod:`napari_histosge.io.spatialdata_write` (predictions) reads back with
:func:`read_spatialdata_prediction`.

``spatialdata`` is an optional dependency (``pip install napari-histosge[spatialdata]``),
imported only when a store is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import build_adata, median_nn_distance, require_integer_counts, to_counts_csr
from .detect import looks_like_spatialdata

#: What to install when spatialdata is missing.
INSTALL_HINT = "pip install napari-histosge[spatialdata]"
#: Element folders a SpatialData store holds.


def require_spatialdata(path: Path | None) -> Any:
    """The ``spatialdata`` module, or an :class:`InputError` saying how to install it."""
    try:
        import spatialdata
    except ImportError:
        raise InputError(f"SpatialData stores need the spatialdata package: {INSTALL_HINT}", path) from None
    return spatialdata


def _read_store(path: Path) -> Any:
    sd = require_spatialdata(path)
    if not looks_like_spatialdata(path):
        raise InputError("not a SpatialData zarr store (a zarr group with images/, shapes/, tables/ ...)", path)
    try:
        return sd.read_zarr(path)
    except Exception as exc:  # zarr, ome-zarr and pyarrow raise many types for a damaged store
        raise InputError(f"cannot read the SpatialData store ({type(exc).__name__}: {exc})", path) from exc


# ----------------------------------------------------------------------------- reading
def _pick_table(sdata: Any, name: str | None, path: Path) -> tuple[str, Any]:
    tables = dict(sdata.tables)
    if not tables:
        raise InputError("the SpatialData store has no table: the expression of the spots is needed", path)
    if name is not None:
        if name not in tables:
            raise InputError(f"the SpatialData store has no table {name!r} (tables: {', '.join(tables)})", path)
        return name, tables[name]
    annotating = [n for n, t in tables.items() if t.uns.get("spatialdata_attrs", {}).get("region") is not None]
    chosen = "table" if "table" in annotating else (annotating or list(tables))[0]
    return chosen, tables[chosen]


def _annotated(sdata: Any, table: Any, path: Path) -> tuple[str, Any, pd.DataFrame]:
    """The shapes or points element the table annotates, and the table rows of it."""
    attrs = table.uns.get("spatialdata_attrs", {}) or {}
    regions = attrs.get("region")
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    found = [r for r in regions if r in sdata.shapes or r in sdata.points]
    if not found:
        raise InputError(f"the table annotates no shapes or points element (region {regions or None}); "
                         "the spot positions are needed", path)
    name = found[0]
    obs = table.obs
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if instance_key not in obs:
        raise InputError(f"the table has no instance column obs[{instance_key!r}] linking it to {name!r}", path)
    rows = obs[region_key].astype(str).to_numpy() == name if region_key in obs else np.ones(len(obs), bool)
    element = sdata.shapes[name] if name in sdata.shapes else sdata.points[name]
    return name, element, obs.loc[rows]


def _geometry(element: Any) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Centres ``x, y`` by instance id, and diameters (``None`` for points) in the element's own frame."""
    if hasattr(element, "geometry"):
        geom = element.geometry
        if (geom.geom_type == "Point").all():
            centres = pd.DataFrame({"x": geom.x, "y": geom.y}, index=element.index)
            radius = element["radius"].to_numpy(float) if "radius" in element else None
            return centres, None if radius is None else 2 * radius
        centroid = geom.centroid  # polygons (bins, cells): centre and the disc of the same area
        centres = pd.DataFrame({"x": centroid.x, "y": centroid.y}, index=element.index)
        return centres, 2 * np.sqrt(geom.area.to_numpy(float) / np.pi)
    frame = element.compute()
    return pd.DataFrame({"x": frame["x"], "y": frame["y"]}, index=frame.index), None


def _matrix(element: Any, system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    return np.asarray(get_transformation(element, to_coordinate_system=system)
                      .to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _systems(element: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True) or {})


def _image_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of an image element's level 0."""
    array = image["scale0"]["image"] if hasattr(image, "children") and "scale0" in image.children else image
    sizes = dict(zip(array.dims, array.shape, strict=True))
    return int(sizes["x"]), int(sizes["y"])


def _pick_image(sdata: Any, element: Any, name: str, path: Path) -> tuple[str, np.ndarray, tuple[int, int]]:
    """The finest image sharing a coordinate system with ``element``: its name, element->pixels matrix, size."""
    best = None
    for system in _systems(element):
        for image_name, image in sdata.images.items():
            if system not in _systems(image):
                continue
            to_system = _matrix(image, system)
            pixel = float(np.sqrt(abs(np.linalg.det(to_system[:2, :2]))))
            if best is None or pixel < best[0]:
                best = (pixel, image_name, np.linalg.inv(to_system) @ _matrix(element, system), _image_size(image))
    if best is None:
        raise InputError(f"the SpatialData store has no image in a coordinate system of {name!r}: the H&E is "
                         "needed (add it to the store, or give the image file)", path)
    return best[1], best[2], best[3]


def _check_inside(xy: np.ndarray, size: tuple[int, int], image: Path) -> None:
    width, height = size
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] > width) | (xy[:, 1] > height)
    if outside.mean() > 0.5:
        raise InputError(f"{int(outside.sum())} of {len(xy)} spots fall outside the image ({width} x {height} px) "
                         "through the store's transformations: do the spots and the image share a coordinate "
                         "system?", image)


def spots_frame(sdata: Any, table: Any, path: Path, *, image: str | os.PathLike | None = None
                ) -> tuple[pd.DataFrame, np.ndarray, float | None, dict[str, dict[str, Any]]]:
    """Rows of ``table`` that annotate spots, their full-res positions, the diameter and the images.

    Parameters
    ----------
    sdata
        The SpatialData object read from ``path``.
    table
        The table chosen (:func:`read_spatialdata`).
    path
        The store (named in errors).
    image
        An image file in the element's own frame, used instead of the store's images.

    Returns
    -------
    tuple
        ``(obs, xy, diameter_px, images)``: the table rows in order, ``(n, 2)`` positions in
        full-resolution px, the median spot diameter in those px (``None`` when unknown) and
        ``uns["histosge"]["images"]`` entries.
    """
    name, element, obs = _annotated(sdata, table, path)
    centres, diameters = _geometry(element)
    ids = obs[table.uns["spatialdata_attrs"]["instance_key"]]
    missing = ~ids.isin(centres.index)
    if missing.any():
        examples = ", ".join(map(str, ids[missing][:3]))
        raise InputError(f"the table's instance ids do not match the index of {name!r}: {int(missing.sum())} of "
                         f"{len(ids)} not found (e.g. {examples})", path)
    where = centres.index.get_indexer(ids)
    xy = centres.to_numpy(float)[where]
    diameter = None if diameters is None else float(np.median(diameters[where]))
    recorded = (table.uns.get("histosge", {}) or {}).get("images") or {}
    if image is not None or not sdata.images:
        # An image given, or only referenced by a store this module wrote: it is in the element's own frame.
        chosen = {"fullres": {"path": str(Path(image).resolve()), "scale": 1.0}} if image is not None else {
            k: dict(v) for k, v in recorded.items() if Path(str(v.get("path", ""))).exists()}
        if not chosen:
            raise InputError("the SpatialData store has no image (and the slide it records is not found): the "
                             "H&E is needed; add it to the store or give the image file", path)
        return obs, xy, diameter, chosen
    image_name, to_pixels, size = _pick_image(sdata, element, name, path)
    xy = xy @ to_pixels[:2, :2].T + to_pixels[:2, 2]
    if diameter is not None:
        diameter *= float(np.sqrt(abs(np.linalg.det(to_pixels[:2, :2]))))
    folder = Path(path) / "images" / image_name
    _check_inside(xy, size, folder)
    return obs, xy, diameter, {"fullres": {"path": str(folder.resolve()), "scale": 1.0}}


def _lattice(obs: pd.DataFrame, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array_row``/``array_col`` from the table, else positions rounded to the spot spacing."""
    if "array_row" in obs and "array_col" in obs:
        return obs["array_row"].to_numpy(np.int64), obs["array_col"].to_numpy(np.int64)
    step = median_nn_distance(xy) or 1.0
    idx = np.rint((xy - xy.min(axis=0)) / step).astype(np.int64)
    return idx[:, 1], idx[:, 0]


def read_spatialdata(path: str | os.PathLike, *, image: str | os.PathLike | None = None,
                     table: str | None = None):
    """Read the spots of a SpatialData zarr store into the spot AnnData.

    Parameters
    ----------
    path
        The ``.zarr`` store.
    image
        An image file to use instead of the store's images, in the spots' own frame.
    table
        The table to read (default: ``"table"``, else the first annotating a region).

    Returns
    -------
    anndata.AnnData
        Raw counts (``layers["counts"]`` when present, else ``X``), positions in the level-0
        pixels of the finest image sharing a coordinate system with the spots.

    Raises
    ------
    InputError
        If spatialdata is missing, the store has no table, no spots or no image, or the
        table's instance ids do not match the spots.
    """
    import anndata as ad

    path = Path(path)
    sdata = _read_store(path)
    table_name, tab = _pick_table(sdata, table, path)
    obs, xy, diameter, images = spots_frame(sdata, tab, path, image=image)
    rows = tab[obs.index]
    counts = to_counts_csr(rows.layers["counts"] if "counts" in rows.layers else rows.X, path)
    require_integer_counts(counts, path, f"table {table_name!r}", " in X or layers['counts']")
    if diameter is None or not np.isfinite(diameter) or diameter <= 0:
        diameter = 0.5 * (median_nn_distance(xy) or 2.0)  # points: no size recorded
    attrs = tab.uns["spatialdata_attrs"]
    keep = obs.drop(columns=[c for c in (attrs.get("region_key"), attrs.get("instance_key")) if c in obs])
    ids = pd.Index(obs[attrs["instance_key"]].astype(str).to_numpy())
    var = rows.var.copy()
    var.index = ad.utils.make_index_unique(pd.Index(rows.var_names.astype(str)))
    array_row, array_col = _lattice(obs, xy)
    mpp = (tab.uns.get("histosge", {}) or {}).get("mpp")
    return build_adata(counts, ids, var, array_row=array_row, array_col=array_col, xy=xy, platform="unknown",
                       lattice=None, spot_diameter_px=float(diameter), mpp=None if mpp is None else float(mpp),
                       images=images, source=path, library_id=path.stem, obs_extra=keep)


def prediction_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """``uns["histosge"]`` keys of a predictions store's table, or ``None``; reads zarr metadata only.

    A store is a prediction when a table's ``uns/histosge`` holds ``fold`` or ``grid``
    (what :func:`napari_histosge.io.spatialdata_write.write_spatialdata` writes).
    """
    tables = Path(path) / "tables"
    try:
        for uns in sorted(tables.glob("*/uns/histosge")):
            names = {p.name for p in uns.iterdir()}
            if "fold" in names or "grid" in names:
                return {"table": uns.parent.parent.name, "keys": sorted(names)}
    except OSError:
        return None
    return None


def read_spatialdata_prediction(path: str | os.PathLike):
    """Read the predictions a store written by :mod:`.spatialdata_write` holds, with its slide recorded.

    Returns
    -------
    anndata.AnnData
        The table, ``obsm["spatial"]`` in full-res px, ``uns["histosge"]["images"]`` the store's
        image (when embedded) or the slide it references.
    """
    path = Path(path)
    found = prediction_info(path)
    if found is None:
        raise InputError("not a napari-histosge predictions store (no table with uns['histosge']['fold'])", path)
    sdata = _read_store(path)
    _, tab = _pick_table(sdata, found["table"], path)
    obs, xy, _, images = spots_frame(sdata, tab, path)
    pred = tab[obs.index].copy()
    pred.obsm["spatial"] = xy
    info = dict(pred.uns.get("histosge", {}) or {})
    info["images"], info["image"] = images, "fullres"
    pred.uns["histosge"] = info
    return pred


__all__ = [
    "INSTALL_HINT", "looks_like_spatialdata", "prediction_info", "read_spatialdata", "read_spatialdata_prediction",
    "require_spatialdata", "spots_frame",
]
