"""The ``nuclei`` extractor: nucleus morphometrics of patches, in micrometres."""

from __future__ import annotations

import math
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import tifffile
import torch

from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig, available_extractors, create_extractor, extract_spot_features
from napari_histosge.features.default import FEATURE_NAMES as DEFAULT_NAMES
from napari_histosge.features.morphometrics import (
    FEATURE_NAMES,
    NucleusMorphometrics,
    nucleus_measures,
    stain_densities,
)
from napari_histosge.progress import run_to_end

PATCH_UM = 200.0
NUCLEUS_RADIUS_UM = 4.0
#: Disc centres (µm from the patch centre): nine within 25 µm, eight more at 75 µm.
INNER = [(dy, dx) for dy in (-14.0, 0.0, 14.0) for dx in (-14.0, 0.0, 14.0)]
OUTER = [(75 * math.sin(a), 75 * math.cos(a)) for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)]
BACKGROUND, NUCLEUS = (236, 178, 214), (72, 42, 128)  # eosin-pink, haematoxylin-purple


def _scene(size_px: int) -> np.ndarray:
    """The same tissue (dark discs of radius 4 µm on pink) drawn over ``PATCH_UM`` at ``size_px`` pixels."""
    um = PATCH_UM / size_px
    centre = (size_px - 1) / 2
    yy, xx = (np.mgrid[:size_px, :size_px] - centre) * um
    img = np.empty((size_px, size_px, 3), np.uint8)
    img[:] = BACKGROUND
    for dy, dx in INNER + OUTER:
        img[(yy - dy) ** 2 + (xx - dx) ** 2 <= NUCLEUS_RADIUS_UM**2] = NUCLEUS
    return img


def _features(size_px: int, patch_um: float = PATCH_UM) -> dict[str, float]:
    extractor = create_extractor("nuclei", device="cpu")
    extractor.center_fraction, extractor.patch_um = 0.5, patch_um
    out = extractor.extract(torch.from_numpy(_scene(size_px)[None])).numpy()[0]
    return dict(zip(FEATURE_NAMES, out.tolist(), strict=True))


@pytest.mark.parametrize("size_px", [200, 400])
def test_discs_of_known_size_and_count_give_density_and_area_in_micrometres(size_px: int) -> None:
    # The same scene at 1 and at 0.5 µm per pixel: counts, densities and areas in µm agree with it (a length
    # left in pixels, or converted at the wrong pixel size, fails at one of the two).
    f = _features(size_px)
    inner, all_ = len(INNER), len(INNER) + len(OUTER)
    for region, radius, count in (("r25um", 25, inner), ("spot", 50, inner), ("r50um", 50, inner),
                                  ("r100um", 100, all_)):
        expected = count / (math.pi * radius**2) * 1e6
        assert f[f"{region}_density_per_mm2"] == pytest.approx(expected, rel=0.03), region
    area = math.pi * NUCLEUS_RADIUS_UM**2
    assert f["r25um_area_um2_q50"] == pytest.approx(area, rel=0.2)
    assert f["r100um_area_um2_q10"] == pytest.approx(area, rel=0.2)
    assert f["r25um_nuclear_area_frac"] == pytest.approx(inner * area / (math.pi * 25**2), rel=0.25)
    assert f["r25um_eccentricity_q50"] < 0.5  # discs are round
    hema, eosin = stain_densities(np.array([NUCLEUS, BACKGROUND], np.uint8))
    assert f["r25um_hema_q50"] == pytest.approx(hema[0], rel=0.1)
    assert f["r25um_eosin_outside_nuclei"] == pytest.approx(eosin[1], rel=0.2)


def test_no_nuclei_gives_zero_density() -> None:
    extractor = create_extractor("nuclei", device="cpu")
    extractor.patch_um = PATCH_UM
    blank = np.full((2, 224, 224, 3), BACKGROUND, np.uint8)
    f = dict(zip(FEATURE_NAMES, extractor.extract(torch.from_numpy(blank)).numpy()[1].tolist(), strict=True))
    assert f["spot_density_per_mm2"] == 0 and f["r100um_area_um2_q50"] == 0
    assert np.isfinite(list(f.values())).all()


