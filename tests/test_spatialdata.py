"""SpatialData stores: spots in (through the elements' transformations), predictions out, bad stores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_histosge.errors import InputError
from napari_histosge.io import FORMATS, detect_format, read_spots, spatialdata_write
from napari_histosge.io.spatialdata_io import (
    INSTALL_HINT,
    looks_like_spatialdata,
    prediction_info,
    read_spatialdata,
    read_spatialdata_prediction,
)
from napari_histosge.io.spatialdata_write import write_prediction, write_spatialdata
from napari_histosge.slide.open import file_fingerprint, open_slide

#: The synthetic section: an image stored at half the spots' pixel size, spots 2x finer than the image.
SPOT_TO_GLOBAL = 0.5
IMAGE_TO_GLOBAL = 2.0


@pytest.fixture()
def sd():
    return pytest.importorskip("spatialdata")


def _section(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A her2st-like 7 x 6 square lattice in image pixels, with its H&E-like image (c, y, x)."""
    yy, xx = np.mgrid[100:700:100, 100:800:100]
    xy = np.c_[xx.ravel(), yy.ravel()].astype(float)
    image = np.full((3, 800, 900), 235, np.uint8)
    for x, y in xy.astype(int):  # a darker disc under every spot, so patches differ from the background
        image[:, y - 20 : y + 20, x - 20 : x + 20] = rng.integers(60, 160, 3, dtype=np.uint8)[:, None, None]
    return xy, image, [f"{int(x)}x{int(y)}" for x, y in xy]


def make_store(path: Path, *, table: bool = True, image: bool = True, bad_ids: int = 0) -> dict:
    """A store whose shapes live in a frame 2x finer than the image (via both transformations)."""
    import anndata as ad
    import geopandas as gpd
    import shapely
    import spatialdata
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    rng = np.random.default_rng(0)
    xy, pixels, ids = _section(rng)
    # spot frame -> global (x SPOT_TO_GLOBAL) -> image px (/ IMAGE_TO_GLOBAL): xy_spots = xy_image * 4
    factor = IMAGE_TO_GLOBAL / SPOT_TO_GLOBAL
    circles = gpd.GeoDataFrame({"radius": np.full(len(xy), 30.0 * factor)},
                               geometry=shapely.points(xy[:, 0] * factor, xy[:, 1] * factor), index=pd.Index(ids))
    elements: dict = {"shapes": {"spots": ShapesModel.parse(circles, transformations={
        "global": Scale([SPOT_TO_GLOBAL] * 2, axes=("x", "y"))})}}
    if image:
        to_global = {"global": Scale([IMAGE_TO_GLOBAL] * 2, axes=("y", "x"))}
        elements["images"] = {"he": Image2DModel.parse(pixels, dims=("c", "y", "x"), scale_factors=[2],
                                                       transformations=to_global)}
    counts = rng.poisson(3, (len(xy), 25)).astype(np.float32)
    if table:
        obs = pd.DataFrame({"region": pd.Categorical(["spots"] * len(xy)), "spot": ids},
                           index=[f"row{i}" for i in range(len(xy))])
        obs.loc[obs.index[:bad_ids], "spot"] = [f"missing{i}" for i in range(bad_ids)]
        adata = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(25)]))
        elements["tables"] = {"table": TableModel.parse(adata, region="spots", region_key="region",
                                                        instance_key="spot")}
    spatialdata.SpatialData(**elements).write(path)
    return {"xy": xy, "ids": ids, "counts": counts}


def test_read_spots_through_transformations(sd, tmp_path):
    truth = make_store(tmp_path / "section.zarr")
    assert looks_like_spatialdata(tmp_path / "section.zarr")
    spots = read_spatialdata(tmp_path / "section.zarr")
    assert list(spots.obs_names) == truth["ids"]
    np.testing.assert_allclose(spots.obsm["spatial"], truth["xy"], atol=1e-9)  # image px, not the spots' frame
    assert spots.uns["histosge"]["spot_diameter_px"] == pytest.approx(60.0)
    np.testing.assert_array_equal(spots.X.toarray(), truth["counts"])
    image = spots.uns["histosge"]["images"]["fullres"]
    assert image["scale"] == 1.0 and image["path"].endswith("images/he")
    assert "region" not in spots.obs and "spot" not in spots.obs


