"""npe2 writers: a layer made by the plugin (spots or predictions) to ``.h5ad`` or a SpatialData ``.zarr``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .widgets.layers import META_KEY


def _layer_adata(path: str, meta: dict[str, Any]) -> Any:
    from ..errors import InputError

    info = (meta.get("metadata") or {}).get(META_KEY) or {}
    adata = info.get("adata")
    if adata is None:
        raise InputError("this layer holds no expression data; save a napari-histosge spots or prediction layer",
                         path)
    return adata


def write_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write the AnnData behind a histosge layer to a SpatialData store (see :func:`write_h5ad`).

    ``.zarr`` is appended when missing; the store holds the positions as circles (or grid
    squares), the table and the slide (copied when small, else referenced).
    """
    from ..io.spatialdata_write import write_spatialdata

    adata = _layer_adata(path, meta)
    out = Path(path)
    if out.suffix != ".zarr":
        out = out.with_name(out.name + ".zarr")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_spatialdata(out, adata)
    return [str(out)]


def write_h5ad(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write the AnnData behind a histosge layer (predicted expression or spots) to ``path``.

    Parameters
    ----------
    path
        Target file; ``.h5ad`` is appended when missing.
    data
        The layer data (unused: the AnnData holds the full expression, not just one gene).
    meta
        The layer's attributes; ``meta["metadata"]["histosge"]["adata"]`` is written.

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    InputError
        If the layer was not made by napari-histosge (it has no expression to write).
    """
    from ..export.scanpy_spatial import ensure_scanpy_spatial
    from ..outputs import write_h5ad as write_atomically

    adata = ensure_scanpy_spatial(_layer_adata(path, meta))  # predictions open in sc.pl.spatial as they are
    out = Path(path)
    if out.suffix != ".h5ad":
        out = out.with_name(out.name + ".h5ad")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, adata)  # a failed write leaves any earlier file intact
    return [str(out)]
