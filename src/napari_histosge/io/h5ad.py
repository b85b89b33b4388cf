"""Reader for an ``.h5ad`` file that carries spot positions in ``obsm["spatial"]``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import InputError
from ._common import (
    build_adata,
    check_finite_positions,
    check_positions_in_images,
    image_entry,
    largest_image,
    median_nn_distance,
    no_spots_error,
    require_integer_counts,
    to_counts_csr,
)
from .gene_names import SYMBOLS_FROM
from .visium_hd import FOOTPRINT_KEY

#: ``uns["histosge"]`` keys kept from the file: square bins' footprint, grid and history, and whether its
#: symbols are only the known markers' (never matched on across sections).
CARRIED_KEYS = ("footprint", "bins", "pooled", "subsampled", SYMBOLS_FROM)


def _raw_counts(adata: Any, path: Path) -> sparse.csr_matrix:
    """``layers["counts"]`` if present, else ``X``; must be non-negative integers."""
    source = "layers['counts']" if "counts" in adata.layers else "X"
    matrix = adata.layers["counts"] if source != "X" else adata.X
    if matrix is None:
        raise InputError("X is empty and there is no layers['counts']; raw counts are needed", path)
    counts = to_counts_csr(matrix, path)
    require_integer_counts(counts, path, source, " in X or layers['counts']")
    return counts


def _histosge_from_scanpy(adata: Any, xy: np.ndarray) -> dict[str, Any]:
    """Derive ``uns["histosge"]`` from scanpy's ``uns["spatial"]``, or estimate it."""
    info: dict[str, Any] = {"platform": "unknown", "lattice": None, "mpp": None, "images": {}}
    spatial = adata.uns.get("spatial")
    library = None
    if isinstance(spatial, dict) and spatial:
        library_id = next(iter(spatial))
        library = spatial[library_id] if isinstance(spatial[library_id], dict) else None
        info["library_id"] = str(library_id)
    diameter = None
    if library is not None:
        factors = library.get("scalefactors", {}) or {}
        try:
            diameter = float(factors["spot_diameter_fullres"])
        except (KeyError, TypeError, ValueError):
            diameter = None
        # Some tools store image *paths* next to scanpy's arrays; keep those that exist.
        for name, value in (library.get("images", {}) or {}).items():
            key = f"tissue_{name}_scalef"
            if isinstance(value, str) and Path(value).is_file() and (name == "fullres" or key in factors):
                info["images"][name] = image_entry(value, 1.0 if name == "fullres" else float(factors[key]))
    if diameter is None or not np.isfinite(diameter) or diameter <= 0:
        # No recorded size: assume spots about half as wide as their spacing.
        nn = median_nn_distance(xy)
        diameter = 0.5 * nn if nn else 1.0
    info["spot_diameter_px"] = diameter
    return info


def _lattice_indices(obs: pd.DataFrame, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array_row``/``array_col`` from obs, or estimated by rounding positions to the spacing."""
    if "array_row" in obs and "array_col" in obs:
        try:
            return (
                obs["array_row"].to_numpy(dtype=np.int64),
                obs["array_col"].to_numpy(dtype=np.int64),
            )
        except (TypeError, ValueError):
            pass
    step = median_nn_distance(xy) or 1.0
    origin = xy.min(axis=0) if len(xy) else np.zeros(2)
    idx = np.rint((xy - origin) / step).astype(np.int64)
    return idx[:, 1], idx[:, 0]


def read_h5ad_spots(path: str | os.PathLike, *, image: str | os.PathLike | None = None):
    """Read an ``.h5ad`` with ``obsm["spatial"]`` into the spot AnnData.

    Parameters
    ----------
    path
        The ``.h5ad`` file. Raw counts come from ``layers["counts"]`` if present,
        else ``X``. An existing ``uns["histosge"]`` is kept; otherwise it is derived
        from scanpy's ``uns["spatial"]`` or estimated from the positions.
    image
        Optional full-resolution image, attached as ``images["fullres"]`` (scale 1.0).

    Returns
    -------
    anndata.AnnData
        In-tissue spots (all spots when ``obs["in_tissue"]`` is absent).
    """
    import anndata as ad

    path = Path(path)
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a bad file
        raise InputError(f"cannot read the .h5ad file ({type(exc).__name__}: {exc})", path) from exc
    if "spatial" not in adata.obsm:
        raise InputError("the .h5ad file has no obsm['spatial'] (spot positions in full-res pixels)", path)
    spatial = np.asarray(adata.obsm["spatial"])
    if spatial.ndim != 2 or spatial.shape[1] < 2 or not np.issubdtype(spatial.dtype, np.number):
        raise InputError(f"obsm['spatial'] must be numeric with 2 columns (x, y), got shape {spatial.shape}", path)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise no_spots_error(path, f"the file holds {adata.n_obs} spots x {adata.n_vars} genes")
    counts = _raw_counts(adata, path)
    if "in_tissue" in adata.obs:
        keep = adata.obs["in_tissue"].to_numpy() == 1
        if not keep.any():
            raise no_spots_error(path, "no spot has obs['in_tissue'] == 1")
    else:
        keep = np.ones(adata.n_obs, dtype=bool)
    xy = spatial[keep, :2].astype(np.float64)
    ids = pd.Index(adata.obs_names[keep].astype(str))
    check_finite_positions(xy, ids, path)

    existing = adata.uns.get("histosge")
    if isinstance(existing, dict) and "spot_diameter_px" in existing:
        info = dict(existing)
        info["images"] = {k: dict(v) for k, v in (existing.get("images") or {}).items()}
    else:
        info = _histosge_from_scanpy(adata, xy)
    if image is not None:
        info["images"]["fullres"] = image_entry(image, 1.0)
    # Images recorded on another machine may be gone; keep the data usable without them.
    images = {k: v for k, v in info["images"].items() if Path(v["path"]).is_file()}
    if image is not None:
        images["fullres"] = info["images"]["fullres"]
    check_positions_in_images(
        xy, ids, images, positions_path=path, spot_diameter_px=float(info["spot_diameter_px"])
    )
    array_row, array_col = _lattice_indices(adata.obs.loc[keep], xy)
    var = adata.var.copy()
    var.index = ad.utils.make_index_unique(pd.Index(adata.var_names.astype(str)))
    mpp = info.get("mpp")
    adata_out = build_adata(
        counts[np.flatnonzero(keep)],
        ids,
        var,
        array_row=array_row,
        array_col=array_col,
        xy=xy,
        platform=str(info.get("platform") or "unknown"),
        lattice=info.get("lattice"),
        spot_diameter_px=float(info["spot_diameter_px"]),
        mpp=None if mpp is None else float(mpp),
        images=images,
        source=path,
        library_id=str(info.get("library_id") or path.stem),
        obs_extra=adata.obs.loc[keep],
    )
    adata_out.uns["histosge"]["image"] = largest_image(images)
    for key in CARRIED_KEYS:
        if key in info:
            adata_out.uns["histosge"][key] = info[key]
    if FOOTPRINT_KEY in adata.obsm:  # square footprints (Visium HD, pooled bins) not centred on the positions
        adata_out.obsm[FOOTPRINT_KEY] = np.asarray(adata.obsm[FOOTPRINT_KEY], np.float64)[keep]
    return adata_out
