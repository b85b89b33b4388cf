"""Lazy slide access: real SVS/JPEG/PNG slides, generated TIFFs, bad inputs."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_histosge.errors import InputError
from napari_histosge.slide import open as slide_mod
from napari_histosge.slide import pyramid as pyramid_mod
from napari_histosge.slide.open import open_slide


def _pattern(h: int, w: int) -> np.ndarray:
    """A smooth, non-symmetric RGB image (so misplaced reads are detectable)."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    b = ((xx + 2 * yy) % 256).astype(np.uint8)
    return np.dstack([r, g, b])


def _flat_png(folder: Path, h: int, w: int) -> tuple[Path, np.ndarray]:
    """A PNG of :func:`_pattern` (a flat image: opening it builds a pyramid) and its pixels."""
    img = _pattern(h, w)
    png = folder / "flat.png"
    Image.fromarray(img).save(png)
    return png, img


@pytest.fixture(scope="module")
def wsi_dir(real_data: Path) -> Path:
    d = real_data / "wsi"
    if not d.is_dir():
        pytest.skip(f"no whole-slide images at {d}")
    return d


# ----------------------------------------------------------------- real slides


def test_svs_jpeg_tiles(wsi_dir: Path) -> None:
    path = wsi_dir / "cmu_small_region.svs"
    s = open_slide(path)
    assert s.shape == (2967, 2220)
    assert s.mpp == pytest.approx(0.499)
    assert s.downsamples == [1.0]
    assert isinstance(s.levels[0], da.Array) and s.levels[0].dtype == np.uint8
    assert s.levels[0].shape == (2967, 2220, 3)
    ref = tifffile.imread(path, key=0)
    np.testing.assert_array_equal(s.read_region(700, 1200, 300, 200), ref[1200:1400, 700:1000])
    # Out of the image: padded with white, in-image part intact.
    r = s.read_region(2100, -20, 200, 60)
    assert (r[:20] == 255).all() and (r[:, 120:] == 255).all()
    np.testing.assert_array_equal(r[20:, :120], ref[0:40, 2100:2220])
    s.close()


def test_svs_jpeg2000_two_levels(wsi_dir: Path) -> None:
    path = wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as s:
        assert s.shape == (3567, 4443)
        assert len(s.levels) == 2 and s.levels[1].shape == (1783, 2221, 3)
        assert s.downsamples[1] == pytest.approx(2.0, abs=0.01)
        assert s.mpp is None
        with tifffile.TiffFile(path) as tf:
            ref1 = tf.series[0].levels[1].asarray()
        np.testing.assert_array_equal(s.read_region(600, 500, 128, 96, level=1), ref1[500:596, 600:728])
        # A 400 px patch read at 128 px comes from the coarser level.
        assert s.best_level(400, 128) == 1
        patches = s.read_patches(np.array([[2400.0, 1800.0]]), 400, 128)
        assert patches.shape == (1, 128, 128, 3) and patches.dtype == np.uint8
        assert patches.std() > 5  # tissue, not padding


@pytest.mark.slow
def test_her2st_jpeg_pyramid(her2st_b4: Path) -> None:
    jpg = next(her2st_b4.glob("*.jpg"))
    s = open_slide(jpg)
    assert s.shape == (9923, 9272)
    assert s.mpp is None
    assert max(s.levels[-1].shape[:2]) < 1024 <= max(s.levels[-2].shape[:2])
    assert all(a == pytest.approx(2 * b, rel=0.01) for a, b in zip(s.downsamples[1:], s.downsamples[:-1], strict=True))
    region = s.read_region(4000, 5000, 64, 48)
    with pyramid_mod.pil_no_size_limit(), Image.open(jpg) as im:
        ref = np.asarray(im.crop((4000, 5000, 4064, 5048)).convert("RGB"))
    np.testing.assert_array_equal(region, ref)


