"""SpatialData zarr stores out: predictions (or spots) with their slide, in one coordinate system.

The store holds one coordinate system, ``global``, in micrometres when the section's pixel size
is known (else in full-resolution pixels): circles of the predicted diameter (the squares of a
grid, or of square footprints such as Visium HD bins) in full-resolution pixels with the
transformation to ``global``, the table annotating them (the predictions AnnData itself,
``obs["region"]``/``obs["instance_id"]`` linking it), and the slide itself when it is small
(:data:`EMBED_MAX_PIXELS`), else a reference to it in ``uns["histosge"]["images"]``.
``spatialdata.read_zarr`` and napari-spatialdata read it;
:func:`napari_histosge.io.spatialdata_io.read_spatialdata_prediction` reads it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..outputs import write_h5ad, write_with
from ..slide.open import open_slide
from ._common import median_nn_distance
from .spatialdata_io import require_spatialdata

#: The coordinate system written; napari-spatialdata shows ``global`` first.
COORDINATE_SYSTEM = "global"
#: obs columns linking the written table to its shapes.
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
#: Slides of at most this many level-0 pixels are copied into a written store; larger ones are referenced.
EMBED_MAX_PIXELS = 4096 * 4096


def _squares(centres: np.ndarray, side: float, angle: float = 0.0) -> Any:
    """Squares of ``side`` px about ``centres``, turned by ``angle`` radians (counter-clockwise)."""
    import shapely

    unit = 0.5 * side * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = centres[:, None, :] + (unit @ turn.T)[None, :, :]
    return shapely.polygons(corners)


def _shapes(pred: Any, info: dict[str, Any]) -> tuple[str, Any]:
    """Circles of the predicted diameter, squares of a grid or of footprints (bins), or discs of cells' areas.

    In full-resolution pixels; segmented cells are circles of each cell's own area.
    """
    import geopandas as gpd
    import shapely

    xy = np.asarray(pred.obsm["spatial"], dtype=float)[:, :2]
    index = pd.Index(pred.obs_names.astype(str))
    grid, footprint = info.get("grid"), info.get("footprint")
    points = shapely.points(xy[:, 0], xy[:, 1])
    # Cells first: their uns is the section's, whose bin footprint says nothing of the cells' shapes.
    if info.get("positions") == "cells" and "area_px" in pred.obs:  # segmented cells: discs of their own area
        radius = np.sqrt(pred.obs["area_px"].to_numpy(np.float64) / np.pi)
        return "cells", gpd.GeoDataFrame({"radius": radius}, geometry=points, index=index)
    if isinstance(grid, dict) and grid.get("cell_px"):
        return "cells", gpd.GeoDataFrame(geometry=_squares(xy, float(grid["cell_px"])), index=index)
    if isinstance(footprint, dict) and footprint.get("shape") == "square" and footprint.get("size_px"):
        centres = np.asarray(pred.obsm["footprint_xy"], float) if "footprint_xy" in pred.obsm else xy
        squares = _squares(centres, float(footprint["size_px"]), float(footprint.get("angle") or 0.0))
        return "bins", gpd.GeoDataFrame(geometry=squares, index=index)
    diameter = info.get("spot_diameter_px") or 0.5 * (median_nn_distance(xy) or 2.0)
    return "spots", gpd.GeoDataFrame({"radius": np.full(len(xy), 0.5 * float(diameter))}, geometry=points,
                                     index=index)


def _image_element(scale: float, to_system: Any, slide: Any) -> Any:
    """The slide's level 0 as a multiscale image element (``c, y, x``), halved down to tile size."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence

    data = slide.levels[0].transpose(2, 0, 1)
    factors, size = [], max(data.shape[1:])
    while size > 1024:
        factors.append(2)
        size //= 2
    to_fullres = Scale([1 / scale, 1 / scale], axes=("y", "x"))
    return Image2DModel.parse(data, dims=("c", "y", "x"), c_coords=["r", "g", "b"], scale_factors=factors or None,
                              chunks=(3, 512, 512), transformations={COORDINATE_SYSTEM: Sequence([to_fullres,
                                                                                                   to_system])})


