"""Every expected bad input to the readers is one clear InputError naming the file."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_histosge.errors import InputError
from napari_histosge.io import image_size, read_spots
from test_io import make_spaceranger, make_st_v1, write_counts


def _positions(folder: Path) -> Path:
    return folder / "spatial" / "tissue_positions.csv"


def _edit_positions(folder: Path, edit) -> None:
    table = pd.read_csv(_positions(folder))
    edit(table)
    table.to_csv(_positions(folder), index=False)


def _scalefactors(folder: Path, **changes) -> None:
    path = folder / "spatial" / "scalefactors_json.json"
    factors = json.loads(path.read_text())
    factors.update(changes)
    path.write_text(json.dumps({k: v for k, v in factors.items() if v is not None}))


# ---------------------------------------------------------------- paths and formats
def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        read_spots(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")


def test_unsupported_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path / "notes.txt", tmp_path):
        with pytest.raises(InputError, match="unsupported input.*Space Ranger.*Spatial Transcriptomics v1.*h5ad"):
            read_spots(path)


def test_unknown_format_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown format 'visium'"):
        read_spots(tmp_path, format="visium")
    with pytest.raises(InputError, match="needs an .h5ad file"):
        read_spots(tmp_path, format="h5ad")


def test_missing_image_argument(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path)
    with pytest.raises(InputError, match="image file does not exist"):
        read_spots(truth["folder"], image=tmp_path / "missing.tif")


# ---------------------------------------------------------------- Space Ranger files
def test_missing_positions(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    _positions(folder).unlink()
    with pytest.raises(InputError, match="missing positions file"):
        read_spots(folder)


def test_missing_scalefactors(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    (folder / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(InputError, match=r"scalefactors_json.json: missing scale factors file"):
        read_spots(folder)


def test_scalefactors_broken_or_incomplete(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    _scalefactors(folder, spot_diameter_fullres=None)
    with pytest.raises(InputError, match="lacks a numeric 'spot_diameter_fullres'"):
        read_spots(folder)
    (folder / "spatial" / "scalefactors_json.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the scale factors"):
        read_spots(folder)


def test_missing_counts(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    for f in (folder / "filtered_feature_bc_matrix").iterdir():
        f.unlink()
    (folder / "filtered_feature_bc_matrix").rmdir()
    with pytest.raises(InputError, match="missing counts"):
        read_spots(folder)


def test_corrupt_h5_counts(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path, counts="h5")["folder"]
    (folder / "filtered_feature_bc_matrix.h5").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError, match=r"filtered_feature_bc_matrix.h5: cannot read the 10x HDF5"):
        read_spots(folder)


def test_corrupt_mtx_counts(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path, counts="mtx")["folder"]
    (folder / "filtered_feature_bc_matrix" / "matrix.mtx").write_text("this is not a matrix\n")
    with pytest.raises(InputError, match=r"matrix.mtx: cannot read the Matrix Market"):
        read_spots(folder)


def test_mtx_shape_mismatch(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path, counts="mtx")["folder"]
    bc = folder / "filtered_feature_bc_matrix" / "barcodes.tsv"
    bc.write_text("\n".join(bc.read_text().split("\n")[:-3]) + "\n")
    with pytest.raises(InputError, match="barcodes"):
        read_spots(folder)


@pytest.mark.parametrize(
    ("value", "what"), [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1, "negative")]
)
def test_bad_count_values_in_mtx(tmp_path: Path, value: float, what: str) -> None:
    folder = tmp_path / "s"
    truth = make_spaceranger(folder, counts="mtx")
    mtx = truth["folder"] / "filtered_feature_bc_matrix"
    for f in mtx.iterdir():
        f.unlink()
    mtx.rmdir()
    counts = truth["counts"].astype(float)
    counts[0, 0] = value
    barcodes = list(truth["barcodes"])
    write_counts(truth["folder"], "mtx", barcodes, [f"G{i}" for i in range(counts.shape[1])], truth["gene_ids"], counts)
    with pytest.raises(InputError, match=what):
        read_spots(truth["folder"])


def test_positions_wrong_columns(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    _edit_positions(folder, lambda t: t.insert(6, "extra", 1))
    with pytest.raises(InputError, match="must have 6 columns"):
        read_spots(folder)


def test_no_barcode_overlap(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    _edit_positions(folder, lambda t: t.__setitem__("barcode", "X" + t["barcode"]))
    with pytest.raises(InputError, match=r"tissue_positions.csv: no barcode of the counts .* appears"):
        read_spots(folder)


def test_empty_tissue(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    _edit_positions(folder, lambda t: t.__setitem__("in_tissue", 0))
    with pytest.raises(InputError, match="no spots left under tissue"):
        read_spots(folder)


def test_nan_positions(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path)["folder"]
    _edit_positions(folder, lambda t: t.__setitem__("pxl_row_in_fullres", t["pxl_row_in_fullres"].where(t.index != 1)))
    with pytest.raises(InputError, match="not finite"):
        read_spots(folder)


def test_some_positions_outside_image(tmp_path: Path) -> None:
    truth = make_spaceranger(tmp_path, images=("hires",))
    moved = truth["barcodes"][:2]

    def edit(t: pd.DataFrame) -> None:
        t.loc[t["barcode"].isin(moved), "pxl_col_in_fullres"] = 1150  # image is 1000 px wide

    _edit_positions(truth["folder"], edit)
    with pytest.raises(InputError, match=r"tissue_positions.csv: 2 of \d+ spots fall outside") as info:
        read_spots(truth["folder"])
    assert moved[0] in str(info.value)  # names an example


def test_scalefactor_does_not_match_image(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path, images=("hires",))["folder"]
    _scalefactors(folder, tissue_hires_scalef=2.0)  # 10x too large
    expected = r"scalefactors_json.json: scale factor for the hires image \(2\) does not match"
    with pytest.raises(InputError, match=expected):
        read_spots(folder)


def test_fullres_image_does_not_match(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path, images=())["folder"]
    small = tmp_path / "thumb.png"
    Image.new("RGB", (100, 80)).save(small)
    with pytest.raises(InputError, match=r"thumb.png: spot positions do not match this image"):
        read_spots(folder, image=small)


def test_corrupt_image_header(tmp_path: Path) -> None:
    folder = make_spaceranger(tmp_path, images=("hires",))["folder"]
    (folder / "spatial" / "tissue_hires_image.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"tissue_hires_image.png: cannot read the image header"):
        read_spots(folder)


def test_image_size_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        image_size(tmp_path / "none.jpg")
    bad_tif = tmp_path / "bad.tif"
    bad_tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match=re.escape(f"{bad_tif}: cannot read the image header")):
        image_size(bad_tif)


# ---------------------------------------------------------------- ST v1 files
def test_st_v1_corrupt_counts(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    (folder / "S1.tsv").unlink()
    (folder / "S1.tsv.gz").write_bytes(b"\x1f\x8b\x08\x00broken gzip")
    with pytest.raises(InputError, match=r"S1.tsv.gz: cannot read the counts table"):
        read_spots(folder)


def test_st_v1_non_numeric_and_negative_counts(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    table = pd.read_csv(folder / "S1.tsv", sep="\t", index_col=0)
    table.iloc[5, 0] = -3  # a selected spot (the first three are not)
    table.to_csv(folder / "S1.tsv", sep="\t")
    with pytest.raises(InputError, match=r"S1.tsv: counts contain 1 negative values"):
        read_spots(folder)
    table["G1"] = "abc"
    table.to_csv(folder / "S1.tsv", sep="\t")
    with pytest.raises(InputError, match="non-numeric columns"):
        read_spots(folder)


def test_st_v1_selection_problems(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    sel_path = folder / "S1_selection.tsv"
    sel = pd.read_csv(sel_path, sep="\t")
    sel.assign(selected=0).to_csv(sel_path, sep="\t", index=False)
    with pytest.raises(InputError, match="no spots left under tissue"):
        read_spots(folder)
    sel.assign(x=sel.x + 100).to_csv(sel_path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"S1_selection.tsv: no spot id of the counts"):
        read_spots(folder)
    sel.drop(columns="pixel_x").to_csv(sel_path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"lacks columns \['pixel_x'\]"):
        read_spots(folder)


def test_st_v1_positions_outside_image(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    sel_path = folder / "S1_selection.tsv"
    sel = pd.read_csv(sel_path, sep="\t")
    sel.loc[5, "pixel_y"] = 1600  # image is 1300 px high
    sel.to_csv(sel_path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"S1_selection.tsv: 1 of \d+ spots fall outside .* e\.g\. \d+x\d+ at"):
        read_spots(folder)


def test_st_v1_missing_selection(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    (folder / "S1_selection.tsv").unlink()
    with pytest.raises(InputError, match="missing spot selection file"):
        read_spots(folder, format="st_v1")


# ---------------------------------------------------------------- h5ad
def test_h5ad_without_spatial(tmp_path: Path) -> None:
    path = tmp_path / "a.h5ad"
    ad.AnnData(X=np.ones((3, 2), np.float32)).write_h5ad(path)
    with pytest.raises(InputError, match=r"a.h5ad: the .h5ad file has no obsm\['spatial'\]"):
        read_spots(path)


def test_h5ad_not_raw_counts(tmp_path: Path) -> None:
    path = tmp_path / "norm.h5ad"
    adata = ad.AnnData(X=np.full((4, 2), 0.5, np.float32))
    adata.obsm["spatial"] = np.arange(8, dtype=float).reshape(4, 2)
    adata.write_h5ad(path)
    with pytest.raises(InputError, match="non-integer values.*raw counts are needed"):
        read_spots(path)
    adata.X[0, 0] = -1.0
    adata.write_h5ad(path)
    with pytest.raises(InputError, match="negative"):
        read_spots(path)


def test_h5ad_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "broken.h5ad"
    path.write_bytes(b"definitely not hdf5")
    with pytest.raises(InputError, match=r"broken.h5ad: cannot read the .h5ad file"):
        read_spots(path)


def test_h5ad_gz_counts_file_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "counts.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("a\tb\n")
    with pytest.raises(InputError, match="unsupported input"):
        read_spots(path)


# ---------------------------------------------------------------- implausible real data (doctored copies)
def _copy_section(src: Path, dst: Path) -> Path:
    """``src`` in ``dst``: small files copied (to be doctored), images and count matrices linked."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix.lower() in (".jpg", ".png", ".h5"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


