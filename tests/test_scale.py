"""Scale limits: tiles decoded once, memory limits refused clearly, corrupt tiles named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig, extract_features_at
from napari_histosge.progress import run_to_end
from napari_histosge.slide import pyramid as pyramid_mod
from napari_histosge.slide.open import open_slide

TILE = 64


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tiled(path: Path, img: np.ndarray, **kw) -> Path:
    tifffile.imwrite(path, img, tile=(TILE, TILE), photometric="rgb", **kw)
    return path


def test_read_patches_decodes_each_tile_once(tmp_path: Path) -> None:
    img = _noise(640, 512)
    path = _tiled(tmp_path / "t.tif", img)
    rng = np.random.default_rng(3)
    xy = rng.uniform(20, 490, (300, 2)).round()  # integer centres: exact crops
    with open_slide(path) as s:
        patches = s.read_patches(xy, 32, 32)
        expected_tiles = set()
        for (x, y), p in zip(xy.astype(int), patches, strict=True):
            # Returned in the caller's order, cut from the right place.
            np.testing.assert_array_equal(p, img[y - 16 : y + 16, x - 16 : x + 16])
            for r in range((y - 17) // TILE, (y + 16) // TILE + 1):
                for c in range((x - 17) // TILE, (x + 16) // TILE + 1):
                    expected_tiles.add((r, c))
        assert s.tiles_decoded == len(expected_tiles)
        s.read_patches(xy[:50], 32, 32)  # cached tiles are not decoded again
        assert s.tiles_decoded == len(expected_tiles)
        # Patches over the edge are padded white, as read_region does.
        edge = s.read_patches(np.array([[0.0, 0.0]]), 32, 32)[0]
        np.testing.assert_array_equal(edge, s.read_region(-16, -16, 32, 32))
        assert (edge[:16] == 255).all()


def test_read_patches_matches_region_resampling(tmp_path: Path) -> None:
    img = _noise(300, 300, 1)
    path = _tiled(tmp_path / "t.tif", img)
    with open_slide(path) as s:
        xy = np.array([[100.3, 150.7], [10.0, 290.5]])
        got = s.read_patches(xy, 45.5, 20)
        for (x, y), p in zip(xy, got, strict=True):
            one = s.read_patches(np.array([[x, y]]), 45.5, 20)[0]
            np.testing.assert_array_equal(p, one)
        assert got.shape == (2, 20, 20, 3)


def test_large_jpeg_is_refused_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jpg = tmp_path / "big.jpg"
    Image.fromarray(_noise(300, 200)).save(jpg)
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", "50000")
    with pytest.raises(InputError, match=r"big\.jpg.*200 x 300 px.*limit of 50,000 px.*tiled pyramidal TIFF"):
        open_slide(jpg, cache_dir=tmp_path / "c")
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", "60000")
    with open_slide(jpg, cache_dir=tmp_path / "c") as s:
        assert s.shape == (300, 200)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_big_strip_tiff_pyramid_built_by_strips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    from napari_histosge.slide import open as slide_mod

    monkeypatch.setattr(slide_mod, "FLAT_DIRECT_MAX", 256)
    # Below the whole image (2100 x 1500 px) but above one strip: must read by strips.
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", "100000")
    img = _noise(2100, 1500, 2)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=16, compression=compression)
    with open_slide(path, cache_dir=tmp_path / "c") as s:
        assert [lv.shape[:2] for lv in s.levels] == [(2100, 1500), (1050, 750), (525, 375)]
        np.testing.assert_array_equal(s.read_region(1400, 2000, 100, 100), img[2000:2100, 1400:1500])
        # Level 1 is the rounded 2x2 mean of level 0.
        ref = (img[:4, :4].astype(np.uint16).reshape(2, 2, 2, 2, 3).sum((1, 3)) + 2) // 4
        np.testing.assert_array_equal(s.read_region(0, 0, 2, 2, level=1), ref)
        # A whole-level read would break the limit: refused, with the size it needs.
        with pytest.raises(InputError, match=r"strips\.tif.*1500 x 2100 px.*0\.0 GB"):
            s.read_region(0, 0, 1500, 2100)


def test_strip_larger_than_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_histosge.slide import open as slide_mod

    monkeypatch.setattr(slide_mod, "FLAT_DIRECT_MAX", 256)
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", "10000")
    path = tmp_path / "onestrip.tif"
    tifffile.imwrite(path, _noise(400, 300), photometric="rgb", compression="zlib", rowsperstrip=400)
    with pytest.raises(InputError, match=r"onestrip\.tif.*one strip.*limit"):
        open_slide(path, cache_dir=tmp_path / "c")


def _corrupt_tile(path: Path, index: int) -> int:
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[0].dataoffsets[index], tf.pages[0].databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return offset


def test_corrupt_tile_names_file_level_tile_and_offset(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "bad.tif", _noise(256, 256), compression="jpeg")
    offset = _corrupt_tile(path, 1 * 4 + 2)  # tile row 1, column 2
    with open_slide(path) as s:
        s.read_region(0, 0, 64, 64)  # an intact tile still reads
        msg = rf"bad\.tif.*corrupt or truncated tile \(level 0, tile row 1, column 2, byte offset {offset}\)"
        with pytest.raises(InputError, match=msg):
            s.read_region(100, 50, 100, 50)
        with pytest.raises(InputError, match=msg):
            s.read_patches(np.array([[160.0, 96.0]]), 20, 20)
        with pytest.raises(InputError, match=msg):
            s.levels[0][64:128, 128:192].compute()  # what napari does
        with pytest.raises(InputError, match=msg):
            run_to_end(extract_features_at(path, 1.0, np.array([[160.0, 96.0]]), 20.0,
                                           FeatureConfig(device="cpu", cache=False)))


def test_truncated_tiled_tiff_names_tile(tmp_path: Path) -> None:
    path = _tiled(tmp_path / "cut.tif", _noise(256, 256), compression="jpeg")
    with tifffile.TiffFile(path) as tf:
        last = tf.pages[0].dataoffsets[-1]
    path.write_bytes(path.read_bytes()[: last + 10])  # the last tile is cut short
    with open_slide(path) as s:
        with pytest.raises(InputError, match=r"cut\.tif.*tile \(level 0, tile row 3, column 3"):
            s.read_region(200, 200, 50, 50)


def test_max_decode_pixels_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HISTOSGE_MAX_DECODE_PIXELS", raising=False)
    assert pyramid_mod.max_decode_pixels() == pyramid_mod.DEFAULT_MAX_DECODE_PIXELS
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", "2e6")
    assert pyramid_mod.max_decode_pixels() == 2_000_000
