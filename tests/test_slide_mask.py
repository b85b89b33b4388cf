"""Tissue masks: detection on the H&E, user masks (images, GeoJSON), and their use on spots and grids."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_histosge.errors import InputError
from napari_histosge.io import read_spots
from napari_histosge.slide.mask import (
    TissueMask,
    cells_inside,
    check_covers_spots,
    detect_tissue,
    read_mask,
    tissue_from_rgb,
)
from napari_histosge.slide.open import open_slide

GLASS = (236, 232, 238)


def _slide_rgb(size: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Glass with a smooth pink haze on the right and a textured purple disc of tissue on the left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.empty((size, size, 3), np.float64)
    rgb[:] = GLASS
    haze = np.exp(-((xx - 0.8 * size) ** 2 + (yy - 0.5 * size) ** 2) / (2 * (0.08 * size) ** 2))
    rgb += haze[..., None] * (np.array([233, 190, 221]) - GLASS)  # eosin on the glass: smooth, pale
    tissue = (xx - 0.35 * size) ** 2 + (yy - 0.5 * size) ** 2 < (0.25 * size) ** 2
    stain = np.array([150, 110, 170]) + rng.normal(0, 25, (size, size, 1))
    rgb = np.where(tissue[..., None], stain, rgb) + rng.normal(0, 2, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), tissue


def _save(rgb: np.ndarray, path) -> str:
    Image.fromarray(rgb).save(path)
    return str(path)


def test_detects_textured_tissue_and_not_the_haze_on_the_glass():
    rgb, truth = _slide_rgb()
    mask = tissue_from_rgb(rgb)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95
    assert not mask[:, int(0.7 * 400):].any()  # the haze is glass


def test_fills_a_small_hole_and_drops_a_grey_bubble():
    rgb, truth = _slide_rgb()
    rgb[195:205, 135:145] = GLASS  # a fat vacuole inside the tissue
    yy, xx = np.mgrid[0:400, 0:400]
    ring = np.abs(np.hypot(xx - 330, yy - 80) - 40) < 3  # a bubble's dark grey outline on the glass
    rgb[ring] = (90, 90, 90)
    mask = tissue_from_rgb(rgb)
    assert mask[195:205, 135:145].all()
    assert not mask[40:120, 290:370].any()


def test_all_tissue_image_is_all_tissue_and_blank_glass_is_none():
    rgb, truth = _slide_rgb()
    crop = rgb[150:250, 80:200]  # inside the disc
    assert truth[150:250, 80:200].all()
    assert tissue_from_rgb(crop).mean() > 0.99
    glass = np.clip(np.full((200, 300, 3), GLASS) + np.random.default_rng(1).normal(0, 2, (200, 300, 3)), 0, 255)
    assert not tissue_from_rgb(glass.astype(np.uint8)).any()


def test_detect_tissue_scales_to_full_resolution(tmp_path):
    rgb, truth = _slide_rgb()
    path = _save(rgb, tmp_path / "slide.png")
    mask = detect_tissue(path, scale=0.5, max_side=100)  # the image is half the full resolution
    assert mask.mask.shape == (100, 100) and mask.px_per_mask_px == pytest.approx(8.0)
    centre_fullres = np.array([[0.35 * 400 * 2, 0.5 * 400 * 2]])
    assert mask.contains(centre_fullres).all()
    assert mask.source == path
    # an open slide works too, and stays open
    slide = open_slide(path)
    assert detect_tissue(slide).mask.shape == (400, 400)
    assert slide.read_region(0, 0, 2, 2).shape == (2, 2, 3)
    slide.close()


def test_detect_tissue_rejects_glass_and_bad_arguments(tmp_path):
    glass = _save(np.full((64, 64, 3), GLASS, np.uint8), tmp_path / "glass.png")
    with pytest.raises(InputError, match="no tissue found") as info:
        detect_tissue(glass)
    assert "glass.png" in str(info.value)
    with pytest.raises(InputError, match="scale must be positive"):
        detect_tissue(glass, scale=0)
    with pytest.raises(InputError, match="at least 16"):
        detect_tissue(glass, max_side=4)
    with pytest.raises(InputError, match="not found"):
        detect_tissue(tmp_path / "missing.png")


def test_contains_uses_x_as_column_and_y_as_row():
    raster = np.zeros((10, 20), bool)
    raster[2, 15] = True  # row 2, column 15
    mask = TissueMask(raster, 4.0, "test")
    xy = np.array([[15 * 4 + 1, 2 * 4 + 1], [2 * 4 + 1, 15 * 4 + 1], [-1, 9], [80, 9], [np.nan, 9]])
    np.testing.assert_array_equal(mask.contains(xy), [True, False, False, False, False])
    assert mask.fraction_inside(xy) == pytest.approx(0.2)
    assert mask.fraction_inside(np.zeros((0, 2))) == 0.0
    assert mask.tissue_fraction == pytest.approx(1 / 200)


def test_mask_checks_its_own_values():
    with pytest.raises(InputError, match="non-empty 2-D"):
        TissueMask(np.zeros((0, 3), bool), 1.0, "m")
    with pytest.raises(InputError, match="must be positive"):
        TissueMask(np.ones((3, 3), bool), 0.0, "m")


def test_cells_inside_takes_cells_half_on_tissue():
    raster = np.zeros((8, 8), bool)
    raster[:, :4] = True  # left half: tissue up to x = 4 mask px = 40 full-res px
    mask = TissueMask(raster, 10.0, "m")
    centres = np.array([[40.0, 40.0], [41.0, 40.0], [39.0, 40.0], [5.0, 5.0], [75.0, 5.0], [-3.0, 5.0]])
    # exactly half, just under half, over half, tissue, glass, half off the slide (its tissue part 2/20 wide)
    np.testing.assert_array_equal(cells_inside(mask, centres, 20.0), [True, False, True, True, False, False])


def test_cells_inside_matches_supersampled_area():
    rng = np.random.default_rng(3)
    mask = TissueMask(rng.random((30, 40)) > 0.5, 7.0, "m")
    centres = rng.uniform(-20, 300, (400, 2))
    cell = 23.0
    offsets = (np.arange(64) + 0.5) / 64 * cell - cell / 2
    ox, oy = np.meshgrid(offsets, offsets)
    samples = centres[:, None, :] + np.stack([ox.ravel(), oy.ravel()], -1)[None]
    share = mask.contains(samples.reshape(-1, 2)).reshape(len(centres), -1).mean(1)
    clear = np.abs(share - 0.5) > 0.03  # the supersampling's own error sits near one half
    np.testing.assert_array_equal(cells_inside(mask, centres, cell)[clear], share[clear] >= 0.5)
    # a million cells in one vectorised call
    grid = np.stack(np.meshgrid(np.arange(1000) * 0.28, np.arange(1000) * 0.21), -1).reshape(-1, 2)
    assert cells_inside(mask, grid, 0.5).shape == (1_000_000,)


def test_cells_inside_rejects_bad_input():
    mask = TissueMask(np.ones((4, 4), bool), 1.0, "m")
    with pytest.raises(InputError, match="cell size must be positive"):
        cells_inside(mask, np.zeros((1, 2)), 0.0)
    with pytest.raises(InputError, match="finite"):
        cells_inside(mask, np.array([[np.nan, 1.0]]), 2.0)


def test_check_covers_spots_names_the_numbers():
    raster = np.zeros((10, 10), bool)
    raster[:, :3] = True
    mask = TissueMask(raster, 1.0, "user_mask.png")
    assert check_covers_spots(mask, np.array([[1.0, 1.0], [2.0, 5.0], [8.0, 5.0]])) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match=r"user_mask.png: only 1 of 3 spots \(33%\)"):
        check_covers_spots(mask, np.array([[1.0, 1.0], [8.0, 2.0], [8.0, 5.0]]))
    with pytest.raises(InputError, match="no spots"):
        check_covers_spots(mask, np.zeros((0, 2)))


def test_read_mask_image_at_any_resolution(tmp_path):
    labels = np.zeros((50, 80), np.uint16)
    labels[10:20, 40:60] = 7  # any nonzero label is tissue
    path = tmp_path / "labels.tif"
    import tifffile

    tifffile.imwrite(path, labels)
    mask = read_mask(path, (800, 500))  # the slide is 10 times larger
    assert mask.px_per_mask_px == pytest.approx(10.0)
    assert mask.contains(np.array([[450.0, 150.0], [150.0, 150.0]])).tolist() == [True, False]
    png = tmp_path / "binary.png"
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(png)
    np.testing.assert_array_equal(read_mask(png, (801, 499)).mask, labels > 0)  # a pixel of rounding is fine


def test_read_mask_image_rejects_bad_masks(tmp_path):
    png = tmp_path / "mask.png"
    Image.fromarray(np.full((50, 80), 255, np.uint8)).save(png)
    with pytest.raises(InputError, match=r"aspect ratio \(80 x 50 px\).*500 x 500"):
        read_mask(png, (500, 500))
    Image.fromarray(np.zeros((50, 80), np.uint8)).save(png)
    with pytest.raises(InputError, match="holds no tissue"):
        read_mask(png, (800, 500))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read the mask image") as info:
        read_mask(broken, (800, 500))
    assert "broken.png" in str(info.value)
    with pytest.raises(InputError, match="mask file not found"):
        read_mask(tmp_path / "none.png", (800, 500))
    with pytest.raises(InputError, match="slide size must be positive"):
        read_mask(png, (0, 500))


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_read_mask_geojson_polygons_with_holes(tmp_path):
    collection = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"objectType": "annotation"},
         "geometry": {"type": "Polygon", "coordinates": [_square(100, 100, 900, 900), _square(400, 400, 600, 600)]}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [_square(1000, 100, 1200, 300)], [_square(1000, 700, 1100, 800)]]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]}
    path = tmp_path / "tissue.geojson"
    path.write_text(json.dumps(collection))
    mask = read_mask(path, (4000, 2000), max_side=1000)
    assert mask.px_per_mask_px == pytest.approx(4.0) and mask.mask.shape == (500, 1000)
    inside = mask.contains(np.array([[200, 200], [500, 500], [1100, 200], [1050, 750], [1100, 500], [50, 50]]))
    assert inside.tolist() == [True, False, True, True, False, False]  # the hole and the glass are out
    assert mask.tissue_fraction * 4000 * 2000 == pytest.approx(800**2 - 200**2 + 200**2 + 100**2, rel=0.03)
    # QuPath's "export as a list of features" and a bare geometry read the same
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(collection["features"]))
    np.testing.assert_array_equal(read_mask(listed, (4000, 2000), max_side=1000).mask, mask.mask)


def test_read_mask_geojson_rejects_bad_files(tmp_path):
    path = tmp_path / "m.geojson"
    line = {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}
    path.write_text(json.dumps({"type": "Feature", "geometry": line}))
    with pytest.raises(InputError, match="no Polygon or MultiPolygon"):
        read_mask(path, (100, 100))
    path.write_text("{ not json")
    with pytest.raises(InputError, match="cannot read the GeoJSON"):
        read_mask(path, (100, 100))
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}))
    with pytest.raises(InputError, match="at least 3 finite points"):
        read_mask(path, (100, 100))
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [_square(500, 500, 600, 600)]}))
    with pytest.raises(InputError, match="holds no tissue"):  # drawn off the slide
        read_mask(path, (100, 100))


def test_mask_round_trips_through_uns_and_h5ad(tmp_path):
    rng = np.random.default_rng(0)
    mask = TissueMask(rng.random((20, 30)) > 0.5, 12.5, "/data/slide.svs")
    adata = ad.AnnData(X=np.zeros((2, 1), np.float32), obs=pd.DataFrame(index=["a", "b"]))
    adata.uns["tissue_mask"] = mask.to_uns()
    adata.write_h5ad(tmp_path / "m.h5ad")
    back = TissueMask.from_uns(ad.read_h5ad(tmp_path / "m.h5ad").uns["tissue_mask"])
    np.testing.assert_array_equal(back.mask, mask.mask)
    assert (back.px_per_mask_px, back.source) == (12.5, "/data/slide.svs")
    with pytest.raises(InputError, match="incomplete or damaged"):
        TissueMask.from_uns({"mask": mask.mask})


@pytest.mark.slow
def test_demo_slide_mask_is_its_tissue_ellipse(demo_dir):
    folder = demo_dir
    adata = read_spots(folder)
    info = adata.uns["histosge"]
    mask = detect_tissue(info["images"][info["image"]]["path"])
    assert check_covers_spots(mask, adata.obsm["spatial"]) == 1.0
    size = open_slide(info["images"][info["image"]]["path"]).shape[0]
    rows, cols = np.mgrid[0:mask.mask.shape[0], 0:mask.mask.shape[1]]
    yy, xx = ((rows + 0.5) * mask.px_per_mask_px / size, (cols + 0.5) * mask.px_per_mask_px / size)
    ellipse = ((xx - 0.5) ** 2 / 0.23 + (yy - 0.5) ** 2 / 0.2) < 1.0  # as demo.make_demo_dataset draws it
    assert (mask.mask & ellipse).sum() / (mask.mask | ellipse).sum() > 0.97


# --------------------------------------------------------------------------- real slides


def _section_mask(folder):
    adata = read_spots(folder)
    info = adata.uns["histosge"]
    image = info["images"][info["image"]]
    return adata, detect_tissue(image["path"], scale=image["scale"])


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("section", ["B4", "C2", "C3", "C4"])
def test_her2st_spots_on_tissue_and_most_of_the_image_glass(real_data, section):
    adata, mask = _section_mask(real_data / "her2st" / section)
    assert mask.fraction_inside(adata.obsm["spatial"]) >= 0.98
    assert mask.tissue_fraction < 0.35  # bare glass around the section


@pytest.mark.realdata
@pytest.mark.parametrize("section", ["151675", "151676"])
def test_dlpfc_in_tissue_spots_inside_and_the_others_outside(real_data, section):
    folder = real_data / "dlpfc" / section
    adata, mask = _section_mask(folder)
    assert mask.fraction_inside(adata.obsm["spatial"]) >= 0.98
    positions = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None)
    off = positions[positions[1] == 0][[5, 4]].to_numpy(float)  # (x, y) = (col, row) in full-res px
    assert len(off) > 1000 and mask.fraction_inside(off) < 0.1


@pytest.mark.slow
@pytest.mark.realdata
def test_mob1_spots_on_tissue(real_data):
    adata, mask = _section_mask(real_data / "stutility_mob" / "MOB1")
    assert mask.fraction_inside(adata.obsm["spatial"]) >= 0.97
    assert mask.tissue_fraction < 0.2


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["cmu_small_region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_svs_slides_have_tissue_and_glass(real_data, name):
    mask = detect_tissue(real_data / "wsi" / name)
    assert max(mask.mask.shape) <= 2048
    assert 0.25 < mask.tissue_fraction < 0.8