@pytest.mark.skipif("spatialdata" not in FORMATS, reason="read_spots does not dispatch SpatialData stores yet "
                    "(io/detect.py FORMATS and io/__init__.py read_spots)")
def test_read_spots_opens_a_store(sd, tmp_path):
    truth = make_store(tmp_path / "section.zarr")
    assert detect_format(tmp_path / "section.zarr") == "spatialdata"
    spots = read_spots(tmp_path / "section.zarr")
    np.testing.assert_allclose(spots.obsm["spatial"], truth["xy"], atol=1e-9)


def test_store_image_opens_as_a_slide(sd, tmp_path):
    make_store(tmp_path / "section.zarr")
    folder = tmp_path / "section.zarr" / "images" / "he"
    with open_slide(folder) as slide:
        assert slide.shape == (800, 900) and len(slide.levels) == 2
        patches = slide.read_patches(np.array([[100.0, 100.0], [450.0, 450.0]]), 40, 16)
    assert patches.shape == (2, 16, 16, 3)
    assert patches[0].mean() < 200  # the dark disc under the first spot
    assert file_fingerprint(folder) == file_fingerprint(folder)


def _predictions(spots, *, mpp: float | None = 0.5):
    pred = spots.copy()
    pred.X = np.log1p(spots.X.toarray())
    pred.layers["std"] = np.full(pred.shape, 0.1, np.float32)
    pred.uns["histosge"]["fold"] = 1
    pred.uns["histosge"]["mpp"] = mpp
    return pred