def _real_scalefactors(folder: Path, key: str, factor: float) -> None:
    path = folder / "spatial" / "scalefactors_json.json"
    factors = json.loads(path.read_text())
    factors[key] *= factor
    path.write_text(json.dumps(factors))


@pytest.mark.slow
def test_st_v1_non_integer_counts_real(her2st_b4: Path, tmp_path: Path) -> None:
    folder = _copy_section(her2st_b4, tmp_path / "B4")
    table = pd.read_csv(folder / "B4.tsv.gz", sep="\t", index_col=0)
    table = table.astype(float)
    table.iloc[:, :3] = table.iloc[:, :3] / 2 + 0.25  # e.g. normalised values among the counts
    table.to_csv(folder / "B4.tsv.gz", sep="\t")
    with pytest.raises(InputError, match=r"B4\.tsv\.gz: the counts table has \d+ non-integer values .*raw counts"):
        read_spots(folder)


def test_one_gene_section_is_too_few_to_train_on(her2st_b4: Path, tmp_path: Path) -> None:
    from napari_histosge.io.preprocess import normalize_log1p

    folder = _copy_section(her2st_b4, tmp_path / "B4")
    table = pd.read_csv(folder / "B4.tsv.gz", sep="\t", index_col=0)
    table.iloc[:, :1].to_csv(folder / "B4.tsv.gz", sep="\t")
    spots = read_spots(folder)  # still shown in napari
    with pytest.raises(InputError, match=r"B4: the data has only 1 gene: .*nothing to train on"):
        normalize_log1p(spots)


