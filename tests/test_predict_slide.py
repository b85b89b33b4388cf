"""Predicting an unmeasured slide (a bare H&E image): lattice, µm grid, positions, bad inputs, provenance, µm."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.spatial import cKDTree

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.io import read_spots
from napari_histosge.models import train_config
from napari_histosge.pipeline.recovery import recover
from napari_histosge.pipeline.slide_prediction import MPP_ASSUMED, MPP_GIVEN, MPP_METADATA, predict_slide
from napari_histosge.pipeline.steps import fit, predict_spots, superresolve
from napari_histosge.plugin.reader import prediction_to_layers, read_prediction
from napari_histosge.progress import run_to_end

# A model trained on the demo section predicts over bare slides (real ones too): the full run only.
pytestmark = pytest.mark.slow

FAST = dict(epochs=3, n_top_genes=10, val_fraction=0.0)


@pytest.fixture(scope="module")
def model(demo):
    return run_to_end(fit(demo, train_config=train_config("histosge", **FAST)))


@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "demo.pt"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def subspot_path(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("subspot") / "subspot.pt"
    run_to_end(fit(demo, train_config=train_config("subspot", n_top_genes=10))).save(path)
    return path


def _demo_rgb(demo) -> np.ndarray:
    return np.asarray(Image.open(demo.uns["histosge"]["images"]["fullres"]["path"]).convert("RGB"))


def write_tiff(rgb: np.ndarray, path: Path, mpp: float | None) -> Path:
    """A flat TIFF of ``rgb``, with ``mpp`` µm per pixel in its resolution tags (none: no pixel size)."""
    if mpp is None:
        tifffile.imwrite(path, rgb)
    else:
        tifffile.imwrite(path, rgb, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def slide(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo section's H&E alone (no spots, no counts), its pixel size in the TIFF tags."""
    return write_tiff(_demo_rgb(demo), tmp_path_factory.mktemp("slide") / "slide.tif", demo.uns["histosge"]["mpp"])


def _nearest_spacing(xy: np.ndarray) -> float:
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1]))


# ----------------------------------------------------------------------------- library
def test_lattice_over_the_tissue_at_the_training_spacing(model, demo, slide: Path) -> None:
    pred = run_to_end(predict_slide(model, slide))
    info = pred.uns["histosge"]
    assert info["positions"] == "spot lattice" and info["mpp_source"] == MPP_METADATA and info["fold"] == 1
    assert list(pred.var_names) == model.genes and pred.n_obs > 0
    # The training section's spacing and kind: a square lattice as far apart as the demo's spots.
    assert info["lattice"] == "square"
    assert _nearest_spacing(pred.obsm["spatial"]) == pytest.approx(_nearest_spacing(demo.obsm["spatial"]), rel=0.03)
    assert info["spot_diameter_px"] == pytest.approx(demo.uns["histosge"]["spot_diameter_px"])
    # every site on the stored tissue mask, and the mask holds tissue
    from napari_histosge.slide.mask import TissueMask

    tissue = TissueMask.from_uns(info["tissue_mask"])
    assert tissue.contains(pred.obsm["spatial"]).all() and 0 < tissue.tissue_fraction < 1
    assert {"array_row", "array_col"} <= set(pred.obs.columns)
    np.testing.assert_allclose(pred.obsm["spatial_um"], pred.obsm["spatial"] * info["mpp"])
    assert info["model"] == "histosge" and info["training_sources"] == [demo.uns["histosge"]["source"]]


def test_the_bare_slide_at_the_spots_predicts_as_the_section(model, demo, slide: Path) -> None:
    """Same pixels, same patches, same box: the slide alone gives the section's own predictions."""
    xy = np.asarray(demo.obsm["spatial"], np.float64)
    alone = run_to_end(predict_slide(model, slide, positions=xy, position_ids=list(demo.obs_names)))
    section = run_to_end(predict_spots(model, demo))
    assert alone.uns["histosge"]["positions"] == "given"
    assert list(alone.obs_names) == list(section.obs_names)
    np.testing.assert_allclose(alone.X, section.X, rtol=1e-4, atol=1e-4)