@pytest.mark.slow
def test_round_trip_predictions(sd, tmp_path):
    from spatialdata.transformations import get_transformation

    make_store(tmp_path / "section.zarr")
    spots = read_spatialdata(tmp_path / "section.zarr")
    pred = _predictions(spots)
    out = write_prediction(pred, tmp_path / "pred.zarr")
    back = sd.read_zarr(out)
    circles = back.shapes["spots"]
    assert (circles.geometry.geom_type == "Point").all()
    np.testing.assert_allclose(circles["radius"], 30.0)
    table = back.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "spots"
    assert list(table.obs["instance_id"]) == list(circles.index) == list(spots.obs_names)
    np.testing.assert_allclose(table.X, pred.X, rtol=1e-6)
    # one coordinate system in µm: shapes scaled by mpp, the embedded slide by mpp / its scale
    um = get_transformation(circles, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(np.diag(um)[:2], [0.5, 0.5])
    assert "slide" in back.images
    assert back.tables["table"].uns["histosge"]["coordinate_system"]["units"] == "um"
    assert prediction_info(out) is not None and prediction_info(tmp_path / "section.zarr") is None
    again = read_spatialdata_prediction(out)
    np.testing.assert_allclose(again.obsm["spatial"], spots.obsm["spatial"], atol=1e-6)
    assert again.uns["histosge"]["images"]["fullres"]["path"].endswith("pred.zarr/images/slide")


@pytest.mark.slow
def test_large_slide_is_referenced_and_pixels_without_mpp(sd, tmp_path, monkeypatch):
    from spatialdata.transformations import Identity, get_transformation

    make_store(tmp_path / "section.zarr")
    spots = read_spatialdata(tmp_path / "section.zarr")
    monkeypatch.setattr(spatialdata_write, "EMBED_MAX_PIXELS", 100)
    out = write_spatialdata(tmp_path / "pred.zarr", _predictions(spots, mpp=None))
    back = sd.read_zarr(out)
    assert not back.images
    assert isinstance(get_transformation(back.shapes["spots"], "global"), Identity)
    again = read_spatialdata_prediction(out)  # the referenced slide, in the shapes' own frame
    assert again.uns["histosge"]["images"] == spots.uns["histosge"]["images"]
    np.testing.assert_allclose(again.obsm["spatial"], spots.obsm["spatial"], atol=1e-6)


@pytest.mark.slow
def test_grid_predictions_are_squares(sd, tmp_path):
    make_store(tmp_path / "section.zarr")
    pred = _predictions(read_spatialdata(tmp_path / "section.zarr"))
    pred.uns["histosge"]["grid"] = {"cell_px": 50.0, "origin_xy": [100.0, 100.0], "shape": [6, 7], "cell_um": 25.0}
    back = sd.read_zarr(write_spatialdata(tmp_path / "grid.zarr", pred))
    cells = back.shapes["cells"]
    assert (cells.geometry.geom_type == "Polygon").all()
    np.testing.assert_allclose(cells.geometry.area, 2500.0)
    np.testing.assert_allclose(np.c_[cells.geometry.centroid.x, cells.geometry.centroid.y], pred.obsm["spatial"])


@pytest.mark.slow
def test_square_footprints_are_turned_squares(sd, tmp_path):
    make_store(tmp_path / "section.zarr")
    pred = _predictions(read_spatialdata(tmp_path / "section.zarr"))
    pred.uns["histosge"]["footprint"] = {"shape": "square", "size_px": 40.0, "angle": np.pi / 4}
    bins = sd.read_zarr(write_spatialdata(tmp_path / "bins.zarr", pred)).shapes["bins"]
    np.testing.assert_allclose(bins.geometry.area, 1600.0)
    width = bins.geometry.bounds["maxx"] - bins.geometry.bounds["minx"]
    np.testing.assert_allclose(width, 40.0 * np.sqrt(2))  # a square turned by 45 degrees


def test_cells_are_discs_of_their_area_even_with_a_footprint_in_uns():
    import anndata as ad

    pytest.importorskip("geopandas")
    area = np.array([30.0, 120.0, 75.0])
    cells = ad.AnnData(np.zeros((3, 2), np.float32), obs=pd.DataFrame({"area_px": area}, index=["1", "2", "3"]))
    cells.obsm["spatial"] = np.array([[10.0, 10.0], [50.0, 20.0], [30.0, 60.0]])
    info = {"positions": "cells", "footprint": {"shape": "square", "size_px": 16.0}}
    kind, shapes = spatialdata_write._shapes(cells, info)
    assert kind == "cells" and (shapes.geometry.geom_type == "Point").all()
    np.testing.assert_allclose(np.pi * shapes["radius"].to_numpy() ** 2, area)


@pytest.mark.slow
def test_write_replaces_an_earlier_store_atomically(sd, tmp_path):
    make_store(tmp_path / "section.zarr")
    spots = read_spatialdata(tmp_path / "section.zarr")
    out = tmp_path / "pred.zarr"
    write_spatialdata(out, _predictions(spots))
    write_spatialdata(out, _predictions(spots[:10].copy()))
    assert sd.read_zarr(out).tables["table"].n_obs == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pred.zarr")] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": False}, "has no table"),
        ({"image": False}, "has no image"),
        ({"bad_ids": 3}, "do not match the index of 'spots': 3 of 42 not found"),
    ],
)
def test_bad_stores_give_one_line(sd, tmp_path, kwargs, message):
    make_store(tmp_path / "bad.zarr", **kwargs)
    with pytest.raises(InputError, match=message) as info:
        read_spatialdata(tmp_path / "bad.zarr")
    assert "\n" not in str(info.value) and "bad.zarr" in str(info.value)


