"""Reader for a 10x Visium Space Ranger output folder."""

from __future__ import annotations

import json
import os
import warnings
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
    check_spot_diameter,
    image_entry,
    no_spots_error,
    require_file,
    require_integer_counts,
    to_counts_csr,
)
from .detect import positions_file

VISIUM_SPOT_UM = 55.0
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
FULLRES_SUFFIXES = (".tif", ".tiff", ".btf")


def _read_positions(path: Path) -> pd.DataFrame:
    """Read v1 (no header) or v2 (header) positions, indexed by barcode."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        has_header = first.lower().startswith("barcode")
        table = pd.read_csv(path, header=0 if has_header else None, dtype={0: str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"cannot read the positions file ({exc})", path) from exc
    if table.shape[1] != 6:
        raise InputError(
            f"positions file must have 6 columns ({', '.join(POSITION_COLUMNS)}), found {table.shape[1]}",
            path,
        )
    table.columns = POSITION_COLUMNS
    table["barcode"] = table["barcode"].astype(str)
    for col in POSITION_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise InputError(f"column {col!r} of the positions file is not numeric", path)
    if table["barcode"].duplicated().any():
        dup = table["barcode"][table["barcode"].duplicated()].iloc[0]
        raise InputError(f"barcode {dup!r} appears more than once in the positions file", path)
    return table.set_index("barcode")


def read_scalefactors(path: Path) -> dict[str, Any]:
    """The JSON object of a ``scalefactors_json.json``; an InputError when unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            factors = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the scale factors ({exc})", path) from exc
    if not isinstance(factors, dict):
        raise InputError("scale factors file is not a JSON object", path)
    return factors


def positive_factor(factors: dict[str, Any], key: str, path: Path) -> float:
    """``factors[key]`` as a positive finite float; an InputError naming ``key`` otherwise."""
    value: Any = factors.get(key)  # whatever the JSON holds; float() decides
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"scale factors file lacks a numeric {key!r}", path) from None
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{key!r} must be a positive number, got {value}", path)
    return value


def read_10x_h5(path: Path) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame]:
    """Read a 10x HDF5 matrix: raw CSR counts, barcodes, and genes by symbol with ``var["gene_ids"]``."""
    import scanpy as sc

    try:
        with warnings.catch_warnings():  # duplicate names are made unique below
            warnings.filterwarnings("ignore", message=".*names are not unique", category=UserWarning)
            adata = sc.read_10x_h5(path)
    except Exception as exc:  # h5py/scanpy raise many types for a corrupt file
        raise InputError(f"cannot read the 10x HDF5 counts file ({type(exc).__name__}: {exc})", path) from exc
    adata.var_names_make_unique()
    var = pd.DataFrame(index=adata.var_names.copy())
    if "gene_ids" in adata.var:
        var["gene_ids"] = adata.var["gene_ids"].to_numpy()
    counts = to_counts_csr(adata.X, path)
    require_integer_counts(counts, path)
    return counts, adata.obs_names.copy(), var


def _mtx_member(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _require_mtx_member(folder: Path, stems: tuple[str, ...], what: str) -> Path:
    for stem in stems:
        found = _mtx_member(folder, stem)
        if found is not None:
            return found
    raise InputError(f"counts folder lacks {what}", folder)


def read_10x_mtx(folder: Path) -> tuple[sparse.csr_matrix, pd.Index, pd.DataFrame]:
    """Read a 10x matrix folder, v2 (genes.tsv) or v3 (features.tsv), gzipped or not."""
    # scanpy.read_10x_mtx wants gzipped v3 files; this accepts both.
    from scipy.io import mmread

    matrix = _require_mtx_member(folder, ("matrix.mtx",), "matrix.mtx[.gz]")
    barcodes = _require_mtx_member(folder, ("barcodes.tsv",), "barcodes.tsv[.gz]")
    features = _require_mtx_member(folder, ("features.tsv", "genes.tsv"), "features.tsv[.gz]")
    try:
        counts = sparse.csr_matrix(mmread(str(matrix)).T)  # files are genes x barcodes
    except Exception as exc:
        raise InputError(f"cannot read the Matrix Market counts ({type(exc).__name__}: {exc})", matrix) from exc
    try:
        codes = pd.read_csv(barcodes, header=None, sep="\t", dtype=str)[0]
        genes = pd.read_csv(features, header=None, sep="\t", dtype=str)
    except Exception as exc:
        raise InputError(f"cannot read barcodes/features ({exc})", folder) from exc
    if counts.shape != (len(codes), len(genes)):
        raise InputError(
            f"matrix is {counts.shape[1]} genes x {counts.shape[0]} barcodes but there are "
            f"{len(genes)} features and {len(codes)} barcodes",
            matrix,
        )
    names = genes[1] if genes.shape[1] > 1 else genes[0]
    if genes.shape[1] > 2:  # keep gene expression only, like scanpy
        keep = (genes[2] == "Gene Expression").to_numpy()
        if keep.any():
            counts, genes, names = counts[:, keep], genes[keep], names[keep]
    import anndata as ad

    var = pd.DataFrame(index=ad.utils.make_index_unique(pd.Index(names.astype(str))))
    var["gene_ids"] = genes[0].to_numpy()
    csr = to_counts_csr(counts, matrix)
    require_integer_counts(csr, matrix)
    return csr, pd.Index(codes.to_numpy()), var


def fullres_image(folder: Path) -> Path | None:
    """A full-res TIFF at the top level of the folder (the biggest if several)."""
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FULLRES_SUFFIXES]
    return max(found, key=lambda p: p.stat().st_size) if found else None