def prediction_to_spatialdata(pred: Any, *, image: str = "auto", slide: Any = None) -> Any:
    """A SpatialData object of predictions (see the module docstring); ``slide`` is their open slide."""
    sd = require_spatialdata(None)
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    info = dict(pred.uns.get("histosge", {}) or {})
    mpp = info.get("mpp")
    to_system = Scale([float(mpp)] * 2, axes=("x", "y")) if mpp else Identity()
    name, shapes = _shapes(pred, info)
    table = pred.copy()
    table.obs[REGION_KEY] = pd.Categorical([name] * pred.n_obs)
    table.obs[INSTANCE_KEY] = shapes.index.to_numpy()
    info["coordinate_system"] = {"name": COORDINATE_SYSTEM, "units": "um" if mpp else "full-resolution px"}
    table.uns["histosge"] = info
    table = TableModel.parse(table, region=name, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    elements: dict[str, Any] = {"shapes": {name: ShapesModel.parse(shapes, transformations={
        COORDINATE_SYSTEM: to_system})}, "tables": {"table": table}}
    if slide is not None and image != "reference":
        _, scale = _slide_of(info)
        elements["images"] = {"slide": _image_element(scale, to_system, slide)}
    return sd.SpatialData(**elements)


def _slide_of(info: dict[str, Any]) -> tuple[str, float]:
    images = info.get("images") or {}
    name = info.get("image") if info.get("image") in images else (max(images, key=lambda n: images[n]["scale"])
                                                                  if images else None)
    return ("", 1.0) if name is None else (str(images[name]["path"]), float(images[name]["scale"]))


def _write_store(sdata: Any, tmp: Path) -> None:
    # spatialdata refuses to write into an existing folder that is not a zarr store: the empty
    # temporary folder (its random name reserved by mkdtemp) goes first.
    tmp.rmdir()
    sdata.write(tmp, update_sdata_path=False)


def write_spatialdata(path: str | os.PathLike, pred: Any, *, image: str = "auto") -> Path:
    """Write predictions to a SpatialData zarr store atomically.

    Parameters
    ----------
    path
        The ``.zarr`` store; an earlier store there is replaced only once the new one is complete.
    pred
        Predictions from :mod:`napari_histosge.pipeline.steps` (or a spot AnnData).
    image
        ``"auto"``: copy the slide into the store when it has at most :data:`EMBED_MAX_PIXELS`
        pixels, else record its path; ``"embed"``: always copy; ``"reference"``: never.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If spatialdata is missing, ``image`` is unknown, or the store cannot be written.
    """
    path = Path(path)
    if image not in ("auto", "embed", "reference"):
        raise InputError(f"image must be 'auto', 'embed' or 'reference', got {image!r}", path)
    require_spatialdata(path)
    slide_path, _ = _slide_of(dict(pred.uns.get("histosge", {}) or {}))
    slide = None
    if image != "reference" and slide_path and Path(slide_path).exists():
        slide = open_slide(slide_path)
        if image == "auto" and slide.shape[0] * slide.shape[1] > EMBED_MAX_PIXELS:
            slide.close()
            slide = None
    try:
        sdata = prediction_to_spatialdata(pred, image=image, slide=slide)
        write_with(path, lambda tmp: _write_store(sdata, tmp), what="SpatialData store", folder=True)
    finally:
        if slide is not None:
            slide.close()
    return path


def write_prediction(pred: Any, path: str | os.PathLike, *, image: str = "auto") -> Path:
    """Write predictions to ``path``: a SpatialData store for ``.zarr``, else an ``.h5ad`` file."""
    if Path(path).suffix.lower() == ".zarr":
        return write_spatialdata(path, pred, image=image)
    return write_h5ad(path, pred, what="predictions file")


__all__ = [
    "COORDINATE_SYSTEM", "EMBED_MAX_PIXELS", "prediction_to_spatialdata", "write_prediction", "write_spatialdata",
]
