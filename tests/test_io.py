"""Readers: real HER2ST / DLPFC sections, synthetic Space Ranger and ST v1 folders, h5ad."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import io as spio
from scipy import sparse

from hd_fixture import write_10x_h5
from napari_histosge.io import detect_format, image_size, read_spots, spot_image

# ---------------------------------------------------------------- synthetic data builders
FULLRES = (1000, 800)  # width, height of the (virtual) full-resolution image
SPOT_DIAMETER = 60.0
N_GENES = 12


def make_spaceranger(
    root: Path,
    *,
    positions: str = "v2",
    counts: str = "mtx_gz",
    images: tuple[str, ...] = ("hires",),
    hires_scale: float = 0.2,
    lowres_scale: float = 0.05,
    seed: int = 0,
) -> dict:
    """Write a small Space Ranger folder; return what a reader should find.

    A 6 x 8 hexagonal lattice at 100 px spacing; every 5th spot is off tissue.
    ``counts``: ``mtx_gz`` | ``mtx`` (v3 names, plain) | ``h5`` (10x HDF5 v3 via h5py).
    ``images``: any of ``hires``, ``lowres``, ``fullres`` (a TIFF at the top level).
    """
    rng = np.random.default_rng(seed)
    folder = root / "sample"
    (folder / "spatial").mkdir(parents=True)
    rows, cols = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    rows, cols = rows.ravel(), (2 * cols + rows % 2).ravel()  # hex: odd rows shifted
    px_col = 100 + 50.0 * cols  # x
    px_row = 100 + 86.6 * rows  # y
    n = len(rows)
    barcodes = np.array([f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n)])
    in_tissue = (np.arange(n) % 5 != 0).astype(int)
    table = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": px_row.round().astype(int),
            "pxl_col_in_fullres": px_col.round().astype(int),
        }
    )
    if positions == "v2":
        table.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    else:
        table.to_csv(folder / "spatial" / "tissue_positions_list.csv", index=False, header=False)
    factors = {
        "spot_diameter_fullres": SPOT_DIAMETER,
        "tissue_hires_scalef": hires_scale,
        "tissue_lowres_scalef": lowres_scale,
        "fiducial_diameter_fullres": 90.0,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors))

    # The filtered matrix holds in-tissue spots plus two off-tissue ones, in shuffled order.
    chosen = np.flatnonzero(in_tissue == 1).tolist() + np.flatnonzero(in_tissue == 0)[:2].tolist()
    chosen = rng.permutation(chosen)
    genes = [f"GENE{i}" for i in range(N_GENES - 1)] + ["GENE0"]  # a duplicate name
    gene_ids = [f"ENSG{i:05d}" for i in range(N_GENES)]
    matrix = rng.poisson(2.0, size=(len(chosen), N_GENES)).astype(np.int32)
    write_counts(folder, counts, barcodes[chosen], genes, gene_ids, matrix)

    w, h = FULLRES
    if "hires" in images:
        Image.new("RGB", (round(w * hires_scale), round(h * hires_scale)), "white").save(
            folder / "spatial" / "tissue_hires_image.png"
        )
    if "lowres" in images:
        Image.new("RGB", (round(w * lowres_scale), round(h * lowres_scale)), "white").save(
            folder / "spatial" / "tissue_lowres_image.png"
        )
    if "fullres" in images:
        import tifffile

        tifffile.imwrite(folder / "image.tif", np.zeros((h, w, 3), np.uint8), photometric="rgb")
    tissue = in_tissue[chosen] == 1
    return {
        "folder": folder,
        "barcodes": barcodes[chosen][tissue],
        "counts": matrix[tissue],
        "xy": np.column_stack([px_col, px_row]).round()[chosen][tissue],
        "array_row": rows[chosen][tissue],
        "array_col": cols[chosen][tissue],
        "gene_ids": gene_ids,
        "positions": table,
    }


def write_counts(folder: Path, kind: str, barcodes, genes, gene_ids, matrix: np.ndarray) -> None:
    """Write spots x genes ``matrix`` as a 10x mtx folder or a 10x HDF5 v3 file."""
    if kind == "h5":
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", barcodes, matrix, genes, gene_ids)
        return
    mtx = folder / "filtered_feature_bc_matrix"
    mtx.mkdir()
    gz = kind == "mtx_gz"
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(mtx / f"matrix.mtx{suffix}", "wb") as fh:
        spio.mmwrite(fh, sparse.coo_matrix(matrix.T))
    with opener(mtx / f"barcodes.tsv{suffix}", "wt") as fh:
        fh.write("\n".join(barcodes) + "\n")
    with opener(mtx / f"features.tsv{suffix}", "wt") as fh:
        fh.write("\n".join(f"{i}\t{g}\tGene Expression" for i, g in zip(gene_ids, genes, strict=True)) + "\n")


def make_st_v1(root: Path, *, spacing: float = 150.0, image: str = "png", counts_name: str = "S1.tsv") -> dict:
    """Write a small ST v1 folder on a square grid with a known pixel spacing."""
    rng = np.random.default_rng(1)
    folder = root / "S1"
    folder.mkdir(parents=True)
    xs, ys = np.meshgrid(np.arange(2, 9), np.arange(3, 8))
    xs, ys = xs.ravel(), ys.ravel()
    ids = np.array([f"{x}x{y}" for x, y in zip(xs, ys, strict=True)])
    # A slightly rotated grid: the fit must recover the spacing anyway.
    angle = np.deg2rad(3)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pix = (np.column_stack([xs, ys]) @ rot.T) * spacing + 20 + rng.normal(0, 1.0, (len(xs), 2))
    selected = np.ones(len(xs), int)
    selected[:3] = 0
    pd.DataFrame(
        {
            "x": xs, "y": ys, "new_x": xs + 0.01, "new_y": ys - 0.01,
            "pixel_x": pix[:, 0], "pixel_y": pix[:, 1], "selected": selected,
        }
    ).to_csv(folder / "S1_selection.tsv", sep="\t", index=False)
    matrix = rng.poisson(1.5, size=(len(xs) - 1, 9))  # last spot has no counts row
    counts = pd.DataFrame(matrix, index=ids[:-1], columns=[f"G{i}" for i in range(9)])
    counts.to_csv(folder / counts_name, sep="\t")
    size = (1500, 1300)
    if image:
        Image.new("RGB", size, "white").save(folder / f"he.{image}")
    keep = selected[:-1] == 1
    return {"folder": folder, "ids": ids[:-1][keep], "counts": matrix[keep], "xy": pix[:-1][keep], "spacing": spacing}


def assert_contract(adata: ad.AnnData) -> None:
    """The AnnData convention of docs/architecture.md."""
    assert sparse.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert adata.obsm["spatial"].dtype == np.float64 and adata.obsm["spatial"].shape == (adata.n_obs, 2)
    for col in ("array_row", "array_col", "in_tissue"):
        assert np.issubdtype(adata.obs[col].dtype, np.integer)
    assert (adata.obs["in_tissue"] == 1).all()
    assert adata.var_names.is_unique
    info = adata.uns["histosge"]
    assert set(info) >= {"platform", "lattice", "spot_diameter_px", "mpp", "images", "image", "source", "library_id"}
    assert info["spot_diameter_px"] > 0
    lib = info["library_id"]
    assert adata.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(info["spot_diameter_px"])
    assert "images" not in adata.uns["spatial"][lib]
    if info["images"]:
        assert info["image"] == max(info["images"], key=lambda k: info["images"][k]["scale"])


# ---------------------------------------------------------------- real data
@pytest.mark.realdata
def test_her2st_b4(her2st_b4: Path) -> None:
    assert detect_format(her2st_b4) == "st_v1"
    adata = read_spots(her2st_b4)
    assert_contract(adata)
    assert 250 <= adata.n_obs <= 290 and adata.n_vars > 15000
    assert all(re.fullmatch(r"\d+x\d+", s) for s in adata.obs_names)
    info = adata.uns["histosge"]
    assert (info["platform"], info["lattice"], info["library_id"]) == ("st_v1", "square", "B4")
    path, scale = spot_image(adata)
    assert path.endswith(".jpg") and scale == 1.0
    assert image_size(path) == (9272, 9923)
    xy = adata.obsm["spatial"]
    assert (xy >= 0).all() and (xy[:, 0] < 9272).all() and (xy[:, 1] < 9923).all()
    # ~275-290 px between spot centres on a 200 um grid
    assert 0.6 < info["mpp"] < 0.8
    assert info["spot_diameter_px"] == pytest.approx(100 / info["mpp"])
    # array_col = x, array_row = y, and counts equal the table's row
    sid = adata.obs_names[5]
    x, y = map(int, sid.split("x"))
    assert (adata.obs["array_col"].iloc[5], adata.obs["array_row"].iloc[5]) == (x, y)
    sel = pd.read_csv(her2st_b4 / "B4_selection.tsv", sep="\t")
    row = sel[(sel.x == x) & (sel.y == y)].iloc[0]
    np.testing.assert_allclose(xy[5], [row.pixel_x, row.pixel_y])
    table = pd.read_csv(her2st_b4 / "B4.tsv.gz", sep="\t", index_col=0, nrows=10)
    if sid in table.index:
        np.testing.assert_array_equal(adata.X[5].toarray().ravel(), table.loc[sid].to_numpy())


@pytest.mark.realdata
def test_dlpfc_151675(dlpfc_151675: Path) -> None:
    assert detect_format(dlpfc_151675) == "spaceranger"
    start = time.perf_counter()
    adata = read_spots(dlpfc_151675)
    assert time.perf_counter() - start < 30  # validation must stay cheap
    assert_contract(adata)
    assert adata.n_obs == 3592 and adata.n_vars == 5000
    assert adata.obs_names[0].endswith("-1")
    assert adata.var["gene_ids"].str.startswith("ENSG").all()
    info = adata.uns["histosge"]
    assert (info["platform"], info["lattice"], info["library_id"]) == ("visium", "hexagonal", "151675")
    assert set(info["images"]) == {"lowres"} and info["image"] == "lowres"
    path, scale = spot_image(adata)
    assert scale == pytest.approx(0.045, abs=1e-3) and image_size(path) == (600, 600)
    assert ((adata.obsm["spatial"] * scale) < 600).all()
    assert info["mpp"] == pytest.approx(55 / info["spot_diameter_px"])
    # x is the column pixel: compare with the positions file for one barcode
    pos = pd.read_csv(dlpfc_151675 / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    bc = adata.obs_names[10]
    np.testing.assert_allclose(adata.obsm["spatial"][10], [pos.loc[bc, 5], pos.loc[bc, 4]])
    assert adata.obs["array_row"].iloc[10] == pos.loc[bc, 2]
    x = adata.X.data
    assert (x == np.round(x)).all() and x.min() >= 0


@pytest.mark.realdata
def test_h5ad_round_trip_real(dlpfc_151675: Path, tmp_path: Path) -> None:
    adata = read_spots(dlpfc_151675)
    out = tmp_path / "dlpfc.h5ad"
    adata.write_h5ad(out)
    assert detect_format(out) == "h5ad"
    back = read_spots(out)
    assert_contract(back)
    assert (back.obs_names == adata.obs_names).all() and (back.var_names == adata.var_names).all()
    assert (back.X != adata.X).nnz == 0
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    a, b = dict(adata.uns["histosge"]), dict(back.uns["histosge"])
    assert b.pop("source").endswith("dlpfc.h5ad")
    a.pop("source")
    assert a == b


# ---------------------------------------------------------------- synthetic Space Ranger
def test_spaceranger_v2_mtx_gz_hires_only(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path, positions="v2", counts="mtx_gz", images=("hires",))
    assert detect_format(truth["folder"]) == "spaceranger"
    adata = read_spots(truth["folder"])
    assert_contract(adata)
    assert list(adata.obs_names) == list(truth["barcodes"])  # off-tissue spots dropped, order kept
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    np.testing.assert_array_equal(adata.obsm["spatial"], truth["xy"])
    np.testing.assert_array_equal(adata.obs["array_row"], truth["array_row"])
    np.testing.assert_array_equal(adata.obs["array_col"], truth["array_col"])
    assert list(adata.var_names[-2:]) == ["GENE10", "GENE0-1"]  # duplicate made unique
    assert list(adata.var["gene_ids"]) == truth["gene_ids"]
    info = adata.uns["histosge"]
    assert info["images"]["hires"]["scale"] == 0.2 and info["image"] == "hires"
    assert info["spot_diameter_px"] == SPOT_DIAMETER and info["mpp"] == pytest.approx(55 / SPOT_DIAMETER)
    assert info["library_id"] == "sample"
    assert adata.uns["spatial"]["sample"]["scalefactors"]["tissue_hires_scalef"] == 0.2


def test_spaceranger_v1_plain_mtx_no_images(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path, positions="v1", counts="mtx", images=())
    adata = read_spots(truth["folder"], format="spaceranger")
    assert_contract(adata)
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    assert adata.uns["histosge"]["images"] == {} and adata.uns["histosge"]["image"] is None
    assert spot_image(adata) is None


def test_spaceranger_h5_written_with_h5py(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path, counts="h5", images=("hires", "lowres"))
    adata = read_spots(truth["folder"])
    assert_contract(adata)
    assert list(adata.obs_names) == list(truth["barcodes"])
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    assert list(adata.var["gene_ids"]) == truth["gene_ids"]
    assert set(adata.uns["histosge"]["images"]) == {"hires", "lowres"}
    assert spot_image(adata)[1] == 0.2


def test_spaceranger_fullres_tiff_in_folder_and_image_argument(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path, images=("hires", "fullres"))
    adata = read_spots(truth["folder"])
    info = adata.uns["histosge"]
    assert info["image"] == "fullres" and info["images"]["fullres"]["scale"] == 1.0
    assert image_size(info["images"]["fullres"]["path"]) == FULLRES
    # an explicit image= wins over the folder's TIFF
    other = tmp_path / "other.png"
    Image.new("RGB", FULLRES).save(other)
    adata = read_spots(truth["folder"], image=other)
    assert spot_image(adata) == (str(other.resolve()), 1.0)


def test_detect_format_is_name_based(tmp_path: Path) -> None:
    assert detect_format(tmp_path / "missing") is None
    assert detect_format(tmp_path) is None
    (tmp_path / "notes.txt").write_text("hi")
    assert detect_format(tmp_path / "notes.txt") is None
    (tmp_path / "x.h5ad").write_bytes(b"not read")  # names only: contents are not opened
    assert detect_format(tmp_path / "x.h5ad") == "h5ad"


def test_image_size_tiff_pages(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((300, 500, 3), np.uint8), photometric="rgb", tile=(128, 128), subifds=1)
        tif.write(np.zeros((150, 250, 3), np.uint8), photometric="rgb", tile=(128, 128), subfiletype=1)
    assert image_size(path) == (500, 300)


# ---------------------------------------------------------------- synthetic ST v1
def test_st_v1_synthetic_measures_spacing(tmp_path: Path) -> None:
    truth = make_st_v1(tmp_path, spacing=150.0, image="png", counts_name="S1.tsv")
    assert detect_format(truth["folder"]) == "st_v1"
    adata = read_spots(truth["folder"])
    assert_contract(adata)
    assert list(adata.obs_names) == list(truth["ids"])
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"])
    info = adata.uns["histosge"]
    assert info["mpp"] == pytest.approx(200 / 150, rel=0.01)
    assert info["spot_diameter_px"] == pytest.approx(75, rel=0.01)
    assert info["library_id"] == "S1" and info["images"]["fullres"]["path"].endswith("he.png")


def test_st_v1_without_image(tmp_path: Path) -> None:
    truth = make_st_v1(tmp_path, image="", counts_name="S1.tsv.gz")
    adata = read_spots(truth["folder"])
    assert spot_image(adata) is None and adata.n_obs == len(truth["ids"])


# ---------------------------------------------------------------- h5ad
def test_h5ad_round_trip_synthetic(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path, images=("hires",))
    adata = read_spots(truth["folder"])
    adata.obs["cluster"] = "a"
    adata.write_h5ad(tmp_path / "spots.h5ad")
    back = read_spots(tmp_path / "spots.h5ad")
    assert_contract(back)
    np.testing.assert_array_equal(back.X.toarray(), truth["counts"])
    assert back.uns["histosge"]["images"] == adata.uns["histosge"]["images"]
    assert back.uns["histosge"]["platform"] == "visium"
    assert (back.obs["cluster"] == "a").all()


def test_h5ad_scanpy_style_uses_counts_layer(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(3, size=(30, 8)).astype(np.float32)
    xy = np.column_stack([np.arange(30) % 6 * 100.0, np.arange(30) // 6 * 100.0])
    adata = ad.AnnData(X=np.log1p(counts), obs=pd.DataFrame(index=[f"s{i}" for i in range(30)]))
    adata.layers["counts"] = counts
    adata.obsm["spatial"] = xy
    adata.obs["in_tissue"] = [0] + [1] * 29
    library = {"scalefactors": {"spot_diameter_fullres": 42.0}, "images": {"hires": np.zeros((2, 2, 3))}}
    adata.uns["spatial"] = {"lib": library}
    adata.uns["log1p"] = {"base": None}
    adata.write_h5ad(tmp_path / "sc.h5ad")
    out = read_spots(tmp_path / "sc.h5ad")
    assert_contract(out)
    np.testing.assert_array_equal(out.X.toarray(), counts[1:])
    info = out.uns["histosge"]
    assert info["spot_diameter_px"] == 42.0 and info["platform"] == "unknown" and info["lattice"] is None
    assert info["library_id"] == "lib" and info["images"] == {}
    assert "log1p" not in out.uns  # stale preprocessing marks are not carried over


def test_h5ad_estimates_spot_diameter(tmp_path: Path) -> None:
    xy = np.column_stack([np.arange(20) % 5 * 80.0, np.arange(20) // 5 * 80.0])
    adata = ad.AnnData(X=sparse.csr_matrix(np.ones((20, 3), np.float32)))
    adata.obsm["spatial"] = xy
    adata.write_h5ad(tmp_path / "bare.h5ad")
    out = read_spots(tmp_path / "bare.h5ad")
    assert out.uns["histosge"]["spot_diameter_px"] == pytest.approx(40.0)
    assert out.uns["histosge"]["mpp"] is None
    np.testing.assert_array_equal(out.obs["array_col"], np.arange(20) % 5)
    np.testing.assert_array_equal(out.obs["array_row"], np.arange(20) // 5)


def test_st_v1_genes_by_spots_table_is_turned_around(tmp_path: Path) -> None:
    truth = make_st_v1(tmp_path)
    path = truth["folder"] / "S1.tsv"
    pd.read_csv(path, sep="\t", index_col=0).T.to_csv(path, sep="\t")
    adata = read_spots(truth["folder"])
    assert list(adata.obs_names) == list(truth["ids"])
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])


# ---------------------------------------------------------------- gene symbols and ids
def test_genes_by_symbol_and_searchable_by_id(tmp_path: Path) -> None:
    from napari_histosge.errors import InputError
    from napari_histosge.io.preprocess import dense_targets, normalize_log1p, resolve_gene, select_genes

    for kind in ("h5", "mtx_gz"):
        truth = make_spaceranger(tmp_path / kind, counts=kind)
        adata = read_spots(truth["folder"])
        assert adata.var_names[3] == "GENE3" and adata.var["gene_ids"].iloc[3] == "ENSG00003"
        assert resolve_gene(adata, "ENSG00003") == "GENE3"
        assert resolve_gene(adata, " ensg00011 ") == "GENE0-1"  # the duplicate name's own id
        assert resolve_gene(adata, "GENE4") == "GENE4" and resolve_gene(adata, "NOPE") is None
    log = normalize_log1p(adata)
    assert select_genes(log, genes=["ENSG00003", "GENE4", "GENE3"]) == ["GENE3", "GENE4"]
    np.testing.assert_array_equal(dense_targets(log, ["ENSG00003"]), dense_targets(log, ["GENE3"]))
    with pytest.raises(InputError, match="'ENSG99999'"):
        select_genes(log, genes=["ENSG99999"])


@pytest.mark.realdata
def test_dlpfc_has_ids_as_names(dlpfc_151675: Path) -> None:
    # The DLPFC matrices here name each feature by its Ensembl id: there is no symbol to show.
    from napari_histosge.io.preprocess import resolve_gene

    adata = read_spots(dlpfc_151675)
    assert (adata.var_names == adata.var["gene_ids"]).all()
    assert resolve_gene(adata, "ensg00000197971") == "ENSG00000197971"  # MBP, typed in lower case


def test_log1p_column_is_one_gene_of_normalize_log1p(tmp_path: Path) -> None:
    from napari_histosge.io.preprocess import log1p_column, normalize_log1p, total_counts

    adata = read_spots(make_spaceranger(tmp_path, counts="h5")["folder"])
    adata.X[0] = 0  # a spot without counts stays 0
    adata.X.eliminate_zeros()
    log = normalize_log1p(adata)
    totals = total_counts(adata)
    for gene in ("GENE0", "GENE7", "GENE0-1"):
        expected = log[:, gene].X.toarray().ravel()
        np.testing.assert_allclose(log1p_column(adata, gene, totals=totals), expected, rtol=1e-6)
        np.testing.assert_allclose(log1p_column(adata, gene), expected, rtol=1e-6)
    assert log1p_column(adata, "GENE3")[0] == 0


def test_the_shared_demo_section_is_read_only_and_a_copy_is_writable(demo_section, demo_copy) -> None:
    # A write into the shared section was found only at the session's end, not in the test that made it.
    import os
    import stat

    shared = demo_section(0)
    for path in [shared, *shared.rglob("*")]:
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    copy = demo_copy()
    assert all(path.stat().st_mode & stat.S_IWUSR for path in [copy, *copy.rglob("*")])
    (copy / "written.txt").write_text("a test may change its copy")
    if os.geteuid() != 0:  # root ignores permissions: the session-end check catches its writes
        with pytest.raises(PermissionError):
            (shared / "written.txt").write_text("never")