def test_dlpfc_lowres_png_with_scale(dlpfc_151675: Path) -> None:
    png = dlpfc_151675 / "spatial" / "tissue_lowres_image.png"
    s = open_slide(png)
    assert s.shape == (600, 600) and len(s.levels) == 1
    # A centre at full-res (4000, 5000) with scale 0.05 lies at (200, 250) in the PNG.
    p = s.read_patches(np.array([[4000.0, 5000.0]]), 200, 10, scale=0.05)
    np.testing.assert_array_equal(p[0], s.read_region(195, 245, 10, 10))


# ----------------------------------------------------------------- generated files


def test_pyramidal_tiff_subifds(tmp_path: Path) -> None:
    img = _pattern(1024, 768)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), subifds=2, photometric="rgb",
                 resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        tw.write(img[::2, ::2], tile=(128, 128), subfiletype=1, photometric="rgb")
        tw.write(img[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb")
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25)
        assert s.downsamples == [1.0, 2.0, 4.0]
        np.testing.assert_array_equal(s.read_region(10, 20, 30, 40, level=2), img[::4, ::4][20:60, 10:40])
        # Exact pixel grid: a 32 px patch centred on a pixel corner at level 0 is that crop.
        p = s.read_patches(np.array([[100.0, 200.0]]), 32, 32)
        np.testing.assert_array_equal(p[0], img[184:216, 84:116])
        # scale: the same slide read from a coordinate system twice as fine.
        q = s.read_patches(np.array([[200.0, 400.0]]), 64, 32, scale=0.5)
        np.testing.assert_array_equal(q[0], p[0])
        # A 256 px patch at 64 px comes from level 2 (>= 64 px across there).
        assert s.best_level(256, 64) == 2
        big = s.read_patches(np.array([[384.0, 512.0]]), 256, 64)
        np.testing.assert_allclose(big[0].astype(float), img[384:640, 256:512][::4, ::4], atol=3)


def test_ome_tiff_channels_first(tmp_path: Path) -> None:
    img = _pattern(300, 200)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, np.moveaxis(img, 2, 0), ome=True, tile=(64, 64),
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"})
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5)
        assert s.shape == (300, 200)
        np.testing.assert_array_equal(s.levels[0].compute(), img)


@pytest.mark.parametrize("kind", ["planar", "grey", "rgba", "uint16"])
def test_tiff_sample_layouts(tmp_path: Path, kind: str) -> None:
    img = _pattern(120, 90)
    path = tmp_path / f"{kind}.tif"
    expected = img
    if kind == "planar":
        tifffile.imwrite(path, np.moveaxis(img, 2, 0), photometric="rgb", planarconfig="separate")
    elif kind == "grey":
        tifffile.imwrite(path, img[..., 1], imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                         metadata={"unit": "um"})
        expected = np.repeat(img[..., 1:2], 3, axis=2)
    elif kind == "rgba":
        tifffile.imwrite(path, np.dstack([img, img[..., :1]]), photometric="rgb", extrasamples=["unassalpha"])
    else:
        tifffile.imwrite(path, img.astype(np.uint16) * 257, photometric="rgb")
    with open_slide(path) as s:
        np.testing.assert_array_equal(s.read_region(0, 0, 90, 120), expected)
        np.testing.assert_array_equal(s.levels[0].compute(), expected)
        if kind == "grey":
            assert s.mpp == pytest.approx(0.3)


def test_flat_image_pyramid_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png, img = _flat_png(tmp_path, 2300, 1500)
    cache = tmp_path / "cache"
    s = open_slide(png, cache_dir=cache)
    assert [lv.shape[:2] for lv in s.levels] == [(2300, 1500), (1150, 750), (575, 375)]
    np.testing.assert_array_equal(s.read_region(1400, 2200, 100, 100), img[2200:2300, 1400:1500])
    assert len(list((cache / "pyramids").iterdir())) == 1

    def fail(*args: object) -> None:
        raise AssertionError("pyramid rebuilt although cached")

    monkeypatch.setattr(slide_mod, "build_pyramid", fail)
    s2 = open_slide(png, cache_dir=cache)
    np.testing.assert_array_equal(s2.levels[1].compute(), s.levels[1].compute())


