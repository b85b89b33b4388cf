"""Visium HD bins: the reader, its choice of bin size, bad input, and bins for training.

No real Visium HD data exists on the development machines: every test reads the synthetic
output of hd_fixture.py, written in Space Ranger's layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hd_fixture import make_visium_hd
from napari_histosge.errors import InputError
from napari_histosge.io import detect_format, read_spots
from napari_histosge.io._common import check_array_coverage, check_spot_diameter
from napari_histosge.io.visium_hd import FOOTPRINT_KEY, bin_up, limit_bins
from napari_histosge.models.subspot.geometry import FOOTPRINT_KEY as MODEL_FOOTPRINT_KEY
from napari_histosge.models.subspot.geometry import footprints_of
from test_io import assert_contract


@pytest.fixture
def hd(tmp_path: Path) -> dict:
    return make_visium_hd(tmp_path)


def _bin_dir(truth: dict, size: int) -> Path:
    return truth["folder"] / "binned_outputs" / f"square_{size:03d}um"


def _edit_factors(truth: dict, size: int, **changes) -> None:
    path = _bin_dir(truth, size) / "spatial" / "scalefactors_json.json"
    factors = json.loads(path.read_text())
    factors.update(changes)
    path.write_text(json.dumps(factors))


# ---------------------------------------------------------------- reading
def test_detects_the_output_its_binned_outputs_and_a_bin_folder(hd: dict) -> None:
    # the output's own spatial/ holds Space Ranger scale factors: HD must win
    assert detect_format(hd["folder"]) == "visium_hd"
    assert detect_format(hd["folder"] / "binned_outputs") == "visium_hd"
    assert detect_format(_bin_dir(hd, 8)) == "visium_hd"


@pytest.mark.parametrize("size", [8, 16])
def test_reads_bins_as_square_spots(hd: dict, size: int) -> None:
    adata = read_spots(hd["folder"], bin_um=size)
    truth = hd[size]
    assert_contract(adata)
    assert list(adata.obs_names) == list(truth["barcodes"])  # in-tissue bins, order of the matrix
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"])
    np.testing.assert_array_equal(adata.obs["array_row"], truth["rows"])
    info = adata.uns["histosge"]
    assert (info["platform"], info["lattice"], info["library_id"]) == ("visium_hd", "square", "hd_sample")
    assert info["spot_diameter_px"] == truth["side_px"] and info["mpp"] == 0.25
    assert info["footprint"] == {"shape": "square", "size_px": truth["side_px"], "angle": pytest.approx(0.0)}
    assert info["bins"]["bin_um"] == size and info["bins"]["available_um"] == [8, 16]
    assert set(info["images"]) == {"hires", "lowres"} and info["image"] == "hires"
    # the sub-spot model sees squares of the bin's side centred on the bins
    assert FOOTPRINT_KEY == MODEL_FOOTPRINT_KEY
    footprints = footprints_of(adata)
    assert (footprints.shape, footprints.size_px) == ("square", truth["side_px"])
    np.testing.assert_allclose(footprints.centres, truth["xy"])


def test_default_is_16_um_and_a_bin_folder_reads_alone(hd: dict) -> None:
    assert read_spots(hd["folder"]).uns["histosge"]["bins"]["bin_um"] == 16
    alone = read_spots(_bin_dir(hd, 8))
    assert alone.n_obs == len(hd[8]["barcodes"]) and alone.uns["histosge"]["library_id"] == "hd_sample"
    shutil.rmtree(_bin_dir(hd, 16))
    assert read_spots(hd["folder"]).uns["histosge"]["bins"]["bin_um"] == 8  # only 8 µm left


def test_gene_symbols_with_ids_kept(hd: dict) -> None:
    adata = read_spots(hd["folder"])
    assert adata.var_names[0] == "ACTB" and adata.var_names[-1] == "ACTB-1"  # made unique the scanpy way
    assert adata.var["gene_ids"].iloc[-1] == "ENSG00000000009"


def test_rotated_grid_gives_the_squares_angle_and_the_bin_affine(tmp_path: Path) -> None:
    truth = make_visium_hd(tmp_path, angle=0.05)
    adata = read_spots(truth["folder"], bin_um=8)
    assert adata.uns["histosge"]["footprint"]["angle"] == pytest.approx(0.05)
    bins = adata.uns["histosge"]["bins"]
    affine = np.asarray(bins["affine_xy"])
    design = np.column_stack([adata.obs["array_col"], adata.obs["array_row"], np.ones(adata.n_obs)])
    np.testing.assert_allclose(design @ affine.T, adata.obsm["spatial"], atol=1e-6)
    assert bins["fit_miss_px"] < 1e-6


def test_square_layout_passes_the_shared_plausibility_checks(hd: dict) -> None:
    # a bin is exactly one spacing wide: a disc check must not call that too wide
    adata = read_spots(hd["folder"], bin_um=8)
    xy = adata.obsm["spatial"]
    check_spot_diameter(adata.uns["histosge"]["spot_diameter_px"], xy, Path("x"))
    check_array_coverage(xy, adata.uns["histosge"]["images"], Path("x"))
    with pytest.raises(InputError, match="spot_diameter_fullres"):
        check_spot_diameter(2 * adata.uns["histosge"]["spot_diameter_px"], xy, Path("x"))


def test_h5ad_round_trip_keeps_the_footprint_and_the_grid(hd: dict, tmp_path: Path) -> None:
    adata = read_spots(hd["folder"], bin_um=8)
    adata.write_h5ad(tmp_path / "bins.h5ad")
    back = read_spots(tmp_path / "bins.h5ad")
    assert back.uns["histosge"]["footprint"]["shape"] == "square"
    np.testing.assert_allclose(np.asarray(back.uns["histosge"]["bins"]["affine_xy"]),
                               adata.uns["histosge"]["bins"]["affine_xy"])
    np.testing.assert_array_equal(back.obsm[FOOTPRINT_KEY], adata.obsm[FOOTPRINT_KEY])


# ---------------------------------------------------------------- bins for training
def test_bin_up_reproduces_space_rangers_coarser_bins(hd: dict) -> None:
    fine, coarse = read_spots(hd["folder"], bin_um=8), read_spots(hd["folder"], bin_um=16)
    up = bin_up(fine, 2)
    assert set(up.obs_names) == set(coarse.obs_names)  # same barcodes as Space Ranger's 16 µm bins
    up = up[coarse.obs_names]
    np.testing.assert_array_equal(up.X.toarray(), coarse.X.toarray())
    np.testing.assert_allclose(up.obsm[FOOTPRINT_KEY], coarse.obsm["spatial"], atol=1e-6)
    info = up.uns["histosge"]
    assert info["footprint"]["size_px"] == info["spot_diameter_px"] == coarse.uns["histosge"]["spot_diameter_px"]
    assert info["bins"]["bin_um"] == 16
    with pytest.raises(InputError, match="at least 2 x 2"):
        bin_up(fine, 1)


def test_limit_bins_subsamples_only_beyond_the_cap(hd: dict) -> None:
    adata = read_spots(hd["folder"], bin_um=8)
    assert limit_bins(adata, adata.n_obs) is adata
    small = limit_bins(adata, 100, seed=3)
    assert small.n_obs == 100 and small.uns["histosge"]["subsampled"] == {"bins": adata.n_obs, "kept": 100,
                                                                            "seed": 3}
    order = adata.obs_names.get_indexer(small.obs_names)
    assert (np.diff(order) > 0).all()  # reading order kept
    assert list(limit_bins(adata, 100, seed=3).obs_names) == list(small.obs_names)
    assert list(limit_bins(adata, 100, seed=4).obs_names) != list(small.obs_names)
    with pytest.raises(InputError, match="at least 1"):
        limit_bins(adata, 0)


def test_the_library_trains_on_at_most_max_bins_as_the_cli_does(hd: dict) -> None:
    """The bin limit is a training setting that fit applies (the CLI, the Train widget and hs.fit)."""
    from napari_histosge import fit
    from napari_histosge.features import FeatureConfig
    from napari_histosge.models import train_config

    adata = read_spots(hd["folder"], bin_um=8)
    config = train_config(epochs=1, n_top_genes=5, val_fraction=0.0, max_bins=150, device="cpu")
    model = fit(adata, train_config=config, feature_config=FeatureConfig(extractor="none"))
    assert model.meta.n_train_spots == 150 < adata.n_obs
    whole = fit(adata, train_config=train_config(epochs=1, n_top_genes=5, val_fraction=0.0, device="cpu"),
                feature_config=FeatureConfig(extractor="none"))
    assert whole.meta.n_train_spots == adata.n_obs  # fewer bins than the default limit: every one
    with pytest.raises(InputError, match="training setting max_bins must be an integer >= 1, got 0"):
        train_config(max_bins=0)
    # The hold-out protocol trains on at most max_bins of its training spots, and says so.
    from napari_histosge import recover

    result = recover(adata, holdout=0.5, train_config=config, feature_config=FeatureConfig(extractor="none"))
    assert len(result.train_ids) == 150 == result.model.meta.n_train_spots and result.summary()["n_train"] == 150


def test_the_bin_limit_keeps_each_spot_with_its_own_precomputed_features(hd: dict, monkeypatch) -> None:
    """A one-section list with one SpotFeatures is cut alike; features of another length are refused."""
    from napari_histosge.features import FeatureConfig, SpotFeatures
    from napari_histosge.models import train_config
    from napari_histosge.pipeline import steps
    from napari_histosge.progress import run_to_end

    adata = read_spots(hd["folder"], bin_um=8)
    rows = np.arange(adata.n_obs, dtype=np.float32)
    features = SpotFeatures(np.stack([rows, rows], axis=1), np.zeros((adata.n_obs, 3), np.float32), "none")
    seen = {}

    def capture(data, *_args, **_kwargs):
        seen["data"] = data
        raise InputError("captured")
        yield  # a generator, as train is

    monkeypatch.setattr(steps, "train", capture)
    config = train_config(epochs=1, n_top_genes=5, val_fraction=0.0, max_bins=150, device="cpu")
    for sections in ([adata], adata):
        with pytest.raises(InputError, match="captured"):
            run_to_end(steps.fit(sections, train_config=config, features=features,
                                 feature_config=FeatureConfig(extractor="none")))
        data = seen.pop("data")
        assert len(data.spot_ids) == 150
        assert list(data.features[:, 0].astype(int)) == list(adata.obs_names.get_indexer(data.spot_ids))
    short = SpotFeatures(features.features[:-1], features.mean_rgb[:-1], "none")
    for cap in (150, adata.n_obs):  # cut or not: the rows must be the section's spots
        with pytest.raises(InputError, match=f"{adata.n_obs - 1} precomputed feature rows for {adata.n_obs} spots"):
            run_to_end(steps.fit(adata, train_config=train_config(epochs=1, n_top_genes=5, max_bins=cap),
                                 features=short, feature_config=FeatureConfig(extractor="none")))


def test_a_model_trained_on_a_cut_section_records_the_whole_sections_box(hd: dict) -> None:
    """Predictions on the whole section are placed by the box of every spot, not of the spots trained on."""
    from napari_histosge import fit
    from napari_histosge.features import FeatureConfig
    from napari_histosge.models import train_config
    from napari_histosge.pipeline.placement import is_training_section, section_box
    from napari_histosge.training.inputs import section_frame

    adata = read_spots(hd["folder"], bin_um=8)
    adata.uns["histosge"]["source"] = ""  # only the box tells the section (an .h5ad without its source)
    config = train_config(epochs=1, n_top_genes=5, val_fraction=0.0, max_bins=20, device="cpu")
    model = fit(adata, train_config=config, feature_config=FeatureConfig(extractor="none"))
    assert model.meta.n_train_spots == 20
    assert model.meta.section_box == section_box(adata) and is_training_section(model, adata)
    other = adata.copy()
    other.uns["histosge"]["library_id"] = "other"
    both = fit([adata, other], train_config=config, feature_config=FeatureConfig(extractor="none"))
    whole = np.stack(section_frame(adata.obsm["spatial"]))
    assert np.allclose(both.meta.section_frames, [whole, whole])


# ---------------------------------------------------------------- bad input: one clear line each
def test_positions_but_no_counts(hd: dict) -> None:
    (_bin_dir(hd, 16) / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(InputError, match="bin positions but no counts: missing filtered_feature_bc_matrix.h5"):
        read_spots(hd["folder"])


def test_missing_parquet(hd: dict) -> None:
    (_bin_dir(hd, 8) / "spatial" / "tissue_positions.parquet").unlink()
    with pytest.raises(InputError, match="missing bin positions spatial/tissue_positions.parquet in square_008um"):
        read_spots(hd["folder"], bin_um=8)


def test_corrupt_parquet(hd: dict) -> None:
    (_bin_dir(hd, 8) / "spatial" / "tissue_positions.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read the bin positions"):
        read_spots(hd["folder"], bin_um=8)


def test_bin_size_of_the_scale_factors_differs_from_the_folder(hd: dict) -> None:
    _edit_factors(hd, 8, bin_size_um=16.0)
    with pytest.raises(InputError, match="bin_size_um is 16 but the folder is square_008um"):
        read_spots(hd["folder"], bin_um=8)


def test_scale_factors_disagree(hd: dict) -> None:
    _edit_factors(hd, 8, microns_per_pixel=0.5)
    with pytest.raises(InputError, match="the scale factors disagree"):
        read_spots(hd["folder"], bin_um=8)


def test_positions_of_another_bin_size(hd: dict) -> None:
    # 16 µm positions in the 8 µm folder: neighbours are two 8 µm sides apart
    shutil.copy(_bin_dir(hd, 16) / "spatial" / "tissue_positions.parquet",
                _bin_dir(hd, 8) / "spatial" / "tissue_positions.parquet")
    with pytest.raises(InputError, match="not on the 8 µm grid"):
        read_spots(hd["folder"], bin_um=8)


def test_positions_off_the_grid(hd: dict) -> None:
    path = _bin_dir(hd, 8) / "spatial" / "tissue_positions.parquet"
    table = pd.read_parquet(path)
    table.loc[5, "pxl_col_in_fullres"] += 10.0  # a third of a bin
    table.to_parquet(path, index=False)
    with pytest.raises(InputError, match="pairs of neighbouring bins are not one bin side"):
        read_spots(hd["folder"], bin_um=8)


def test_positions_lack_a_column(hd: dict) -> None:
    path = _bin_dir(hd, 8) / "spatial" / "tissue_positions.parquet"
    pd.read_parquet(path).drop(columns="in_tissue").to_parquet(path, index=False)
    with pytest.raises(InputError, match="bin positions lack column"):
        read_spots(hd["folder"], bin_um=8)


@pytest.mark.parametrize(("bin_um", "message"), [(2, "bin size 2 µm cannot be read; choose 8 or 16"),
                                                  (12, "bin size 12 µm cannot be read")])
def test_unreadable_bin_sizes(hd: dict, bin_um: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_spots(hd["folder"], bin_um=bin_um)


def test_bin_size_not_present(hd: dict) -> None:
    shutil.rmtree(_bin_dir(hd, 8))
    with pytest.raises(InputError, match=r"no 8 µm bins here \(square_008um\); present: 16 µm"):
        read_spots(hd["folder"], bin_um=8)
    with pytest.raises(InputError, match=r"no 8 µm bins here"):
        read_spots(_bin_dir(hd, 16), bin_um=8)


def test_no_bin_folders(hd: dict) -> None:
    for size in (8, 16):
        shutil.rmtree(_bin_dir(hd, size))
    with pytest.raises(InputError, match="no square_008um or square_016um folder"):
        read_spots(hd["folder"])


def test_bin_size_for_a_visium_folder(tmp_path: Path) -> None:
    from test_io import make_spaceranger

    truth = make_spaceranger(tmp_path)
    with pytest.raises(InputError, match="a bin size applies to Visium HD outputs only"):
        read_spots(truth["folder"], bin_um=8)


def test_the_cli_trains_on_chosen_bins_and_at_most_max_bins(hd: dict, tmp_path: Path) -> None:
    from napari_histosge.cli.main import main
    from napari_histosge.models import load_model

    out = tmp_path / "hd.pt"
    assert main(["train", str(hd["folder"]), "--bin-um", "8", "--max-bins", "300", "--out", str(out),
                 "--extractor", "none", "--epochs", "2", "--n-genes", "5", "--val-fraction", "0", "--quiet"]) == 0
    model = load_model(out, device="cpu")
    assert model.meta.n_train_spots == 300  # a seeded subset of the 8 µm bins
    assert main(["train", str(hd["folder"]), "--max-bins", "0", "--out", str(tmp_path / "x.pt")]) == 2