def test_missing_spatialdata_names_the_extra(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    (store / "tables").mkdir(parents=True)
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # import fails as when not installed
    with pytest.raises(InputError, match=r"pip install napari-histosge\[spatialdata\]"):
        read_spatialdata(store)
    assert INSTALL_HINT in "pip install napari-histosge[spatialdata]"


def test_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    assert not looks_like_spatialdata(tmp_path / "plain")
    assert not looks_like_spatialdata(tmp_path / "missing.zarr")


@pytest.mark.slow
def test_plugin_reader_opens_spots_and_predictions(sd, tmp_path):
    from napari_histosge.plugin.reader import get_spatialdata_reader, get_spots_reader

    make_store(tmp_path / "section.zarr")
    reader = get_spatialdata_reader(str(tmp_path / "section.zarr"))
    assert reader is not None and get_spatialdata_reader(str(tmp_path)) is None
    layers = reader(str(tmp_path / "section.zarr"))
    assert [kind for _, _, kind in layers] == ["image", "points"]
    np.testing.assert_allclose(layers[1][0], read_spatialdata(tmp_path / "section.zarr").obsm["spatial"][:, ::-1])
    pred = _predictions(read_spatialdata(tmp_path / "section.zarr"), mpp=None)
    write_spatialdata(tmp_path / "pred.zarr", pred)
    kinds = [kind for _, _, kind in reader(str(tmp_path / "pred.zarr"))]
    assert kinds[0] == "image" and len(kinds) > 1
    assert get_spots_reader(str(tmp_path / "plain.txt")) is None


@pytest.mark.slow
@pytest.mark.realdata
def test_her2st_section_as_a_store(sd, her2st_b4, tmp_path):
    """A store made with spatialdata from her2st B4: image at a quarter of its size, spots in full-res px."""
    import geopandas as gpd
    import shapely
    from PIL import Image
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from napari_histosge.io import read_spots, spot_image

    spots = read_spots(her2st_b4)
    path, scale = spot_image(spots)
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as img:
        small = np.asarray(img.convert("RGB").reduce(4)).transpose(2, 0, 1)
    xy = spots.obsm["spatial"]
    radius = spots.uns["histosge"]["spot_diameter_px"] / 2
    circles = gpd.GeoDataFrame({"radius": np.full(len(xy), radius)}, geometry=shapely.points(xy[:, 0], xy[:, 1]),
                               index=pd.Index(spots.obs_names))
    table = spots.copy()
    table.obs["region"] = pd.Categorical(["spots"] * table.n_obs)
    table.obs["spot_id"] = table.obs_names.to_numpy()
    table.obs_names = [f"r{i}" for i in range(table.n_obs)]
    store = sd.SpatialData(
        images={"he": Image2DModel.parse(small, dims=("c", "y", "x"), transformations={
            "global": Scale([4.0, 4.0], axes=("y", "x"))})},
        shapes={"spots": ShapesModel.parse(circles, transformations={"global": Identity()})},
        tables={"table": TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")},
    )
    store.write(tmp_path / "B4.zarr")
    back = read_spatialdata(tmp_path / "B4.zarr")
    assert back.n_obs == spots.n_obs and back.n_vars == spots.n_vars
    np.testing.assert_allclose(back.obsm["spatial"], xy / 4, atol=1e-6)
    assert back.uns["histosge"]["spot_diameter_px"] == pytest.approx(2 * radius / 4)
    assert (back.X != spots.X).nnz == 0
    with open_slide(back.uns["histosge"]["images"]["fullres"]["path"]) as slide:
        assert slide.shape == small.shape[1:]


@pytest.mark.slow
def test_napari_opens_a_store_through_the_manifest(sd, make_napari_viewer, tmp_path):
    make_store(tmp_path / "section.zarr")
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "section.zarr"), plugin="napari-histosge")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Points"]
    assert len(viewer.layers["section spots"].data) == 42


def histosge(*argv: str):
    """Run the command in its own process, as it runs for users: this one may hold a napari viewer (Qt, OpenGL)."""
    import subprocess

    code = "import sys; from napari_histosge.cli import main; raise SystemExit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)


