"""A small synthetic Visium HD Space Ranger output, in the exact layout Space Ranger writes.

``<root>/<name>/binned_outputs/square_008um`` and ``square_016um``, each with
``filtered_feature_bc_matrix.h5`` (10x HDF5 v3), ``spatial/tissue_positions.parquet``
(``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres``),
``spatial/scalefactors_json.json`` and ``spatial/tissue_{hires,lowres}_image.png``; plus the
output's own ``spatial/`` (images and scale factors without ``bin_size_um``). The 16 µm counts
are the sums of 2 x 2 blocks of 8 µm bins, as Space Ranger's are of its 2 µm bins. No real
Visium HD data is available on the development machines; this is what the reader is tested on.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from scipy import sparse

GENES = ["ACTB", "GAPDH", "MALAT1", "KRT19", "EPCAM", "PTPRC", "COL1A1", "VIM", "CD3E", "ACTB"]  # one duplicate
GENE_IDS = [f"ENSG{i:011d}" for i in range(len(GENES))]


def write_10x_h5(path: Path, barcodes, matrix: sparse.spmatrix, genes=GENES, gene_ids=GENE_IDS) -> None:
    """Bins x genes ``matrix`` as a 10x HDF5 v3 file (CSC genes x barcodes)."""
    csc = sparse.csr_matrix(matrix).T.tocsc()
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"] = csc.data.astype(np.int32)
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array(gene_ids, dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        feats["_all_tag_keys"] = np.array(["genome"], dtype="S")


def bin_barcodes(size_um: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Space Ranger's bin barcodes, ``s_008um_00012_00034-1``."""
    return np.array([f"s_{size_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)])


def bin_xy(rows, cols, side_px: float, origin=(200.0, 300.0), angle: float = 0.0) -> np.ndarray:
    """Full-res ``(x, y)`` centres of bins ``side_px`` wide, rotated by ``angle`` about ``origin``."""
    local = np.column_stack([(np.asarray(cols) + 0.5) * side_px, (np.asarray(rows) + 0.5) * side_px])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return local @ rot.T + np.asarray(origin)


def make_visium_hd(root: Path, *, n: int = 40, mpp: float = 0.25, angle: float = 0.0, name: str = "hd_sample",
                   hires_scale: float = 0.1, lowres_scale: float = 0.03, seed: int = 0) -> dict:
    """Write an HD output of ``n`` x ``n`` 8 µm bins (and their 16 µm binning); return the truth.

    Bins within ``0.4 n`` bins of the centre are under tissue. Returns ``folder`` (the output),
    and per bin size ``{8: {...}, 16: {...}}`` the in-tissue ``barcodes``, dense ``counts``,
    ``xy``, ``rows``, ``cols`` in the order of the filtered matrix, and ``side_px``.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    side8 = 8.0 / mpp
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
    tissue8 = np.hypot(rows - n / 2 + 0.5, cols - n / 2 + 0.5) < 0.4 * n
    counts8 = rng.poisson(1.0 + 3.0 * (cols / n)[:, None], size=(len(rows), len(GENES))) * tissue8[:, None]
    # 16 µm bins: the sums of 2 x 2 blocks starting at index 0
    block = (rows // 2) * (n // 2) + cols // 2
    sums = sparse.csr_matrix((np.ones(len(rows)), (block, np.arange(len(rows)))), shape=((n // 2) ** 2, len(rows)))
    counts16 = np.asarray(sums @ counts8)
    rows16, cols16 = (a.ravel() for a in np.meshgrid(np.arange(n // 2), np.arange(n // 2), indexing="ij"))
    tissue16 = np.asarray(sums @ tissue8.astype(float)).ravel() > 0
    extent = bin_xy([n], [n], side8, angle=angle)[0] + 300
    width, height = int(extent[0]), int(extent[1])
    truth: dict = {"folder": folder, "fullres": (width, height)}
    for size, r, c, cnt, tis in ((8, rows, cols, counts8, tissue8), (16, rows16, cols16, counts16, tissue16)):
        side = size / mpp
        spatial = folder / "binned_outputs" / f"square_{size:03d}um" / "spatial"
        spatial.mkdir(parents=True)
        xy = bin_xy(r, c, side, angle=angle)
        codes = bin_barcodes(size, r, c)
        pd.DataFrame({"barcode": codes, "in_tissue": tis.astype(np.int32), "array_row": r, "array_col": c,
                      "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0]}).to_parquet(
            spatial / "tissue_positions.parquet", index=False)
        factors = {"spot_diameter_fullres": side, "bin_size_um": float(size), "microns_per_pixel": mpp,
                   "regist_target_img_scalef": hires_scale, "tissue_lowres_scalef": lowres_scale,
                   "fiducial_diameter_fullres": 30 * side8, "tissue_hires_scalef": hires_scale}
        (spatial / "scalefactors_json.json").write_text(json.dumps(factors))
        write_images(spatial, width, height, hires_scale, lowres_scale)
        order = rng.permutation(np.flatnonzero(tis))  # the matrix lists bins in its own order
        write_10x_h5(spatial.parent / "filtered_feature_bc_matrix.h5", codes[order], sparse.csr_matrix(cnt[order]))
        truth[size] = {"barcodes": codes[order], "counts": cnt[order], "xy": xy[order], "rows": r[order],
                       "cols": c[order], "side_px": side}
    outer = folder / "spatial"
    outer.mkdir()
    (outer / "scalefactors_json.json").write_text(json.dumps(
        {"spot_diameter_fullres": 2.0 / mpp, "tissue_hires_scalef": hires_scale, "tissue_lowres_scalef": lowres_scale,
         "fiducial_diameter_fullres": 30 * side8, "regist_target_img_scalef": hires_scale}))
    write_images(outer, width, height, hires_scale, lowres_scale)
    return truth


def write_images(spatial: Path, width: int, height: int, hires_scale: float, lowres_scale: float) -> None:
    """White hires and lowres PNGs of a ``width`` x ``height`` full-res image."""
    for kind, scale in (("hires", hires_scale), ("lowres", lowres_scale)):
        Image.new("RGB", (round(width * scale), round(height * scale)), "white").save(
            spatial / f"tissue_{kind}_image.png")
