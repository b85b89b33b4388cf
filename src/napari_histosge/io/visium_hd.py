"""Reader for a 10x Visium HD Space Ranger folder: the square bins of one bin size.

Space Ranger writes ``binned_outputs/square_002um``, ``square_008um`` and ``square_016um``,
each with ``filtered_feature_bc_matrix.h5`` (or the ``filtered_feature_bc_matrix/`` folder) and
``spatial/`` holding ``tissue_positions.parquet`` (one row per bin of the capture area:
``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres``),
``scalefactors_json.json`` (``spot_diameter_fullres`` is the bin side in full-res px,
``bin_size_um``, ``microns_per_pixel``, ``tissue_hires_scalef``, ``tissue_lowres_scalef``) and
the hires/lowres images. Bins are squares: the spot AnnData carries the square footprint
(``uns["histosge"]["footprint"]``, ``obsm["footprint_xy"]``) and the bin grid
(``uns["histosge"]["bins"]``) the plugin draws them as a raster with.
"""

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
    check_array_coverage,
    check_finite_positions,
    check_positions_in_images,
    image_entry,
)
from .detect import BIN_FOLDER
from .spaceranger import (
    POSITION_COLUMNS,
    fullres_image,
    in_tissue_rows,
    positive_factor,
    read_10x_h5,
    read_10x_mtx,
    read_scalefactors,
)

#: Bin sizes (µm) read as spots. 2 µm bins hold less than a cell each and number millions.
HD_BIN_UM = (8, 16)
#: The bin size read when several are present: a few hundred thousand bins at most.
DEFAULT_BIN_UM = 16
POSITIONS_NAME = "tissue_positions.parquet"
#: Neighbouring bins (next ``array_col`` or ``array_row``) must be one bin side apart within this share.
STEP_TOLERANCE = 0.05
#: The three scale factors must agree (``bin_size_um / spot_diameter_fullres == microns_per_pixel``) this well.
SCALE_TOLERANCE = 0.01
#: ``obsm`` key of the footprint centres (the one models.subspot.geometry reads; io cannot import models).
FOOTPRINT_KEY = "footprint_xy"


def hd_root(folder: Path) -> Path | None:
    """The folder holding ``binned_outputs/`` for ``folder`` (itself, its ``binned_outputs`` or a bin folder)."""
    if BIN_FOLDER.match(folder.name) and folder.parent.name == "binned_outputs":
        return folder.parent.parent
    if folder.name == "binned_outputs":
        return folder.parent
    return folder if (folder / "binned_outputs").is_dir() else None


def bin_folders(folder: str | os.PathLike) -> dict[int, Path]:
    """The ``square_XXXum`` folders of an HD output, by bin size in µm (a bin folder: just itself)."""
    folder = Path(folder)
    found = BIN_FOLDER.match(folder.name)
    if found:
        return {int(found.group(1)): folder}
    root = folder if folder.name == "binned_outputs" else folder / "binned_outputs"
    if not root.is_dir():
        return {}
    return {int(m.group(1)): p for p in sorted(root.iterdir()) if p.is_dir() and (m := BIN_FOLDER.match(p.name))}


def choose_bin_folder(folder: Path, bin_um: int | None) -> tuple[int, Path]:
    """``(bin size, folder)`` to read: ``bin_um``, else :data:`DEFAULT_BIN_UM` when present, else 8 µm.

    Raises
    ------
    InputError
        If there is no bin folder, ``bin_um`` is not one of :data:`HD_BIN_UM`, or it is not present.
    """
    folders = bin_folders(folder)
    usable = sorted(b for b in folders if b in HD_BIN_UM)
    names = ", ".join(f"{b} µm" for b in sorted(folders)) or "none"
    if bin_um is not None and int(bin_um) not in HD_BIN_UM:
        raise InputError(f"bin size {bin_um} µm cannot be read; choose {' or '.join(map(str, HD_BIN_UM))} µm "
                         f"(present here: {names})", folder)
    if not usable:
        raise InputError(f"no square_008um or square_016um folder of binned outputs (present: {names})", folder)
    if bin_um is None:
        chosen = DEFAULT_BIN_UM if DEFAULT_BIN_UM in usable else usable[0]
    elif int(bin_um) in folders:
        chosen = int(bin_um)
    else:
        raise InputError(f"no {bin_um} µm bins here (square_{int(bin_um):03d}um); present: {names}", folder)
    return chosen, folders[chosen]


