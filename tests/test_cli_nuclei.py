"""``histosge nuclei``: detection and users' segmentations written as labels.zarr + cells.h5ad; bad input exits 2."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import tifffile

from napari_histosge.cli.main import main
from test_cells import disc_labels, grid_centres, he_image


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A small H&E-like TIFF that records 0.5 µm per pixel, with known nuclei."""
    shape = (200, 240)
    centres = grid_centres(shape, 40, 24, 40)
    path = tmp_path_factory.mktemp("slide") / "he.tif"
    tifffile.imwrite(path, he_image(centres, shape, 7.0, glass_cols=40), photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path, centres


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("histosge: error: "), err
    return err[0]


def test_nuclei_writes_labels_and_a_cell_table(slide, tmp_path, capsys):
    path, centres = slide
    assert main(["nuclei", str(path), "--out", str(tmp_path / "out"), "--quiet", "--expand-um", "1"]) == 0
    cells = ad.read_h5ad(tmp_path / "out" / "cells.h5ad")
    assert cells.n_obs == len(centres)
    assert cells.uns["histosge"]["cells"]["detector"]["expand_um"] == 1.0
    assert f"{len(centres)} nuclei" in capsys.readouterr().out
    # the labels read back as a segmentation of the same slide
    assert main(["nuclei", str(path), "--out", str(tmp_path / "again"), "--quiet",
                 "--segmentation", str(tmp_path / "out" / "labels.zarr")]) == 0
    assert ad.read_h5ad(tmp_path / "again" / "cells.h5ad").n_obs == len(centres)


def test_a_label_image_at_a_stated_scale_is_written_as_cells(slide, tmp_path):
    labels = tmp_path / "half.tif"
    tifffile.imwrite(labels, disc_labels()[::2, ::2])
    assert main(["nuclei", str(slide[0]), "--out", str(tmp_path / "o"), "--segmentation", str(labels),
                 "--label-scale", "2"]) == 0
    cells = ad.read_h5ad(tmp_path / "o" / "cells.h5ad")
    assert cells.n_obs == 3 and np.allclose(cells.obs["area_um2"], cells.obs["area_px"] * 0.25)


def _geojson(path, x0):
    ring = [[x0, 10], [x0 + 10, 10], [x0 + 10, 20], [x0, 20], [x0, 10]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}]}))
    return path


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda d: tifffile.imwrite(d / "s.tif", disc_labels((100, 120))) or d / "s.tif", [], "state its scale"),
    (lambda d: tifffile.imwrite(d / "z.tif", np.zeros((200, 240), np.int32)) or d / "z.tif", [], "empty"),
    (lambda d: _geojson(d / "far.geojson", 9000), [], "another coordinate system"),
    (lambda d: d / "missing.tif", [], "not found"),
    (lambda d: tifffile.imwrite(d / "s.tif", disc_labels((100, 120))) or d / "s.tif", ["--label-scale", "3"],
     "another image or another pixel size"),
])
def test_bad_segmentations_exit_2_with_one_line_and_write_nothing(slide, tmp_path, capsys, make, extra, message):
    seg = make(tmp_path)
    code = main(["nuclei", str(slide[0]), "--out", str(tmp_path / "out"), "--segmentation", str(seg), *extra])
    assert code == 2 and message in one_error_line(capsys)
    assert not (tmp_path / "out" / "cells.h5ad").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--nucleus-um", "0"], "nucleus_um must be a positive"),
    (["--mpp", "-1"], "--mpp must be a positive"),
    (["--label-scale", "2"], "--label-scale applies to a --segmentation"),
    (["--nuclei-geometry"], "--nuclei-geometry applies to a --segmentation"),
    (["--tile-um", "5"], "tile_um"),
    (["--tile-um", "1e9"], "at most 4096"),
])
def test_bad_options_exit_2_before_any_work(slide, tmp_path, capsys, monkeypatch, args, message):
    import napari_histosge.cells

    monkeypatch.setattr(napari_histosge.cells, "slide_source", lambda *a, **k: pytest.fail("work started"))
    code = main(["nuclei", str(slide[0]), "--out", str(tmp_path / "out"), *args])
    assert code == 2 and message in one_error_line(capsys)


def test_a_slide_without_a_pixel_size_needs_mpp(tmp_path, capsys):
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, he_image(np.array([[50.0, 50.0]]), (100, 100), 7.0, glass_cols=0), photometric="rgb")
    assert main(["nuclei", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "--mpp" in one_error_line(capsys)
    assert main(["nuclei", str(path), "--out", str(tmp_path / "o"), "--mpp", "0.5", "--no-tissue-mask",
                 "--quiet"]) == 0


def test_a_large_slide_is_detected_into_a_store_on_disk_and_leaves_no_work_files(slide, tmp_path, monkeypatch):
    monkeypatch.setattr("napari_histosge.cells.detect.MAX_IN_MEMORY_PIXELS", 1000)
    assert main(["nuclei", str(slide[0]), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.h5ad", "labels.zarr"]
    assert ad.read_h5ad(tmp_path / "out" / "cells.h5ad").n_obs == len(slide[1])


def test_a_low_resolution_image_exits_2_and_writes_nothing(slide, tmp_path, capsys):
    # a Visium lowres image (about 13 µm per pixel) draws a nucleus over half a pixel
    assert main(["nuclei", str(slide[0]), "--out", str(tmp_path / "out"), "--mpp", "13", "--quiet"]) == 2
    assert "too coarse" in one_error_line(capsys)
    assert not (tmp_path / "out" / "cells.h5ad").exists()


@pytest.mark.parametrize("flag", [["--expand-um", "2"], ["--no-tissue-mask"], ["--threshold", "0.1"]])
def test_detector_flags_with_a_segmentation_exit_2(slide, tmp_path, capsys, flag):
    labels = tmp_path / "l.tif"
    tifffile.imwrite(labels, disc_labels())
    code = main(["nuclei", str(slide[0]), "--out", str(tmp_path / "out"), "--segmentation", str(labels), *flag])
    assert code == 2 and f"{flag[0]} applies to the detector" in one_error_line(capsys)
