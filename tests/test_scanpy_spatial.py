"""Every .h5ad output opens in scanpy's and squidpy's spatial plots as it is, with the H&E under the points.

The outputs are written by the command line from small quick models of the generated demo
section: predictions at the measured spots, a 2-fold lattice, a sub-spot grid map and the
hidden spots of ``recover``.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pytest
from PIL import Image

from napari_histosge.cli.main import main
from napari_histosge.export.scanpy_spatial import (
    HIRES_MAX_PX,
    LOWRES_MAX_PX,
    read_downsampled,
    scanpy_spatial,
    spot_diameter_fullres,
)

matplotlib.use("Agg")

FAST = ["--epochs", "2", "--n-genes", "8", "--quiet"]
KINDS = ("spots", "lattice", "grid", "recover")


@pytest.fixture(scope="module")
def outputs(demo_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Predictions at spots, a 2-fold lattice and a grid map, as ``histosge`` writes them."""
    root = tmp_path_factory.mktemp("outputs")
    model, subspot = root / "m.pt", root / "s.pt"
    assert main(["train", str(demo_dir), "--out", str(model), *FAST]) == 0
    assert main(["train", str(demo_dir), "--model", "subspot", "--cell-um", "30", "--out", str(subspot),
                 "--n-genes", "8", "--quiet"]) == 0
    paths = {kind: root / f"{kind}.h5ad" for kind in KINDS}
    assert main(["predict", str(model), str(demo_dir), "--out", str(paths["spots"]), "--quiet"]) == 0
    assert main(["superresolve", str(model), str(demo_dir), "--fold", "2", "--out", str(paths["lattice"]),
                 "--quiet"]) == 0
    assert main(["superresolve", str(subspot), str(demo_dir), "--mask", "none", "--out", str(paths["grid"]),
                 "--quiet"]) == 0
    assert main(["recover", str(demo_dir), "--out", str(paths["recover"]), *FAST]) == 0
    return paths