def test_grid_follows_the_grid_contract_and_opens_as_a_raster(model, slide: Path, tmp_path: Path) -> None:
    pred = run_to_end(predict_slide(model, slide, grid_um=150.0))
    info = pred.uns["histosge"]
    assert info["positions"] == "grid" and "fold" not in info
    grid = info["grid"]
    assert grid["cell_um"] == pytest.approx(150.0) and grid["cell_px"] == pytest.approx(150.0 / info["mpp"])
    rows, cols = pred.obs["grid_row"].to_numpy(), pred.obs["grid_col"].to_numpy()
    centres = np.column_stack([grid["origin_xy"][0] + cols * grid["cell_px"],
                               grid["origin_xy"][1] + rows * grid["cell_px"]])
    np.testing.assert_allclose(pred.obsm["spatial"], centres)
    assert (rows < grid["shape"][0]).all() and (cols < grid["shape"][1]).all()
    path = tmp_path / "grid.h5ad"
    pred.write_h5ad(path)
    layers = prediction_to_layers(read_prediction(path), path=path)
    kinds = [kind for _, _, kind in layers]
    assert kinds[0] == "image" and layers[0][1]["metadata"]["histosge"]["role"] == "slide"
    heat = layers[1]
    assert heat[2] == "image" and heat[1]["metadata"]["histosge"]["role"] == "heatmap"
    assert heat[0].shape == tuple(grid["shape"])  # one raster pixel per grid cell


def test_unknown_pixel_size_assumes_the_training_slides(model, demo, tmp_path: Path) -> None:
    plain = write_tiff(_demo_rgb(demo), tmp_path / "plain.tif", None)
    with pytest.warns(UserWarning, match="pixel size is unknown: assuming the training slides'"):
        pred = run_to_end(predict_slide(model, plain))
    assert pred.uns["histosge"]["mpp_source"] == MPP_ASSUMED
    assert pred.uns["histosge"]["mpp"] == pytest.approx(demo.uns["histosge"]["mpp"])


def test_a_stated_pixel_size_places_the_training_spot_in_µm(model, demo, tmp_path: Path) -> None:
    coarse = write_tiff(_demo_rgb(demo), tmp_path / "coarse.tif", 4 * demo.uns["histosge"]["mpp"])
    with pytest.raises(InputError, match=r"differs by more than 2x .* --um-per-px"):
        run_to_end(predict_slide(model, coarse))
    mpp = 4 * demo.uns["histosge"]["mpp"]
    few = np.asarray(demo.obsm["spatial"], np.float64)[:20]  # the lattice would be 16 times as dense here
    pred = run_to_end(predict_slide(model, coarse, um_per_px=mpp, positions=few))
    info = pred.uns["histosge"]
    assert info["mpp_source"] == MPP_GIVEN
    # the same 100 µm spot, a quarter of the pixels across
    assert info["spot_diameter_px"] == pytest.approx(demo.uns["histosge"]["spot_diameter_px"] / 4)


def test_superresolve_and_recover_record_provenance_and_µm(model, demo) -> None:
    mpp = demo.uns["histosge"]["mpp"]
    fine = run_to_end(superresolve(model, demo, 4))
    small = dict(FAST, epochs=2)
    held = run_to_end(recover(demo, train_config=train_config("histosge", **small))).predictions
    for pred in (fine, held):
        info = pred.uns["histosge"]
        assert info["model"] == "histosge" and info["training_sections"] == [Path(demo.uns["histosge"]["source"]).name]
        np.testing.assert_allclose(pred.obsm["spatial_um"], np.asarray(pred.obsm["spatial"]) * mpp)


def test_a_model_that_needs_measured_spots_is_refused_before_any_work(subspot_path: Path, slide: Path) -> None:
    from napari_histosge.models import load_model

    with pytest.raises(InputError, match="subspot model predicts from the measured spots.*use a histosge model"):
        next(predict_slide(load_model(subspot_path), slide))


def test_a_model_without_image_features_is_refused_on_a_bare_slide(demo, slide: Path) -> None:
    from napari_histosge.features import FeatureConfig

    positions_only = run_to_end(fit(demo, train_config=train_config("histosge", **FAST),
                                    feature_config=FeatureConfig(extractor="none")))
    with pytest.raises(InputError, match="reads no image features"):
        next(predict_slide(positions_only, slide))


