"""Stain normalisation (Macenko, once per slide): estimates, re-rendering, the feature path and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig
from napari_histosge.features.extract import extract_features_at
from napari_histosge.features.stain import LIGHT, StainNormaliser, estimate_stains
from napari_histosge.progress import run_to_end

#: Two labs' haematoxylin and eosin (columns; optical density per RGB channel). Macenko, as
#: published, drops pixels faint in any channel, so both stains absorb some of every channel here.
LAB_A = np.array([[0.65, 0.27], [0.70, 0.88], [0.29, 0.40]])
LAB_B = np.array([[0.46, 0.45], [0.78, 0.75], [0.42, 0.49]])


def concentrations(size: int = 768, seed: int = 0) -> np.ndarray:
    """``(2, size, size)`` stain amounts of one tissue: nuclei (H) in an eosin stroma, glass around it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tissue = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.35**2
    nuclei = np.zeros((size, size))
    for cy, cx in rng.uniform(0.2, 0.8, (300, 2)):
        nuclei = np.maximum(nuclei, ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.012**2) * rng.uniform(0.8, 1.6))
    eosin = 1.0 + 0.3 * np.sin(xx * 40) * np.sin(yy * 33) + rng.normal(0, 0.03, (size, size))
    eosin = eosin * np.where(nuclei > 0, 0.15, 1.0)  # a nucleus takes the place of eosin-stained cytoplasm
    return np.stack([nuclei * tissue, np.clip(eosin, 0, None) * tissue])


def render(conc: np.ndarray, stains: np.ndarray, strength: float = 1.0) -> np.ndarray:
    density = np.einsum("ck,khw->hwc", stains, conc * strength)
    return np.clip(LIGHT * np.exp(-density), 0, 255).astype(np.uint8)


def slide(tmp_path: Path, name: str, stains: np.ndarray, strength: float = 1.0) -> Path:
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, render(concentrations(), stains, strength), tile=(128, 128), photometric="rgb")
    return path


def unit_columns(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=0, keepdims=True)


@pytest.mark.slow
def test_the_estimate_finds_the_slides_own_stains(tmp_path: Path) -> None:
    for stains in (LAB_A, LAB_B):
        est = estimate_stains(slide(tmp_path, "s", stains))
        cosines = np.sum(unit_columns(est.stains) * unit_columns(stains), axis=0)
        assert cosines == pytest.approx([1.0, 1.0], abs=0.005)  # haematoxylin first, eosin second
    # the two labs' stains differ by more than that: the estimate tells them apart
    assert np.sum(unit_columns(LAB_A) * unit_columns(LAB_B), axis=0).max() < 0.98


@pytest.mark.slow
def test_two_labs_slides_look_alike_after_normalisation(tmp_path: Path) -> None:
    """The same tissue stained in two labs (other stains, one darker): far apart before, close after."""
    a, b = slide(tmp_path, "a", LAB_A), slide(tmp_path, "b", LAB_B, strength=1.4)
    img_a, img_b = tifffile.imread(a), tifffile.imread(b)
    na, nb = estimate_stains(a)(img_a), estimate_stains(b)(img_b)
    assert na.dtype == np.uint8 and na.shape == img_a.shape
    tissue = concentrations().sum(axis=0) > 0
    before = np.abs(img_a.astype(float) - img_b)[tissue].mean()
    after = np.abs(na.astype(float) - nb)[tissue].mean()
    assert after < before / 4
    glass = ~tissue  # no stain stays no stain
    assert np.abs(na[glass].astype(float) - img_a[glass]).mean() < 3


def test_normaliser_round_trips_through_a_plain_dict() -> None:
    n = StainNormaliser(LAB_A, np.array([2.0, 1.0]), LAB_B, np.array([1.9, 1.0]))
    back = StainNormaliser.from_dict(n.to_dict())
    patch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(back(patch), n(patch))


def test_a_blank_slide_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "glass.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 245, np.uint8), tile=(128, 128), photometric="rgb")
    with pytest.raises(InputError, match=r"glass\.tif.*too little tissue.*stain 'none'"):
        estimate_stains(path)


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(InputError, match="feature setting stain must be one of none, macenko, got 'reinhard'"):
        FeatureConfig(stain="reinhard")
    assert FeatureConfig.from_dict({"extractor": "default"}).stain == "none"  # models saved before the option


@pytest.mark.slow
def test_features_of_normalised_patches_come_from_their_own_cache_entry(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HISTOSGE_CACHE", str(tmp_path / "cache"))
    a, b = slide(tmp_path, "a", LAB_A), slide(tmp_path, "b", LAB_B, strength=1.4)
    centres = np.array([[300.0, 300.0], [400.0, 380.0], [450.0, 300.0]])

    def features(path: Path, stain: str) -> np.ndarray:
        config = FeatureConfig(device="cpu", stain=stain)
        return run_to_end(extract_features_at(path, 1.0, centres, 96.0, config)).features

    plain_a, plain_b = features(a, "none"), features(b, "none")
    norm_a, norm_b = features(a, "macenko"), features(b, "macenko")
    assert not np.allclose(norm_a, plain_a)  # not served the unnormalised entry
    np.testing.assert_array_equal(features(a, "macenko"), norm_a)  # and its own entry is reused
    assert np.abs(norm_a - norm_b).mean() < np.abs(plain_a - plain_b).mean() / 2