def test_visium_spot_diameter_times_ten_is_refused(dlpfc_151675: Path, tmp_path: Path) -> None:
    folder = _copy_section(dlpfc_151675, tmp_path / "151675")
    _real_scalefactors(folder, "spot_diameter_fullres", 10)
    expected = r"scalefactors_json.json: spot_diameter_fullres is 963.9 px, but neighbouring spot centres are only"
    with pytest.raises(InputError, match=expected):
        read_spots(folder)


def test_visium_lowres_scale_divided_by_ten_is_refused(dlpfc_151675: Path, tmp_path: Path) -> None:
    folder = _copy_section(dlpfc_151675, tmp_path / "151675")
    _real_scalefactors(folder, "tissue_lowres_scalef", 0.1)
    expected = (r"scalefactors_json.json: at the lowres scale factor 0\.0045\d* the spot array spans only \d+\.\d% of "
                r"tissue_lowres_image.png \(600 x 600 px\).*check tissue_lowres_scalef")
    with pytest.raises(InputError, match=expected):
        read_spots(folder)


@pytest.mark.slow
def test_every_real_section_passes_the_plausibility_checks(real_data: Path) -> None:
    sections = [p for p in sorted(real_data.glob("*/*")) if p.is_dir()]
    assert len(sections) >= 6
    for folder in sections:
        assert read_spots(folder).n_obs > 0, folder