def _slide(adata) -> np.ndarray:
    info = adata.uns["histosge"]
    return np.asarray(Image.open(info["images"][info["image"]]["path"]).convert("RGB"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_output_carries_the_slide_in_scanpys_convention(outputs, kind) -> None:
    adata = ad.read_h5ad(outputs[kind])
    info = adata.uns["histosge"]
    library = adata.uns["spatial"][info["library_id"]]
    hires, lowres = library["images"]["hires"], library["images"]["lowres"]
    factors = library["scalefactors"]
    assert hires.dtype == lowres.dtype == np.uint8 and hires.shape[2] == lowres.shape[2] == 3
    assert max(hires.shape[:2]) <= HIRES_MAX_PX and max(lowres.shape[:2]) <= LOWRES_MAX_PX
    slide = _slide(adata)  # the demo's full-resolution image
    assert factors["tissue_hires_scalef"] == pytest.approx(hires.shape[1] / slide.shape[1])
    assert factors["tissue_lowres_scalef"] == pytest.approx(lowres.shape[1] / slide.shape[1])
    expected = info["grid"]["cell_px"] if kind == "grid" else info["spot_diameter_px"]
    assert factors["spot_diameter_fullres"] == pytest.approx(expected)
    # the hires image is the slide itself, shrunk: the same picture pixel for pixel
    shrunk = np.asarray(Image.fromarray(slide).resize(hires.shape[1::-1], Image.Resampling.BOX), np.float64)
    assert np.abs(shrunk - hires).mean() < 4.0
    assert "spatial" in adata.obsm and info["fold" if kind != "grid" else "grid"]  # the histosge keys stay


def _drawn_points(ax) -> np.ndarray:
    """Centres of the points drawn: a scatter's offsets, or the centres of circle patches (scanpy)."""
    found = []
    for collection in ax.collections:
        offsets = np.asarray(collection.get_offsets())
        if len(offsets) > 1:
            found.append(offsets)
        elif len(collection.get_paths()) > 1:
            found.append(np.array([(p.vertices.min(axis=0) + p.vertices.max(axis=0)) / 2
                                   for p in collection.get_paths()]))
    return np.concatenate(found)


def _points_on_image(ax) -> np.ndarray:
    """The axes show one image and the points lie on it; returns the points."""
    assert len(ax.images) == 1
    x0, x1, y1, y0 = ax.images[0].get_extent()
    offsets = _drawn_points(ax)
    assert (offsets[:, 0] >= x0).all() and (offsets[:, 0] <= x1).all()
    assert (offsets[:, 1] >= y0).all() and (offsets[:, 1] <= y1).all()
    return offsets


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_scanpy_spatial_plot_needs_no_extra_arguments(outputs, kind, tmp_path) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    adata = ad.read_h5ad(outputs[kind])
    gene = str(adata.var_names[0])
    ax = sc.pl.spatial(adata, color=gene, show=False)
    ax = ax[0] if isinstance(ax, list) else ax
    drawn = _points_on_image(ax)
    library = next(iter(adata.uns["spatial"].values()))
    on_image = adata.obsm["spatial"] * library["scalefactors"]["tissue_hires_scalef"]
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(on_image, axis=0), rtol=1e-4)
    ax.figure.savefig(tmp_path / f"scanpy_{kind}.png", dpi=60)
    assert (tmp_path / f"scanpy_{kind}.png").stat().st_size > 0
    plt.close("all")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_squidpy_spatial_scatter_needs_no_extra_arguments(outputs, kind, tmp_path) -> None:
    sq = pytest.importorskip("squidpy", reason="squidpy is not installed (pip install squidpy)")
    import matplotlib.pyplot as plt

    adata = ad.read_h5ad(outputs[kind])
    sq.pl.spatial_scatter(adata, color=str(adata.var_names[0]), save=None)
    fig = plt.gcf()
    _points_on_image(fig.axes[0])
    fig.savefig(tmp_path / f"squidpy_{kind}.png", dpi=60)
    plt.close("all")


def test_predictions_read_back_with_their_spatial_entry(outputs) -> None:
    from napari_histosge.plugin.reader import read_prediction

    written = ad.read_h5ad(outputs["lattice"])
    back = read_prediction(outputs["lattice"])
    lib = back.uns["histosge"]["library_id"]
    np.testing.assert_array_equal(back.uns["spatial"][lib]["images"]["hires"],
                                  written.uns["spatial"][lib]["images"]["hires"])
    np.testing.assert_array_equal(back.obsm["spatial"], written.obsm["spatial"])


def test_read_spots_of_an_output_keeps_positions_and_scale(outputs, tmp_path) -> None:
    """An output given counts again (e.g. for another tool) reads as spots, positions and spot size intact."""
    from napari_histosge.io import read_spots

    pred = ad.read_h5ad(outputs["spots"])
    pred.layers["counts"] = np.rint(np.expm1(np.asarray(pred.X)))
    pred.write_h5ad(tmp_path / "as_counts.h5ad")
    spots = read_spots(tmp_path / "as_counts.h5ad")
    np.testing.assert_array_equal(spots.obsm["spatial"], pred.obsm["spatial"])
    lib = pred.uns["histosge"]["library_id"]
    assert spots.uns["histosge"]["spot_diameter_px"] == pred.uns["spatial"][lib]["scalefactors"][
        "spot_diameter_fullres"]
    assert spots.uns["histosge"]["images"] == pred.uns["histosge"]["images"]


def test_the_plugin_writer_adds_the_slide_to_predictions_made_before(outputs, tmp_path) -> None:
    from napari_histosge.plugin.writer import write_h5ad

    old = ad.read_h5ad(outputs["grid"])
    del old.uns["spatial"]  # as files written before outputs carried it
    [written] = write_h5ad(str(tmp_path / "saved.h5ad"), None, {"metadata": {"histosge": {"adata": old}}})
    library = ad.read_h5ad(written).uns["spatial"][old.uns["histosge"]["library_id"]]
    assert set(library["images"]) == {"hires", "lowres"}
    assert library["scalefactors"]["spot_diameter_fullres"] == old.uns["histosge"]["grid"]["cell_px"]


def test_measured_spots_keep_their_own_spatial_entry(demo) -> None:
    from napari_histosge.export.scanpy_spatial import ensure_scanpy_spatial

    before = {k: dict(v) for k, v in demo.uns["spatial"].items()}
    assert ensure_scanpy_spatial(demo).uns["spatial"] == before


def test_no_slide_on_disk_keeps_the_scale_factors(outputs, tmp_path) -> None:
    pred = ad.read_h5ad(outputs["spots"])
    pred.uns["histosge"]["images"] = {"fullres": {"path": str(tmp_path / "gone.png"), "scale": 1.0}}
    library = next(iter(scanpy_spatial(pred).values()))
    assert library["images"] == {} and set(library["scalefactors"]) == {"spot_diameter_fullres"}


@pytest.mark.slow
def test_downsampling_reads_a_coarse_level_and_never_enlarges(tmp_path) -> None:
    from napari_histosge.slide.open import open_slide

    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (2600, 3100, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    image, factor = read_downsampled(tmp_path / "big.png", 1.0, HIRES_MAX_PX)
    assert max(image.shape[:2]) == HIRES_MAX_PX and factor == pytest.approx(HIRES_MAX_PX / 3100)
    with open_slide(tmp_path / "big.png") as slide:
        slide_levels = len(slide.downsamples)
    assert slide_levels > 1  # the cached pyramid has a coarser level to read from
    small, factor = read_downsampled(tmp_path / "big.png", 0.5, 10_000)  # an image at half the full resolution
    assert small.shape == big.shape and factor == 0.5


def test_a_grid_cell_is_the_spot_of_a_grid_map() -> None:
    assert spot_diameter_fullres({"spot_diameter_px": 80.0, "grid": {"cell_px": 12.5}}) == 12.5
    assert spot_diameter_fullres({"spot_diameter_px": 80.0}) == 80.0
    assert spot_diameter_fullres({"spot_diameter_px": float("nan")}) is None