def test_a_viewer_sees_a_new_flat_image_at_once_while_its_pyramid_is_written_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slide_mod, "BACKGROUND_MIN_PIXELS", 1000)
    png, img = _flat_png(tmp_path, 2300, 1500)
    cache = tmp_path / "cache"
    quick = open_slide(png, cache_dir=cache, background_cache=True)
    assert quick.cache_build is not None
    quick.cache_build.join(timeout=60)
    assert not quick.cache_build.is_alive() and len(list((cache / "pyramids").iterdir())) == 1

    def fail(*args: object) -> None:
        raise AssertionError("pyramid rebuilt although the background thread wrote it")

    monkeypatch.setattr(slide_mod, "build_pyramid", fail)
    cached = open_slide(png, cache_dir=cache, background_cache=True)
    assert cached.cache_build is None  # nothing left to write
    assert [lv.shape for lv in quick.display_levels] == [lv.shape for lv in cached.display_levels]
    for shown, written in zip(quick.display_levels, cached.display_levels, strict=True):
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(written))  # the same pyramid, pixel for pixel
    np.testing.assert_array_equal(quick.read_region(1400, 2200, 100, 100), img[2200:2300, 1400:1500])
    np.testing.assert_array_equal(quick.read_patches(np.array([[700.0, 900.0]]), 64, 64)[0], img[868:932, 668:732])


def test_a_background_pyramid_that_cannot_be_written_leaves_the_slide_working(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slide_mod, "BACKGROUND_MIN_PIXELS", 1000)
    png, img = _flat_png(tmp_path, 1100, 900)
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache would go")
    with pytest.warns(UserWarning, match=r"flat\.png: the pyramid cache was not written.*next open builds it"):
        s = open_slide(png, cache_dir=not_a_folder, background_cache=True)
        s.cache_build.join(timeout=60)
    np.testing.assert_array_equal(s.display_levels[0][100:200, 300:400], img[100:200, 300:400])
    assert not_a_folder.is_file()


def test_a_flat_image_too_large_to_hold_opens_once_its_pyramid_is_written(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slide_mod, "BACKGROUND_MIN_PIXELS", 1000)
    monkeypatch.setattr(slide_mod, "BACKGROUND_MAX_PIXELS", 500_000)
    png, _ = _flat_png(tmp_path, 1100, 900)
    s = open_slide(png, cache_dir=tmp_path / "cache", background_cache=True)
    assert s.cache_build is None and len(list((tmp_path / "cache" / "pyramids").iterdir())) == 1


def test_large_strip_tiff_goes_through_pyramid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slide_mod, "FLAT_DIRECT_MAX", 256)
    img = _pattern(1200, 700)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    s = open_slide(path, cache_dir=tmp_path / "c")
    assert len(s.levels) == 2 and s.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(s.read_region(5, 7, 50, 60), img[7:67, 5:55])