def in_tissue_rows(positions: pd.DataFrame, barcodes: pd.Index, counts_path: Path,
                   pos_path: Path) -> tuple[np.ndarray, pd.Index, np.ndarray]:
    """The counts' rows under tissue: their indices, barcodes (in counts order) and rows of ``positions``.

    One hash lookup of the barcodes in the positions' unique index, so it stays quick for the
    hundreds of thousands of bins of Visium HD.

    Raises
    ------
    InputError
        If no barcode of the counts is in the positions, or none of them is under tissue.
    """
    where = positions.index.get_indexer(barcodes)  # -1: not in the positions
    found = where >= 0
    if not found.any():
        raise InputError(
            f"no barcode of the counts ({counts_path.name}, e.g. {barcodes[0] if len(barcodes) else 'none'}) "
            f"appears in the positions file (e.g. {positions.index[0] if len(positions) else 'none'})",
            pos_path,
        )
    under = np.zeros(len(barcodes), dtype=bool)
    under[found] = positions["in_tissue"].to_numpy()[where[found]] == 1
    rows = np.flatnonzero(under)
    if len(rows) == 0:
        raise no_spots_error(pos_path, f"none of the {int(found.sum())} barcodes with counts has in_tissue == 1")
    return rows, barcodes[rows], where[rows]


def read_spaceranger(folder: str | os.PathLike, *, image: str | os.PathLike | None = None):
    """Read a Space Ranger output folder into the spot AnnData.

    Parameters
    ----------
    folder
        The folder holding ``spatial/`` and ``filtered_feature_bc_matrix.h5`` (or the
        ``filtered_feature_bc_matrix/`` folder).
    image
        Optional full-resolution image, attached as ``images["fullres"]`` (scale 1.0);
        by default a ``*.tif``/``*.tiff``/``*.btf`` at the top of the folder is used.

    Returns
    -------
    anndata.AnnData
        In-tissue spots only, following the contract in docs/architecture.md.
    """
    folder = Path(folder)
    spatial = folder / "spatial"
    pos_path = positions_file(folder)
    if pos_path is None:
        raise InputError(
            "missing positions file spatial/tissue_positions.csv or spatial/tissue_positions_list.csv", folder
        )
    sf_path = require_file(spatial / "scalefactors_json.json", "scale factors file")
    factors = read_scalefactors(sf_path)
    spot_diameter = positive_factor(factors, "spot_diameter_fullres", sf_path)

    if (folder / "filtered_feature_bc_matrix.h5").is_file():
        counts_path = folder / "filtered_feature_bc_matrix.h5"
        counts, barcodes, var = read_10x_h5(counts_path)
    elif (folder / "filtered_feature_bc_matrix").is_dir():
        counts_path = folder / "filtered_feature_bc_matrix"
        counts, barcodes, var = read_10x_mtx(counts_path)
    else:
        raise InputError("missing counts: filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/", folder)

    positions = _read_positions(pos_path)
    rows, keep_codes, pos_rows = in_tissue_rows(positions, barcodes, counts_path, pos_path)
    pos = positions.iloc[pos_rows]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    check_finite_positions(xy, keep_codes, pos_path)

    images: dict[str, dict[str, Any]] = {}
    fullres = Path(image) if image is not None else fullres_image(folder)
    if fullres is not None:
        images["fullres"] = image_entry(fullres, 1.0)
    for name in ("hires", "lowres"):
        img = spatial / f"tissue_{name}_image.png"
        if img.is_file():
            images[name] = image_entry(img, positive_factor(factors, f"tissue_{name}_scalef", sf_path))
    # The whole array (off-tissue spots too) gives the spacing and the extent of the capture area.
    array_xy = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    check_spot_diameter(spot_diameter, array_xy, sf_path)
    check_positions_in_images(
        xy, keep_codes, images, positions_path=pos_path, scale_path=sf_path, spot_diameter_px=spot_diameter
    )
    check_array_coverage(array_xy, images, sf_path)
    library_id = folder.resolve().name
    if library_id == "outs":  # Space Ranger nests outputs in <sample>/outs
        library_id = folder.resolve().parent.name
    extra = {k: float(v) for k, v in factors.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return build_adata(
        counts[rows],
        keep_codes,
        var,
        array_row=pos["array_row"].to_numpy(),
        array_col=pos["array_col"].to_numpy(),
        xy=xy,
        platform="visium",
        lattice="hexagonal",
        spot_diameter_px=spot_diameter,
        mpp=VISIUM_SPOT_UM / spot_diameter,
        images=images,
        source=folder,
        library_id=library_id,
        scalefactors=extra,
    )