@pytest.mark.slow
def test_the_cli_writes_predictions_as_a_store(sd, tmp_path, demo_dir, monkeypatch, capsys):
    from napari_histosge.cli.main import main

    data = demo_dir
    model = tmp_path / "m.pt"
    assert histosge("train", str(data), "--out", str(model), "--extractor", "none", "--epochs", "2", "--n-genes", "5",
                    "--val-fraction", "0", "--quiet").returncode == 0
    out = tmp_path / "pred.zarr"
    run = histosge("predict", str(model), str(data), "--out", str(out), "--quiet")
    assert run.returncode == 0
    assert "warning" not in run.stderr  # no library notices (zarr's future defaults) for the user to puzzle over
    back = sd.read_zarr(out)
    table = back.tables["table"]
    assert table.n_vars == 5 and len(back.shapes[table.uns["spatialdata_attrs"]["region"]]) == table.n_obs
    # Without the package a store is refused before any work, naming the extra.
    import napari_histosge.io.spatialdata_io as sdio

    def missing(path):
        raise InputError(f"SpatialData stores need the spatialdata package: {sdio.INSTALL_HINT}", path)

    monkeypatch.setattr(sdio, "require_spatialdata", missing)
    capsys.readouterr()
    assert main(["predict", str(model), str(data), "--out", str(tmp_path / "other.zarr")]) == 2
    assert "napari-histosge[spatialdata]" in capsys.readouterr().err


def test_the_test_environment_has_spatialdata():
    """CI installs the [spatialdata] extra: the store tests above must run there, not skip."""
    import importlib.util
    import os

    if os.environ.get("HISTOSGE_REQUIRE_EXTRAS") != "1":
        pytest.skip("set HISTOSGE_REQUIRE_EXTRAS=1 (CI does) to require the optional extras")
    import spatialdata  # noqa: F401  (fails with the real reason, e.g. a missing pkg_resources)

    assert importlib.util.find_spec("spatialdata") is not None


@pytest.mark.slow
def test_a_written_store_opens_in_napari_spatialdata_on_the_slide(sd, make_napari_viewer, qtbot, tmp_path, demo_dir):
    """What `histosge superresolve --out OUT.zarr` writes opens in napari-spatialdata: slide, spots, table, colours."""
    import time

    napari_spatialdata = pytest.importorskip("napari_spatialdata")
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication


    data = demo_dir
    model, store = tmp_path / "m.pt", tmp_path / "sr.zarr"
    assert histosge("train", str(data), "--out", str(model), "--epochs", "2", "--extractor", "none", "--n-genes", "5",
                    "--dim", "16", "--head-hidden", "32", "--quiet").returncode == 0
    assert histosge("superresolve", str(model), str(data), "--fold", "4", "--out", str(store),
                    "--quiet").returncode == 0
    sdata = sd.read_zarr(store)
    viewer = make_napari_viewer()
    app = QApplication.instance()

    def settle(seconds: float = 1.0) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.02)

    view = napari_spatialdata.Interactive(sdata, headless=True)
    for name in ("spots", "slide"):
        view.add_element(name, "global")  # loads in a worker: wait for its layer
        qtbot.waitUntil(lambda name=name: name in [layer.name for layer in viewer.layers], timeout=60_000)
        settle(0.5)
    spots, slide = viewer.layers["spots"], viewer.layers["slide"]
    assert spots.metadata["table_names"] == ["table"]
    # the spots sit on the slide: the same world coordinates as the positions written
    table = sdata.tables["table"]
    centres = np.asarray(spots.data)[:, ::-1]  # napari (y, x)
    written = np.asarray(sdata.shapes["spots"].geometry.centroid.get_coordinates())
    np.testing.assert_allclose(np.sort(centres, axis=0), np.sort(written, axis=0), atol=1e-6)
    lo, hi = np.asarray(slide.extent.world)
    assert np.all(centres.min(axis=0) >= lo[::-1] - 1) and np.all(centres.max(axis=0) <= hi[::-1] + 1)
    # its view colours the spots by a predicted gene of the table
    from napari_spatialdata._view import QtAdataViewWidget

    viewer.layers.selection.active = spots
    settle()
    [widget] = [w for w in app.allWidgets() if isinstance(w, QtAdataViewWidget)]
    gene = str(table.var_names[0])
    [item] = widget.var_widget.findItems(gene, Qt.MatchExactly)
    widget.var_widget.setCurrentItem(item)
    widget.var_widget.itemDoubleClicked.emit(item)
    settle()
    colours = np.unique(np.round(np.asarray(spots.face_color), 3), axis=0)
    assert len(colours) > 10  # one colour per predicted level, not the single default