def read_bin_positions(path: Path) -> pd.DataFrame:
    """Read ``tissue_positions.parquet``, indexed by barcode, with its six columns checked."""
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise InputError(f"cannot read the bin positions ({type(exc).__name__}: {exc})", path) from exc
    if "barcode" not in table.columns and table.index.name == "barcode":
        table = table.reset_index()
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"bin positions lack column(s) {', '.join(missing)} (need {', '.join(POSITION_COLUMNS)})",
                         path)
    table = table[POSITION_COLUMNS].copy()
    table["barcode"] = table["barcode"].astype(str)
    for col in POSITION_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise InputError(f"column {col!r} of the bin positions is not numeric", path)
    if table["barcode"].duplicated().any():
        dup = table["barcode"][table["barcode"].duplicated()].iloc[0]
        raise InputError(f"barcode {dup!r} appears more than once in the bin positions", path)
    return table.set_index("barcode")


def check_bin_steps(positions: pd.DataFrame, side_px: float, bin_um: int, path: Path) -> None:
    """Check that bins next to each other on the array are one bin side apart in the image.

    Only neighbours are compared, so a slightly projective registration (Space Ranger's
    image alignment) passes while positions of another bin size or shuffled rows do not.

    Raises
    ------
    InputError
        If the positions do not span a grid, or neighbouring bins are not ``side_px`` apart.
    """
    rows = positions["array_row"].to_numpy(np.int64)
    cols = positions["array_col"].to_numpy(np.int64)
    xy = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    if len(rows) < 4 or rows.min() < 0 or cols.min() < 0 or np.unique(rows).size < 2 or np.unique(cols).size < 2:
        raise InputError("bin positions do not span a grid of non-negative array_row x array_col", path)
    index = np.full((rows.max() + 2, cols.max() + 2), -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    steps = []
    for d_row, d_col in ((0, 1), (1, 0)):
        nxt = index[rows + d_row, cols + d_col]
        ok = nxt >= 0
        steps.append(np.hypot(*(xy[nxt[ok]] - xy[ok]).T))
    dist = np.concatenate(steps)
    if dist.size == 0:
        raise InputError("no two bins of the positions are neighbours on the array", path)
    median = float(np.median(dist))
    if abs(median / side_px - 1) > STEP_TOLERANCE:
        raise InputError(
            f"neighbouring bins are {median:.4g} px apart but a {bin_um} µm bin is {side_px:.4g} px wide "
            f"(spot_diameter_fullres): these positions are not on the {bin_um} µm grid (another bin size's?)", path)
    off = np.abs(dist / side_px - 1) > STEP_TOLERANCE
    if off.any():
        raise InputError(f"{int(off.sum())} of {dist.size} pairs of neighbouring bins are not one bin side "
                         f"({side_px:.4g} px) apart: the positions are not on a regular {bin_um} µm grid", path)


def fit_bin_grid(rows: np.ndarray, cols: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, float]:
    """The affine map ``(x, y) = A @ (array_col, array_row, 1)`` that fits the bins best, and its worst miss (px)."""
    design = np.column_stack([cols, rows, np.ones(len(rows))]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    miss = float(np.hypot(*(design @ coef - xy).T).max()) if len(xy) else 0.0
    return coef.T, miss


def _check_factors(factors: dict[str, Any], bin_um: int, path: Path) -> tuple[float, float]:
    """The bin side (px) and µm per px, once ``bin_size_um`` matches the folder and the factors agree."""
    side = positive_factor(factors, "spot_diameter_fullres", path)
    size_um = positive_factor(factors, "bin_size_um", path)
    mpp = positive_factor(factors, "microns_per_pixel", path)
    if abs(size_um - bin_um) > 1e-6:
        raise InputError(f"bin_size_um is {size_um:g} but the folder is square_{bin_um:03d}um: the scale factors "
                         "belong to another bin size", path)
    if abs(size_um / side / mpp - 1) > SCALE_TOLERANCE:
        raise InputError(f"the scale factors disagree: bin_size_um / spot_diameter_fullres = {size_um / side:.4g} "
                         f"µm per px but microns_per_pixel is {mpp:.4g}", path)
    return side, mpp


def _read_bin_counts(folder: Path) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame, Path]:
    if (folder / "filtered_feature_bc_matrix.h5").is_file():
        path = folder / "filtered_feature_bc_matrix.h5"
        return (*read_10x_h5(path), path)
    if (folder / "filtered_feature_bc_matrix").is_dir():
        path = folder / "filtered_feature_bc_matrix"
        return (*read_10x_mtx(path), path)
    raise InputError("bin positions but no counts: missing filtered_feature_bc_matrix.h5 or "
                     f"filtered_feature_bc_matrix/ in {folder.name}", folder)


def _bin_images(folder: Path, root: Path | None, factors: dict[str, Any], sf_path: Path,
                image: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    images: dict[str, dict[str, Any]] = {}
    fullres = Path(image) if image is not None else (fullres_image(root) if root is not None else None)
    if fullres is not None:
        images["fullres"] = image_entry(fullres, 1.0)
    spatial_dirs = [folder / "spatial"] + ([root / "spatial"] if root is not None else [])
    for name in ("hires", "lowres"):
        found = next((d / f"tissue_{name}_image.png" for d in spatial_dirs
                      if (d / f"tissue_{name}_image.png").is_file()), None)
        if found is not None:
            images[name] = image_entry(found, positive_factor(factors, f"tissue_{name}_scalef", sf_path))
    return images


def read_visium_hd(folder: str | os.PathLike, *, bin_um: int | None = None,
                   image: str | os.PathLike | None = None):
    """Read one bin size of a Visium HD Space Ranger output into the spot AnnData.

    Parameters
    ----------
    folder
        The output folder holding ``binned_outputs/``, that ``binned_outputs/`` folder, or one
        ``square_008um``/``square_016um`` folder.
    bin_um
        8 or 16; by default :data:`DEFAULT_BIN_UM` when present, else 8.
    image
        Optional full-resolution image (scale 1.0); by default a ``*.tif``/``*.tiff``/``*.btf``
        at the top of the output folder.

    Returns
    -------
    anndata.AnnData
        In-tissue bins as spots (docs/architecture.md) with ``platform = "visium_hd"``,
        ``lattice = "square"``, ``spot_diameter_px`` the bin side, the square footprint and
        ``uns["histosge"]["bins"] = {"bin_um", "available_um", "affine_xy", "fit_miss_px"}``
        (``affine_xy``: the 2 x 3 map from ``(array_col, array_row, 1)`` to full-res ``(x, y)``).
    """
    folder = Path(folder)
    bin_size, bin_dir = choose_bin_folder(folder, bin_um)
    root = hd_root(bin_dir)
    pos_path = bin_dir / "spatial" / POSITIONS_NAME
    if not pos_path.is_file():
        raise InputError(f"missing bin positions spatial/{POSITIONS_NAME} in {bin_dir.name}", bin_dir)
    sf_path = bin_dir / "spatial" / "scalefactors_json.json"
    if not sf_path.is_file():
        raise InputError(f"missing scale factors spatial/scalefactors_json.json in {bin_dir.name}", bin_dir)
    factors = read_scalefactors(sf_path)
    side, mpp = _check_factors(factors, bin_size, sf_path)
    counts, barcodes, var, counts_path = _read_bin_counts(bin_dir)
    positions = read_bin_positions(pos_path)
    check_bin_steps(positions, side, bin_size, pos_path)
    rows, keep_codes, pos_rows = in_tissue_rows(positions, barcodes, counts_path, pos_path)
    pos = positions.iloc[pos_rows]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    check_finite_positions(xy, keep_codes, pos_path)
    images = _bin_images(bin_dir, root, factors, sf_path, image)
    check_positions_in_images(xy, keep_codes, images, positions_path=pos_path, scale_path=sf_path,
                              spot_diameter_px=side)
    check_array_coverage(positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64), images,
                         sf_path)
    affine, miss = fit_bin_grid(pos["array_row"].to_numpy(), pos["array_col"].to_numpy(), xy)
    library = root if root is not None else bin_dir
    library_id = library.resolve().name
    if library_id == "outs":  # Space Ranger nests outputs in <sample>/outs
        library_id = library.resolve().parent.name
    extra = {k: float(v) for k, v in factors.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    adata = build_adata(counts[rows], keep_codes, var, array_row=pos["array_row"].to_numpy(),
                        array_col=pos["array_col"].to_numpy(), xy=xy, platform="visium_hd", lattice="square",
                        spot_diameter_px=side, mpp=mpp, images=images, source=folder, library_id=library_id,
                        scalefactors=extra)
    adata.obsm[FOOTPRINT_KEY] = xy.copy()
    adata.uns["histosge"]["footprint"] = {"shape": "square", "size_px": side, "angle": square_angle(affine)}
    adata.uns["histosge"]["bins"] = {"bin_um": bin_size, "available_um": sorted(bin_folders(library)),
                                     "affine_xy": affine.tolist(), "fit_miss_px": miss}
    return adata


def square_angle(affine_xy: np.ndarray) -> float:
    """Rotation of the bins' squares (radians from the x axis, within ±π/4: a square repeats every π/2)."""
    col_axis = np.asarray(affine_xy, np.float64)[:, 0]
    angle = float(np.arctan2(col_axis[1], col_axis[0]))
    return float((angle + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def _bin_grid(adata) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """``uns["histosge"]["bins"]``, its affine and the bins' array indices, or an InputError."""
    info = adata.uns.get("histosge", {}) or {}
    bins = info.get("bins")
    if not isinstance(bins, dict) or "affine_xy" not in bins or "array_row" not in adata.obs:
        raise InputError("these spots are not Visium HD bins (no uns['histosge']['bins'])", info.get("source"))
    return (bins, np.asarray(bins["affine_xy"], np.float64), adata.obs["array_row"].to_numpy(np.int64),
            adata.obs["array_col"].to_numpy(np.int64))


def bin_up(adata, factor: int = 2):
    """Sum ``factor`` x ``factor`` blocks of Visium HD bins into bins ``factor`` times wider.

    Blocks start at array index 0, as Space Ranger's own coarser bins do (a 16 µm bin is
    2 x 2 bins of 8 µm), and are named like Space Ranger's barcodes. Positions are the mean
    of the members; the square's centre is ``obsm["footprint_xy"]``.

    Parameters
    ----------
    adata
        Bins from :func:`read_visium_hd`.
    factor
        Bins per side of a block, at least 2.

    Returns
    -------
    anndata.AnnData
        The coarser bins, with the same contract as :func:`read_visium_hd`'s.
    """
    import anndata as ad

    bins, affine, rows, cols = _bin_grid(adata)
    if int(factor) != factor or factor < 2:
        raise InputError(f"bins are summed in blocks of at least 2 x 2, got {factor!r}")
    f = int(factor)
    keys, member = np.unique(np.column_stack([rows // f, cols // f]), axis=0, return_inverse=True)
    member = np.asarray(member).ravel()
    sums = sparse.csr_matrix((np.ones(len(member)), (member, np.arange(len(member)))), shape=(len(keys), len(member)))
    counts = sparse.csr_matrix(sums @ sparse.csr_matrix(adata.X, dtype=np.float64), dtype=np.float32)
    xy = (sums @ np.asarray(adata.obsm["spatial"], np.float64)) / np.asarray(sums.sum(axis=1))
    new_affine = np.column_stack([affine[:, 0] * f, affine[:, 1] * f,
                                  affine[:, 2] + (f - 1) / 2 * (affine[:, 0] + affine[:, 1])])
    centres = np.column_stack([keys[:, 1], keys[:, 0], np.ones(len(keys))]) @ new_affine.T
    size_um = int(bins["bin_um"]) * f
    names = pd.Index([f"s_{size_um:03d}um_{r:05d}_{c:05d}-1" for r, c in keys])
    obs = pd.DataFrame({"array_row": keys[:, 0], "array_col": keys[:, 1], "in_tissue": 1}, index=names)
    out = ad.AnnData(X=counts, obs=obs, var=adata.var.copy())
    out.obsm["spatial"] = xy
    out.obsm[FOOTPRINT_KEY] = centres
    info = dict(adata.uns["histosge"])
    side = float(info["spot_diameter_px"]) * f
    info.update(spot_diameter_px=side, footprint={**info.get("footprint", {}), "shape": "square", "size_px": side},
                bins={**bins, "bin_um": size_um, "affine_xy": new_affine.tolist(), "binned_up": f})
    out.uns["histosge"] = info
    library = str(info.get("library_id"))
    spatial = {k: dict(v) for k, v in (adata.uns.get("spatial") or {}).items()}
    if library in spatial:
        spatial[library]["scalefactors"] = {**spatial[library].get("scalefactors", {}),
                                            "spot_diameter_fullres": side, "bin_size_um": float(size_um)}
    out.uns["spatial"] = spatial
    return out


def limit_bins(adata, max_bins: int, *, seed: int = 0):
    """At most ``max_bins`` bins for training: ``adata`` itself when it has no more, else a seeded random subset.

    The subset keeps the reading order and records ``uns["histosge"]["subsampled"]``. A model
    trained on it still predicts every bin. The training setting ``max_bins`` applies it
    (:mod:`napari_histosge.pipeline.run_settings`): the 8 µm bins of a whole capture area, and
    the 16 µm bins of a large tissue, number more than its default.

    Raises
    ------
    InputError
        If ``max_bins`` is below 1.
    """
    if int(max_bins) < 1:
        raise InputError(f"the most bins to train on must be at least 1, got {max_bins!r}")
    if adata.n_obs <= int(max_bins):
        return adata
    keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, size=int(max_bins), replace=False))
    out = adata[keep].copy()
    out.uns["histosge"] = {**out.uns["histosge"],
                           "subsampled": {"bins": int(adata.n_obs), "kept": int(max_bins), "seed": int(seed)}}
    return out