# ----------------------------------------------------------------------------- command line
def test_cli_predicts_a_bare_slide(model_path: Path, slide: Path, tmp_path: Path, demo,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "slide.h5ad"
    assert main(["predict", str(model_path), str(slide), "--out", str(out), "--quiet"]) == 0
    assert "spot lattice sites on the tissue" in capsys.readouterr().out
    pred = ad.read_h5ad(out)
    info = pred.uns["histosge"]
    assert info["model_path"] == str(model_path.resolve()) and list(info["training_sections"]) == [
        Path(str(demo.uns["histosge"]["source"])).name]  # the trained section's folder
    np.testing.assert_allclose(pred.obsm["spatial_um"], pred.obsm["spatial"] * info["mpp"])
    grid_out = tmp_path / "grid.h5ad"
    assert main(["predict", str(model_path), str(slide), "--grid-um", "200", "--out", str(grid_out), "--quiet"]) == 0
    assert "grid_row" in ad.read_h5ad(grid_out).obs


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("histosge: error: "), err
    return err[0]


def test_cli_warns_in_one_line_when_the_pixel_size_is_unknown(model_path: Path, demo, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    jpeg = tmp_path / "slide.png"
    Image.fromarray(_demo_rgb(demo)).save(jpeg)
    assert main(["predict", str(model_path), str(jpeg), "--out", str(tmp_path / "o.h5ad"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [next(line for line in err if line.startswith("histosge: warning: the slide's pixel size is "
                                                                 "unknown: assuming"))]


@pytest.mark.parametrize("case", ["model needs spots", "pixel size", "empty mask", "blank slide", "section option",
                                  "image option", "grid and positions"])
def test_cli_bad_input_one_line_exit_2(case: str, model_path: Path, subspot_path: Path, demo, demo_dir: Path,
                                       slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "out.h5ad")
    rgb, mpp = _demo_rgb(demo), demo.uns["histosge"]["mpp"]
    expected = {
        "model needs spots": ([str(subspot_path), str(slide)], "subspot model predicts from the measured spots"),
        "pixel size": ([str(model_path), str(write_tiff(rgb, tmp_path / "c.tif", 4 * mpp))],
                       "differs by more than 2x"),
        "empty mask": ([str(model_path), str(slide), "--mask", str(write_tiff(np.zeros((40, 40), np.uint8),
                                                                                tmp_path / "m.tif", None))],
                       "the mask holds no tissue"),
        "blank slide": ([str(model_path), str(write_tiff(np.full_like(rgb, 242), tmp_path / "glass.tif", mpp))],
                        "no tissue found"),
        "section option": ([str(model_path), str(demo_dir), "--grid-um", "50"], "for a bare slide image"),
        "image option": ([str(model_path), str(slide), "--image", str(slide)], "DATA is already a slide image"),
        "grid and positions": ([str(model_path), str(slide), "--grid-um", "50", "--positions", str(slide)],
                               "give one"),
    }[case]
    args, message = expected
    assert main(["predict", *args, "--out", out, "--quiet"]) == 2
    assert message in _one_error_line(capsys)
    assert not Path(out).exists()


def test_cli_missing_genes_named_for_a_model_that_reads_counts(subspot_path: Path, model_path: Path, demo,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from napari_histosge.models import load_model

    genes = load_model(subspot_path).genes
    kept = [g for g in demo.var_names if g not in set(genes[:7])]
    fewer = ad.AnnData(X=demo[:, kept].X.copy(), obs=demo.obs[[]].copy(), var=demo.var.loc[kept, []].copy())
    fewer.obsm["spatial"] = np.asarray(demo.obsm["spatial"], np.float64)
    diameter = demo.uns["histosge"]["spot_diameter_px"]
    fewer.uns["spatial"] = {"demo": {"scalefactors": {"spot_diameter_fullres": diameter}}}
    path = tmp_path / "fewer.h5ad"
    fewer.write_h5ad(path)
    image = demo.uns["histosge"]["images"]["fullres"]["path"]
    out = str(tmp_path / "out.h5ad")
    assert main(["predict", str(subspot_path), str(path), "--image", image, "--out", out, "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "7 are not in the data" in line and genes[0] in line and "..." in line
    # An image model does not read the data's counts: its genes need not be there.
    assert main(["predict", str(model_path), str(path), "--image", image, "--out", out, "--quiet"]) == 0


# ----------------------------------------------------------------------------- real slides
@pytest.mark.realdata
def test_real_her2st_slide_alone_and_a_real_svs(her2st_b4: Path, real_data: Path) -> None:
    """B4's H&E alone at B4's spots predicts exactly as the section; an SVS gets the ST lattice in µm."""
    b4 = read_spots(her2st_b4)
    model = run_to_end(fit(b4, train_config=train_config("histosge", **FAST)))
    jpeg = b4.uns["histosge"]["images"]["fullres"]["path"]
    with pytest.warns(UserWarning, match="assuming the training slides'"):  # a JPEG records no pixel size
        alone = run_to_end(predict_slide(model, jpeg, positions=b4.obsm["spatial"], position_ids=list(b4.obs_names)))
    np.testing.assert_allclose(alone.X, run_to_end(predict_spots(model, b4)).X, rtol=1e-4, atol=1e-4)
    svs = run_to_end(predict_slide(model, real_data / "wsi" / "cmu_small_region.svs"))
    info = svs.uns["histosge"]
    assert info["mpp_source"] == MPP_METADATA and svs.n_obs > 1
    # ST v1 spots are 200 µm apart and 100 µm wide, whatever the slide's pixel size
    assert _nearest_spacing(svs.obsm["spatial_um"]) == pytest.approx(200.0, rel=0.03)
    assert info["spot_diameter_px"] * info["mpp"] == pytest.approx(
        b4.uns["histosge"]["spot_diameter_px"] * b4.uns["histosge"]["mpp"])