def test_measures_match_regionprops() -> None:
    from skimage.draw import ellipse
    from skimage.measure import regionprops

    rng = np.random.default_rng(3)
    labels = np.zeros((2, 96, 96), np.int32)
    next_id = 1
    for patch in range(2):
        for _ in range(4):
            rr, cc = ellipse(rng.uniform(15, 80), rng.uniform(15, 80), rng.uniform(3, 9), rng.uniform(3, 9),
                             shape=(96, 96), rotation=rng.uniform(0, math.pi))
            free = labels[patch, rr, cc] == 0
            labels[patch, rr[free], cc[free]] = next_id
            next_id += 1
    hema = rng.uniform(0, 1, labels.shape).astype(np.float32)
    patch_of, centroid, measures = nucleus_measures(labels, hema, um_per_px=0.5)
    props = [(p, r) for p in range(2) for r in regionprops(labels[p], intensity_image=hema[p])]
    assert len(props) == len(patch_of)
    for k, (p, r) in enumerate(props):
        assert patch_of[k] == p
        np.testing.assert_allclose(centroid[k], r.centroid, atol=1e-6)
        assert measures[k, 0] == pytest.approx(r.area * 0.25)
        assert measures[k, 1] == pytest.approx(r.eccentricity, abs=1e-6)
        assert measures[k, 2] == pytest.approx(r.intensity_mean, rel=1e-5)
        assert measures[k, 3] == pytest.approx(np.std(hema[p][labels[p] == r.label]), rel=1e-4)


def test_stain_densities_are_rgb2hed() -> None:
    from skimage.color import rgb2hed

    rgb = np.random.default_rng(0).integers(0, 256, (4, 9, 9, 3)).astype(np.uint8)
    h, e = stain_densities(rgb)
    hed = np.maximum(rgb2hed(rgb), 0)
    np.testing.assert_allclose(h, hed[..., 0], atol=1e-5)
    np.testing.assert_allclose(e, hed[..., 1], atol=1e-5)


def test_registry_specs_and_combined_features() -> None:
    assert "nuclei" in available_extractors()
    nuclei = create_extractor("nuclei", device="cpu")
    assert isinstance(nuclei, NucleusMorphometrics) and nuclei.dim == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    both = create_extractor("default + nuclei", device="cpu")
    assert both.dim == len(DEFAULT_NAMES) + len(FEATURE_NAMES) == len(both.feature_names) and both.needs_pixel_size
    both.center_fraction, both.patch_um = 0.4, PATCH_UM
    assert [p.center_fraction for p in both.parts] == [0.4, 0.4] and nuclei.patch_um is None
    patches = torch.from_numpy(_scene(224)[None])
    default = create_extractor("default", device="cpu")
    default.center_fraction, nuclei.center_fraction, nuclei.patch_um = 0.4, 0.4, PATCH_UM
    out = both.extract(patches).numpy()
    np.testing.assert_allclose(out[:, len(DEFAULT_NAMES):], nuclei.extract(patches).numpy())
    np.testing.assert_allclose(out[:, :len(DEFAULT_NAMES)], default.extract(patches).numpy(), rtol=1e-5, atol=1e-5)
    assert both.identity == f"{default.identity}+{nuclei.identity}"
    for bad in ("default+default", "default+", "default+bogus"):
        with pytest.raises(InputError):
            create_extractor(bad, device="cpu")


def _section(tmp_path: Path, mpp: float | None) -> ad.AnnData:
    image = tmp_path / "scene.tif"
    tifffile.imwrite(image, _scene(400))
    a = ad.AnnData(sp.csr_matrix(np.ones((1, 2), np.float32)))
    a.obsm["spatial"] = np.array([[199.5, 199.5]])
    a.uns["histosge"] = {"spot_diameter_px": 200.0, "mpp": mpp, "image": "fullres", "source": str(tmp_path),
                         "images": {"fullres": {"path": str(image), "scale": 1.0}}}
    return a


def test_extraction_passes_the_slide_pixel_size(tmp_path: Path) -> None:
    # 400 px of 0.5 µm: the patch (2 spot diameters) is the whole 200 µm scene.
    feats = run_to_end(extract_spot_features(_section(tmp_path, 0.5), FeatureConfig(extractor="nuclei",
                                                                                    device="cpu")))
    f = dict(zip(FEATURE_NAMES, feats.features[0].tolist(), strict=True))
    assert f["r100um_density_per_mm2"] == pytest.approx(17 / (math.pi * 100**2) * 1e6, rel=0.05)


def test_unknown_pixel_size_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs the slide's pixel size") as err:
        run_to_end(extract_spot_features(_section(tmp_path, None), FeatureConfig(extractor="default+nuclei",
                                                                                 device="cpu")))
    assert "\n" not in str(err.value)


def test_cli_trains_and_predicts_with_the_combined_features(demo_dir: Path, tmp_path: Path) -> None:
    from napari_histosge.cli import main

    model = tmp_path / "m.pt"
    assert main(["train", str(demo_dir), "--out", str(model), "--epochs", "2", "--n-genes", "10",
                 "--extractor", "default+nuclei", "--quiet"]) == 0
    assert main(["predict", str(model), str(demo_dir), "--out", str(tmp_path / "p.h5ad"), "--quiet"]) == 0