def test_large_single_level_tiled_tiff_gets_a_pyramid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiled TIFF without reduced levels would be read whole by napari: it gets a cached pyramid."""
    monkeypatch.setattr(slide_mod, "TILED_DIRECT_MAX", 256)
    img = _pattern(1200, 700)
    path = tmp_path / "tiled_one_level.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    s = open_slide(path, cache_dir=tmp_path / "c")
    assert len(s.display_levels) == 2 and s.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(s.display_levels[0][7:67, 5:55], img[7:67, 5:55])
    small = tmp_path / "small.tif"  # at most TILED_DIRECT_MAX: read as it is, no pyramid
    tifffile.imwrite(small, img[:200, :200], tile=(128, 128), photometric="rgb")
    assert len(open_slide(small, cache_dir=tmp_path / "c2").levels) == 1 and not (tmp_path / "c2").exists()


# ----------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        open_slide(tmp_path / "nope.svs")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder"):
        open_slide(tmp_path)


def test_unsupported_extension(tmp_path: Path) -> None:
    p = tmp_path / "slide.mrxs"
    p.write_bytes(b"abc")
    with pytest.raises(InputError, match=r"slide\.mrxs.*unsupported image type '\.mrxs'"):
        open_slide(p)


@pytest.mark.parametrize("name", ["bad.svs", "bad.jpg", "bad.png", "bad.tif"])
def test_garbage_bytes(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=rf"{name}.*cannot read image"):
        open_slide(p, cache_dir=tmp_path / "c")


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = tmp_path / "full.jpg"
    Image.fromarray(_pattern(400, 300)).save(buf, quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.read_bytes()[:1500])
    with pytest.raises(InputError, match=r"cut\.jpg.*cannot read image"):
        open_slide(p, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "pyramids").exists() or not any((tmp_path / "c" / "pyramids").iterdir())


def test_truncated_svs(tmp_path: Path, wsi_dir: Path) -> None:
    src = (wsi_dir / "cmu_small_region.svs").read_bytes()
    p = tmp_path / "cut.svs"
    p.write_bytes(src[: len(src) // 3])
    with pytest.raises(InputError, match=r"cut\.svs"):
        s = open_slide(p)
        s.read_region(0, 0, *s.shape[::-1])  # if opening passed, reading all tiles must not


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        open_slide(p)


def test_zero_size_image(tmp_path: Path) -> None:
    p = tmp_path / "zero.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(p, np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(InputError, match=r"zero\.tif.*zero size"):
        open_slide(p)


# ----------------------------------------------------------------- display levels (what napari shows)


def test_display_levels_slice_like_numpy_through_the_tile_cache(tmp_path: Path) -> None:
    img = _pattern(600, 500)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb")
    with open_slide(path) as s:
        view = s.display_levels[0]
        assert view.shape == (600, 500, 3) and view.dtype == np.uint8 and view.ndim == 3 and len(view) == 600
        for key in [(slice(130, 390), slice(5, 260)), (slice(None), slice(490, None)), (slice(0, 600, 3),),
                    (10, slice(20, 40)), (Ellipsis, 1), (slice(50, 60), 7, slice(0, 2)), (slice(5, 5),)]:
            np.testing.assert_array_equal(view[key], img[key], err_msg=str(key))
        np.testing.assert_array_equal(np.asarray(view), img)
        decoded = s.tiles_decoded
        view[130:390, 5:260]  # a view napari shows again is served from the cache
        assert s.tiles_decoded == decoded
        np.testing.assert_array_equal(s.display_levels[0][64:80, 64:80], s.levels[0][64:80, 64:80].compute())


def test_display_levels_refuse_a_whole_level_over_the_decode_limit(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, _pattern(512, 512), tile=(128, 128), photometric="rgb")
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", str(200 * 200))
    with open_slide(path) as s:
        assert s.display_levels[0][0:128, 0:128].shape == (128, 128, 3)  # a screen's worth still reads
        with pytest.raises(InputError, match="tiled.tif"):
            np.asarray(s.display_levels[0])


def test_showing_a_slide_needs_neither_dask_nor_the_spot_stack(tmp_path: Path) -> None:
    """The slide reader opens a slide without dask.array, pandas, anndata or scipy (first open stays quick)."""
    import subprocess
    import sys

    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, _pattern(512, 512), tile=(128, 128), photometric="rgb")
    code = ("import sys\nfrom napari_histosge.plugin.reader import get_spots_reader, get_slide_reader\n"
            f"p = {str(path)!r}\nassert get_spots_reader(p) is None\n"
            "[(data, kwargs, kind)] = get_slide_reader(p)(p)\n"
            "assert kind == 'image' and data[0:4, 0:4].shape == (4, 4, 3)\n"
            "heavy = ('dask.array', 'pandas', 'anndata', 'scipy', 'torch')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
