"""Cells: the built-in nucleus detector on synthetic H&E with known nuclei, and users' segmentations.

The synthetic slides are pink (eosin) tissue with haematoxylin-blue discs at known centres
beside a strip of white glass, so a count and every centroid can be checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_histosge.cells import (
    NucleusSettings,
    detect_nuclei,
    read_cell_polygons,
    read_label_image,
    read_segmentation,
    segmentation_from_labels,
    slide_source,
    write_segmentation,
)
from napari_histosge.errors import CancelledError, InputError
from napari_histosge.progress import CancelToken, run_collecting, run_to_end
from napari_histosge.slide.open import open_slide

MPP = 0.5
TISSUE = np.array([235, 175, 205], np.float64)  # eosin pink
NUCLEUS = np.array([80, 60, 150], np.float64)  # haematoxylin blue-purple
GLASS = np.array([245, 245, 245], np.float64)


def he_image(centres_rc: np.ndarray, shape: tuple[int, int], radius_px: float, *, glass_cols: int = 60,
             seed: int = 0) -> np.ndarray:
    """An H&E-like RGB image: discs of ``radius_px`` at ``centres_rc`` on pink tissue, glass on the right."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    img = np.broadcast_to(TISSUE, shape + (3,)).copy()
    img[:, shape[1] - glass_cols:] = GLASS
    for r, c in centres_rc:
        d = np.hypot(rows - r, cols - c)
        weight = np.clip(radius_px + 0.5 - d, 0, 1)[..., None]  # antialiased edge
        img = img * (1 - weight) + NUCLEUS * weight
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def grid_centres(shape: tuple[int, int], spacing: float, margin: float, glass_cols: int, seed: int = 0) -> np.ndarray:
    """Jittered grid of nucleus centres ``(row, col)`` on the tissue part."""
    rng = np.random.default_rng(seed)
    rows = np.arange(margin, shape[0] - margin, spacing)
    cols = np.arange(margin, shape[1] - glass_cols - margin, spacing)
    rc = np.array([(r, c) for r in rows for c in cols], np.float64)
    return rc + rng.uniform(-spacing / 6, spacing / 6, rc.shape)


def write_tiff(path, img):
    tifffile.imwrite(path, img, photometric="rgb")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 600 x 660 px slide at 0.5 µm/px with 7 µm nuclei every 20 µm."""
    shape, radius = (600, 660), 7.0
    centres = grid_centres(shape, 40, 24, 60)
    path = write_tiff(tmp_path_factory.mktemp("he") / "he.tif", he_image(centres, shape, radius))
    return path, centres, shape


def detect(path, **settings):
    with open_slide(path) as slide:
        return run_to_end(detect_nuclei(slide, mpp=MPP, settings=NucleusSettings(**settings)))


def match(found_xy: np.ndarray, true_rc: np.ndarray) -> np.ndarray:
    """Distance from every true centre to the nearest detected centroid (px)."""
    true_xy = true_rc[:, ::-1]
    return np.min(np.linalg.norm(true_xy[:, None] - found_xy[None], axis=-1), axis=1)


def test_detector_counts_disc_nuclei_and_places_their_centroids(synthetic):
    path, centres, shape = synthetic
    seg = detect(path)
    table = seg.table
    assert seg.n_cells == len(centres)
    assert np.max(match(table.obsm["spatial"], centres)) < 1.0
    # a 7 µm disc is about 38 µm²
    assert np.allclose(table.obs["area_um2"], np.pi * 3.5**2, rtol=0.25)
    assert seg.labels.shape == shape and seg.px_per_label_px == 1.0
    assert table.uns["histosge"]["cells"]["source"] == str(path)
    assert sorted(table.obs["label"]) == sorted(np.unique(seg.labels[seg.labels > 0]))


def test_a_nucleus_on_a_tile_seam_is_found_once(tmp_path):
    # tiles of 40 µm = 80 px: put nuclei right on the seams and their crossings
    shape = (400, 460)
    seams = [(80.0, 80.0), (160.0, 100.0), (240.0, 240.0), (80.0, 300.0), (310.0, 160.0), (200.0, 160.0)]
    path = write_tiff(tmp_path / "seams.tif", he_image(np.array(seams), shape, 7.0))
    seg = detect(path, tile_um=40.0)
    assert seg.n_cells == len(seams)
    assert np.max(match(seg.table.obsm["spatial"], np.array(seams))) < 1.0
    # each nucleus is one connected label: no half written by each of two tiles
    assert len(np.unique(seg.labels)) == len(seams) + 1


def test_cells_grown_past_a_nucleus_are_found_once_across_tile_seams(tmp_path):
    # sparse nuclei grown by more than a nucleus: small tiles must agree with one large tile
    shape = (480, 480)
    centres = grid_centres(shape, 120, 60, 0)
    path = write_tiff(tmp_path / "sparse.tif", he_image(centres, shape, 7.0, glass_cols=0))

    def run(tile_um):
        with open_slide(path) as slide:
            return run_to_end(detect_nuclei(slide, mpp=MPP, tissue=False,
                                            settings=NucleusSettings(expand_um=20.0, tile_um=tile_um)))

    one, tiled = run(1000.0), run(40.0)
    assert one.n_cells == tiled.n_cells == len(centres)
    assert np.allclose(np.sort(tiled.table.obs["area_px"]), np.sort(one.table.obs["area_px"]))
    assert np.max(match(tiled.table.obsm["spatial"], one.table.obsm["spatial"][:, ::-1])) < 1e-6


def test_detection_reports_progress_and_can_be_cancelled(synthetic):
    path = synthetic[0]
    with open_slide(path) as slide:
        seg, events = run_collecting(detect_nuclei(slide, mpp=MPP, settings=NucleusSettings(tile_um=100)))
        assert events[-1].step == events[-1].total and events[-1].metrics["nuclei"] == seg.n_cells
        token = CancelToken()
        token.cancel()
        with pytest.raises(CancelledError):
            run_to_end(detect_nuclei(slide, mpp=MPP, cancel=token))


def test_expanding_grows_cells_without_merging_them(synthetic):
    path, centres, _ = synthetic
    nuclei, cells = detect(path), detect(path, expand_um=2.0)
    assert cells.n_cells == nuclei.n_cells
    assert cells.table.obs["area_um2"].mean() > 1.5 * nuclei.table.obs["area_um2"].mean()


def test_a_zarr_store_holds_the_labels_of_a_large_slide(synthetic, tmp_path):
    path, centres, _ = synthetic
    with open_slide(path) as slide:
        seg = run_to_end(detect_nuclei(slide, mpp=MPP, labels_store=tmp_path / "l.zarr"))
    assert not isinstance(seg.labels, np.ndarray) and seg.n_cells == len(centres)


def test_the_detector_works_at_its_own_pixel_size_on_a_finer_scan(tmp_path):
    # a 0.25 µm/px scan is binned 2 x 2 to the 0.5 µm working size; centroids stay in full-res px
    shape = (600, 600)
    centres = grid_centres(shape, 80, 40, 0)
    path = write_tiff(tmp_path / "fine.tif", he_image(centres, shape, 14.0, glass_cols=0))
    with open_slide(path) as slide:
        seg = run_to_end(detect_nuclei(slide, mpp=0.25, tissue=False))
    assert seg.px_per_label_px == 2.0 and seg.labels.shape == (300, 300)
    assert seg.n_cells == len(centres)
    assert np.max(match(seg.table.obsm["spatial"], centres)) < 1.5


@pytest.mark.parametrize("settings", [{"nucleus_um": 0}, {"min_area_um2": -1}, {"tile_um": 10},
                                      {"threshold": -0.1}, {"work_um": float("nan")},
                                      {"tile_um": 1e9}, {"tile_um": 1500, "expand_um": 200}])
def test_bad_detector_settings_are_refused_in_one_line(synthetic, settings):
    with pytest.raises(InputError) as err:
        detect(synthetic[0], **settings)
    assert "\n" not in str(err.value)


def test_a_low_resolution_image_is_refused_before_any_tile_is_read(synthetic, monkeypatch):
    from napari_histosge.slide.open import Slide

    monkeypatch.setattr(Slide, "read_region", lambda *a, **k: pytest.fail("a tile was read"))
    with open_slide(synthetic[0]) as slide, pytest.raises(InputError, match="too coarse") as err:
        next(detect_nuclei(slide, mpp=13.0))  # a Visium lowres image: a nucleus is half a pixel
    assert "\n" not in str(err.value)


def test_coarse_but_usable_pixels_warn(synthetic):
    with open_slide(synthetic[0]) as slide, pytest.warns(UserWarning, match="found poorly"):
        next(detect_nuclei(slide, mpp=2.5, tissue=False))


def test_a_tissue_mask_that_misses_the_slide_is_refused(synthetic):
    from napari_histosge.slide.mask import TissueMask

    mask = TissueMask(np.zeros((10, 10), bool), 66.0, "mask")  # no tissue anywhere
    with open_slide(synthetic[0]) as slide, pytest.raises(InputError, match="covers none of the slide") as err:
        run_to_end(detect_nuclei(slide, mpp=MPP, tissue=mask))
    assert "\n" not in str(err.value)


def test_a_raster_too_large_for_memory_is_refused_before_any_work(synthetic, monkeypatch, tmp_path):
    import napari_histosge.cells.detect as detect_module

    monkeypatch.setattr(detect_module, "MAX_IN_MEMORY_PIXELS", 1000)
    monkeypatch.setattr(detect_module, "detect_tissue", lambda *a, **k: pytest.fail("work started"))
    with open_slide(synthetic[0]) as slide, pytest.raises(InputError, match="too large to hold in memory"):
        next(detect_nuclei(slide, mpp=MPP))


def test_the_detector_needs_a_pixel_size(synthetic):
    with open_slide(synthetic[0]) as slide, pytest.raises(InputError, match="pixel size"):
        run_to_end(detect_nuclei(slide, mpp=None))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- label images


def disc_labels(shape=(200, 240)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    for i, (r, c) in enumerate([(50, 60), (120, 60), (100, 180)], start=7):
        labels[np.hypot(rows - r, cols - c) <= 10] = i
    return labels


def test_a_label_image_of_the_slides_size_is_read_as_cells(tmp_path):
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, disc_labels())
    seg = read_label_image(path, (200, 240), mpp=0.5)
    assert list(seg.table.obs["label"]) == [7, 8, 9]
    assert np.allclose(seg.table.obsm["spatial"], [[60, 50], [60, 120], [180, 100]], atol=1e-6)
    assert np.allclose(seg.table.obs["area_um2"], np.pi * 100 * 0.25, rtol=0.05)
    units = seg.units()
    assert list(units.label_ids) == [7, 8, 9] and units.px_per_label_px == 1.0
    assert list(seg.label_at(np.array([[60, 50], [0, 0], [180, 100], [-5, 3]]))) == [7, 0, 9, 0]


def test_a_label_image_at_a_stated_scale_lands_on_the_full_resolution(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, disc_labels())
    seg = read_label_image(path, (800, 960), scale=4.0)
    # label pixel 60 spans full-res 240..243: its centre is 241.5
    assert np.allclose(seg.table.obsm["spatial"][0], [241.5, 201.5])
    assert np.allclose(seg.table.obs["area_px"], np.bincount(disc_labels().ravel())[7:] * 16)


def test_a_label_image_written_by_the_detector_reads_back_without_a_scale(tmp_path):
    seg = segmentation_from_labels(disc_labels(), 2.0, mpp=0.25, source="test")
    labels_path, cells_path = write_segmentation(seg, tmp_path / "out")
    back = read_label_image(labels_path, (400, 480), mpp=0.25)
    assert back.px_per_label_px == 2.0
    assert np.allclose(back.table.obsm["spatial"], seg.table.obsm["spatial"])
    import anndata as ad

    assert ad.read_h5ad(cells_path).n_obs == 3


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint64])
def test_label_ids_are_written_as_they_were(tmp_path, dtype):
    labels = np.zeros((50, 50), dtype)
    big = 2**31 + 5 if np.iinfo(dtype).max > 2**32 else 200  # past int32: Cellpose ids over a whole slide
    labels[10:20, 10:20], labels[30:40, 30:40] = big, 7
    seg = segmentation_from_labels(labels, 1.0, mpp=0.5, source="test")
    labels_path, _ = write_segmentation(seg, tmp_path / "out")
    back = read_label_image(labels_path, (50, 50))
    assert list(back.table.obs["label"]) == list(seg.table.obs["label"]) == [7, big]
    assert back.label_at(np.array([[15.0, 15.0]])).tolist() == [big]


def test_label_ids_past_int64_are_refused(tmp_path):
    labels = np.zeros((20, 20), np.uint64)
    labels[5:10, 5:10] = 2**63 + 1
    with pytest.raises(InputError, match="largest"):
        segmentation_from_labels(labels, 1.0, mpp=0.5, source="test")


@pytest.mark.parametrize("layout", [{"compression": "zlib", "tile": (64, 64)},
                                    {"compression": "zlib", "rowsperstrip": 16}, {}])
def test_a_tiff_label_image_is_read_lazily(tmp_path, layout):
    # a whole-slide label image is never read into memory at once: chunk by chunk, or memory-mapped
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, disc_labels(), **layout)
    seg = read_label_image(path, (200, 240), mpp=0.5)
    assert isinstance(seg.labels, np.memmap) or not isinstance(seg.labels, np.ndarray)
    assert list(seg.table.obs["label"]) == [7, 8, 9]
    assert seg.label_at(np.array([[60.0, 50.0], [180.0, 100.0]])).tolist() == [7, 9]


@pytest.mark.parametrize("shape", [(1, 200, 240), (1, 1, 1, 200, 240), (200, 240, 1)])
def test_a_zarr_label_image_with_singleton_axes_is_read_lazily(tmp_path, shape):
    import zarr

    # napari's (1, h, w) labels and OME-Zarr's (t, c, z, y, x) with one plane
    z = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=shape, chunks=tuple(min(64, n) for n in shape),
                        dtype="int32")
    z[...] = disc_labels().reshape(shape)
    seg = read_label_image(tmp_path / "l.zarr", (200, 240), mpp=0.5)
    assert not isinstance(seg.labels, np.ndarray) and seg.labels.shape == (200, 240)
    assert list(seg.table.obs["label"]) == [7, 8, 9]


def test_a_label_pyramid_halves_a_raster_by_nearest_pixels(tmp_path, monkeypatch):
    import zarr

    from napari_histosge.cells import write as write_module

    monkeypatch.setattr(write_module, "PYRAMID_SMALLEST", 40)
    monkeypatch.setattr(write_module, "BLOCK", 32)  # several blocks per level
    labels = zarr.open_array(str(tmp_path / "0"), mode="w", shape=(200, 240), chunks=(64, 64), dtype="int32")
    labels[:] = disc_labels()
    levels = write_module.write_label_pyramid(labels, tmp_path)
    assert [lv.shape for lv in levels] == [(200, 240), (100, 120), (50, 60), (25, 30)]
    for k, level in enumerate(levels):
        assert np.array_equal(np.asarray(level[:]), disc_labels()[:: 2**k, :: 2**k])


def test_label_at_reads_only_the_chunks_under_the_points(tmp_path, monkeypatch):
    import zarr

    labels = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=(4000, 4000), chunks=(512, 512), dtype="int32")
    labels[5, 5], labels[3990, 3990] = 1, 2
    seg = segmentation_from_labels(labels, 1.0, mpp=0.5, source="test")
    # a slice would read the points' bounding box: the whole raster for two far corners
    monkeypatch.setattr(zarr.Array, "__getitem__", lambda *a: pytest.fail("a slice of the raster was read"))
    assert seg.label_at(np.array([[5.0, 5.0], [3990.0, 3990.0], [100.0, 7.0]])).tolist() == [1, 2, 0]


def test_a_label_image_with_its_pixel_size_is_scaled_by_it(tmp_path):
    path = tmp_path / "labels.ome.tif"
    tifffile.imwrite(path, disc_labels(), ome=True, metadata={"PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0,
                                                              "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    seg = read_label_image(path, (400, 480), mpp=0.5)
    assert seg.px_per_label_px == pytest.approx(2.0)


@pytest.mark.parametrize(("labels", "kwargs", "message"), [
    (disc_labels((100, 120)), {}, "state its scale"),
    (disc_labels(), {"scale": 2.0}, "another image or another pixel size"),
    (np.zeros((200, 240), np.int32), {}, "empty"),
    (np.zeros((200, 240, 3), np.uint8), {}, "2-D plane"),
    (disc_labels().astype(np.float32), {}, "integers"),
    (-disc_labels(), {}, "negative"),
])
def test_bad_label_images_are_refused_in_one_line(tmp_path, labels, kwargs, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, labels)
    with pytest.raises(InputError, match=message) as err:
        read_label_image(path, (200, 240), **kwargs)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_label_image_of_another_pixel_size_is_refused(tmp_path):
    path = tmp_path / "labels.ome.tif"
    tifffile.imwrite(path, disc_labels(), ome=True, metadata={"PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0,
                                                              "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    with pytest.raises(InputError, match="another image or another pixel size"):
        read_label_image(path, (400, 480), mpp=0.25)  # 1 µm labels on a 0.25 µm slide: 4x, not 2x


def test_a_missing_or_unreadable_label_image_is_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_label_image(tmp_path / "none.tif", (10, 10))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="cannot read"):
        read_label_image(bad, (10, 10))
    (tmp_path / "cells.csv").write_text("id,x,y\n")
    with pytest.raises(InputError, match="unsupported"):
        read_segmentation(tmp_path / "cells.csv", (10, 10))


# --------------------------------------------------------------------------- polygons


def square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def write_geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def feature(rings, name=None, kind="Polygon"):
    props = {"objectType": "detection"}
    if name:
        props["classification"] = {"name": name}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings}, "properties": props}


def test_geojson_polygons_are_read_as_cells_with_exact_centroids_and_areas(tmp_path):
    path = write_geojson(tmp_path / "cells.geojson", [
        feature([square(10, 10, 20)], "Tumor"),
        feature([square(50, 10, 20), square(55, 15, 10)], "Stroma"),  # a hole
        feature([[square(10, 60, 10)], [square(40, 60, 10)]], "Tumor", kind="MultiPolygon"),
    ])
    seg = read_cell_polygons(path, (100, 100), mpp=0.5)
    assert seg.n_cells == 3
    assert np.allclose(seg.table.obs["area_px"], [400, 300, 200])
    # QuPath's corners at integers: square(10, 10, 20) covers pixels 10..29, centred on 19.5
    assert np.allclose(seg.table.obsm["spatial"], [[19.5, 19.5], [59.5, 19.5], [29.5, 64.5]])
    # the raster agrees with the table: the same pixels, area and centroid as the polygons
    raster = segmentation_from_labels(seg.labels, 1.0, mpp=0.5, source="raster")
    assert np.allclose(raster.table.obs["area_px"], [400, 300, 200])
    assert np.allclose(raster.table.obsm["spatial"], seg.table.obsm["spatial"])
    assert list(seg.table.obs["class"]) == ["Tumor", "Stroma", "Tumor"]
    assert seg.label_at(np.array([[20, 20], [52, 12], [61, 21], [15, 65], [45, 65]])).tolist() == [1, 2, 0, 3, 3]


@pytest.mark.parametrize(("kind", "coordinates"), [
    ("Polygon", 5), ("Polygon", "abc"), ("Polygon", [[5]]), ("Polygon", [[[1, 2], [3]]]), ("Polygon", [None]),
    ("MultiPolygon", 5), ("MultiPolygon", [5]), ("MultiPolygon", [[square(1, 1, 5)], 7]),
])
def test_malformed_polygons_are_refused_in_one_line(tmp_path, kind, coordinates):
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "Feature", "geometry": {"type": kind, "coordinates": coordinates}}))
    with pytest.raises(InputError) as err:
        read_cell_polygons(path, (100, 100))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_polygons_in_another_coordinate_system_are_refused(tmp_path):
    path = write_geojson(tmp_path / "um.geojson", [feature([square(5000, 5000, 20)])])
    with pytest.raises(InputError, match="another coordinate system") as err:
        read_segmentation(path, (100, 100))
    assert "\n" not in str(err.value)


def test_cells_off_the_slide_are_left_out_with_a_warning(tmp_path):
    path = write_geojson(tmp_path / "some.geojson", [feature([square(10, 10, 20)]), feature([square(500, 10, 20)])])
    with pytest.warns(UserWarning, match="1 of 2 cells lie off the slide"):
        seg = read_cell_polygons(path, (100, 100))
    assert seg.n_cells == 1


def test_an_empty_geojson_is_refused(tmp_path):
    path = write_geojson(tmp_path / "empty.geojson", [])
    with pytest.raises(InputError, match="empty"):
        read_cell_polygons(path, (100, 100))
    with pytest.raises(InputError, match="scale applies to label images"):
        read_segmentation(path, (100, 100), scale=2.0)


def test_qupath_annotations_are_regions_not_cells(tmp_path):
    # QuPath's export of everything: the tissue annotation drawn first, then the cells inside it
    tissue = feature([square(0, 0, 99)], "Tissue")
    tissue["properties"]["objectType"] = "annotation"
    old_style = {"type": "Feature", "id": "PathAnnotationObject", "properties": {},
                 "geometry": {"type": "Polygon", "coordinates": [square(1, 1, 90)]}}
    cells = [feature([square(10 + 20 * i, 10, 10)]) for i in range(4)]
    for c in cells:
        c["properties"]["objectType"] = "cell"
    path = write_geojson(tmp_path / "all.geojson", [tissue, old_style, *cells])
    with pytest.warns(UserWarning, match="2 QuPath annotation"):
        seg = read_cell_polygons(path, (100, 100))
    assert seg.n_cells == 4 and np.allclose(seg.table.obs["area_px"], 100)
    assert sorted(np.unique(seg.labels)) == [0, 1, 2, 3, 4]


def test_a_geojson_of_annotations_only_is_refused(tmp_path):
    from napari_histosge.export.regions import Region, regions_geojson

    # the plugin's regions export (and QuPath's annotation export) holds regions, not cells
    regions = [Region("a", np.array(square(10, 10, 20))[:-1]), Region("b", np.array(square(60, 60, 10))[:-1])]
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps(regions_geojson(regions)))
    with pytest.raises(InputError, match=r"only QuPath annotations \(2") as err:
        read_segmentation(path, (100, 100))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- slides and sections


def test_the_slide_of_a_section_is_its_full_resolution_image(demo_dir):
    from napari_histosge.io import read_spots

    info = read_spots(demo_dir).uns["histosge"]
    source = slide_source(demo_dir)
    assert source.image == info["images"][info["image"]]["path"] and source.mpp == info["mpp"]
    alone = slide_source(source.image, mpp=0.7)
    assert alone.mpp == 0.7 and alone.scale == 1.0
    with pytest.raises(InputError, match="pixel size"):
        slide_source(source.image, mpp=-1)


def test_qupath_cells_give_their_nucleus_outlines_on_request(tmp_path):
    cell = feature([square(10, 10, 40)])
    cell["nucleusGeometry"] = {"type": "Polygon", "coordinates": [square(20, 20, 10)]}
    path = write_geojson(tmp_path / "qupath_cells.geojson", [cell, feature([square(60, 60, 20)])])
    cells = read_segmentation(path, (100, 100))
    nuclei = read_segmentation(path, (100, 100), nuclei=True)
    assert np.allclose(cells.table.obs["area_px"], [1600, 400])
    assert np.allclose(nuclei.table.obs["area_px"], [100, 400])  # a Feature without a nucleus keeps its outline
    assert np.allclose(nuclei.table.obsm["spatial"][0], [24.5, 24.5])
    label_image = tmp_path / "l.npy"
    np.save(label_image, disc_labels())
    with pytest.raises(InputError, match="nucleus outlines"):
        read_segmentation(label_image, (200, 240), nuclei=True)


def test_the_benchmarks_nuclei_cache_is_keyed_on_the_detectors_version(monkeypatch):
    # The cache of detected nuclei was keyed on the settings and the section only: a changed detector
    # read back the old detector's nuclei.
    import importlib.util
    from pathlib import Path

    from napari_histosge.cells import NucleusSettings, detect

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "superres_pooled.py"
    spec = importlib.util.spec_from_file_location("superres_pooled_for_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = bench.nuclei_cache_key("B4", NucleusSettings())
    assert before == bench.nuclei_cache_key("B4", NucleusSettings())
    monkeypatch.setattr(detect, "DETECTOR_VERSION", detect.DETECTOR_VERSION + 1)
    assert bench.nuclei_cache_key("B4", NucleusSettings()) != before
