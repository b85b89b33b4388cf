"""Feature extractors, registry, cache and extraction around spots."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
import torch

from napari_histosge.errors import CancelledError, InputError
from napari_histosge.features import (
    FeatureConfig,
    FeatureExtractor,
    SpotFeatures,
    available_extractors,
    create_extractor,
    extract_features_at,
    extract_spot_features,
    patch_size_px,
    register_extractor,
    spot_center_fraction,
    unregister_extractor,
)
from napari_histosge.features.default import FEATURE_NAMES, DefaultExtractor
from napari_histosge.progress import CancelToken, Progress, run_to_end

CPU = dict(device="cpu")


def _collect(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _tiles_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 600x800 TIFF of 4x3 uniform colour blocks (200 px) and the block colours."""
    rng = np.random.default_rng(1)
    colours = rng.integers(40, 230, (3, 4, 3), dtype=np.uint8)
    img = np.kron(colours, np.ones((200, 200, 1), np.uint8)).astype(np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", tile=(128, 128))
    return img, colours


def _adata_for(image: Path, xy: np.ndarray, diameter: float, scale: float = 1.0) -> ad.AnnData:
    a = ad.AnnData(sp.csr_matrix(np.ones((len(xy), 2), np.float32)))
    a.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    a.uns["histosge"] = {
        "spot_diameter_px": diameter,
        "mpp": None,
        "images": {"fullres": {"path": str(image), "scale": scale}},
        "image": "fullres",
        "source": str(image.parent),
    }
    return a


# ----------------------------------------------------------------- registry


def test_registry_lists_and_rejects() -> None:
    names = available_extractors()
    assert {"default", "uni", "timm:<model_name>"} <= set(names)
    with pytest.raises(InputError, match=r"unknown feature extractor 'nope'.*default.*timm:<model_name>.*uni"):
        create_extractor("nope")
    with pytest.raises(InputError, match="unknown timm model 'not_a_model_xyz'"):
        create_extractor("timm:not_a_model_xyz")
    with pytest.raises(InputError, match="unknown feature extractor"):
        create_extractor("timm:")


def test_register_custom_extractor() -> None:
    @register_extractor("mean_colour_test")
    class MeanColour(FeatureExtractor):
        dim = 3
        input_size = 16

        def extract(self, patches: torch.Tensor) -> torch.Tensor:
            return patches.float().mean((1, 2)) / 255

    try:
        ext = create_extractor("mean_colour_test", **CPU)
        assert isinstance(ext, MeanColour) and ext.name == "mean_colour_test"
        out = ext.extract(torch.full((2, 16, 16, 3), 51, dtype=torch.uint8))
        np.testing.assert_allclose(out.numpy(), 0.2)
        assert "mean_colour_test" in available_extractors()
    finally:
        unregister_extractor("mean_colour_test")
    assert "mean_colour_test" not in available_extractors()
    with pytest.raises(InputError, match="unknown feature extractor 'mean_colour_test'"):
        create_extractor("mean_colour_test", **CPU)


def test_feature_config_roundtrip() -> None:
    cfg = FeatureConfig(extractor="timm:test_vit", patch_um=150.0, batch_size=8)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown feature settings: bogus"):
        FeatureConfig.from_dict({"bogus": 1})


# ----------------------------------------------------------------- default extractor


def test_default_extractor_describes_stain() -> None:
    ext = create_extractor("default", **CPU)
    assert ext.dim == len(FEATURE_NAMES) == 86 and ext.input_size == 64
    white = np.full((64, 64, 3), 255, np.uint8)
    hema = np.tile(np.array([80, 60, 150], np.uint8), (64, 64, 1))  # purple: nuclei
    eosin = np.tile(np.array([235, 130, 190], np.uint8), (64, 64, 1))  # pink: stroma
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    batch = torch.from_numpy(np.stack([white, hema, eosin, noisy]))
    f = ext.extract(batch).numpy()
    assert f.shape == (4, 86) and f.dtype == np.float32 and np.isfinite(f).all()
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert f[0, col["context_tissue_frac"]] == 0 and f[1, col["context_tissue_frac"]] == 1
    assert f[1, col["centre_hema_mean"]] > f[2, col["centre_hema_mean"]]
    assert f[2, col["centre_eosin_mean"]] > f[1, col["centre_eosin_mean"]]
    assert f[1, col["centre_nuclei_frac_0.25"]] == 1 and f[2, col["centre_nuclei_frac_0.25"]] == 0
    assert f[1, col["centre_hema_ratio"]] > 0.5 > f[2, col["centre_hema_ratio"]]
    # Texture: flat patches have none, noise has lots, at both scales.
    for name in ("grad_grey_s1", "var_grey_s1", "grad_grey_s2", "var_hema_s2"):
        assert f[1, col[f"context_{name}"]] < 1e-3 < f[3, col[f"context_{name}"]]
    # The centre and the context are described separately.
    half = white.copy()
    half[16:48, 16:48] = hema[16:48, 16:48]
    g = ext.extract(torch.from_numpy(half[None])).numpy()[0]
    assert g[col["centre_tissue_frac"]] == 1 and g[col["context_tissue_frac"]] == pytest.approx(0.25)
    # Other patch sizes are resized to the input size.
    assert ext.extract(torch.from_numpy(np.stack([hema] * 2)[:, :50, :50])).shape == (2, 86)


# ----------------------------------------------------------------- timm and uni


def test_timm_random_backbone_is_deterministic(tmp_path: Path) -> None:
    a = create_extractor("timm:test_resnet", **CPU)
    b = create_extractor("timm:test_resnet", **CPU)
    assert a.identity == b.identity and "random-seed0" in a.identity
    patches = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8))
    fa, fb = a.extract(patches), b.extract(patches)
    assert fa.shape == (3, a.dim) and fa.dtype == torch.float32
    torch.testing.assert_close(fa, fb)
    # Local checkpoint: the same weights give the same features, and a new identity.
    ckpt = tmp_path / "w.pth"
    torch.save({"state_dict": a.model.state_dict()}, ckpt)
    c = create_extractor("timm:test_resnet", checkpoint=str(ckpt), **CPU)
    assert c.identity != a.identity and str(ckpt.resolve()) in c.identity
    torch.testing.assert_close(c.extract(patches), fa)


def test_timm_input_size_from_pretrained_cfg() -> None:
    import timm

    ext = create_extractor("timm:test_vit", **CPU)
    assert ext.input_size == timm.get_pretrained_cfg("test_vit").input_size[-1]
    out = ext.extract(torch.zeros((2, ext.input_size, ext.input_size, 3), dtype=torch.uint8))
    assert out.shape == (2, ext.dim)


def test_timm_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.pth.*checkpoint file not found"):
        create_extractor("timm:test_resnet", checkpoint=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    ext = create_extractor("timm:test_resnet", checkpoint=str(wrong), **CPU)
    with pytest.raises(InputError, match=r"wrong\.pth.*does not fit timm model 'test_resnet'.*missing keys"):
        ext.extract(torch.zeros((1, 32, 32, 3), dtype=torch.uint8))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint" * 10)
    ext = create_extractor("timm:test_resnet", checkpoint=str(garbage), **CPU)
    with pytest.raises(InputError, match=r"garbage\.bin.*cannot read checkpoint"):
        ext.extract(torch.zeros((1, 32, 32, 3), dtype=torch.uint8))


def test_uni_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"uni\.bin.*checkpoint file not found"):
        create_extractor("uni", checkpoint=str(tmp_path / "uni.bin"))
    wrong = tmp_path / "wrong_uni.bin"
    torch.save({"pos_embed": torch.zeros(1, 5, 8)}, wrong)
    ext = create_extractor("uni", checkpoint=str(wrong), **CPU)
    assert ext.dim == 1024 and ext.input_size == 224
    with pytest.raises(InputError, match=r"wrong_uni\.bin.*does not fit UNI.*missing keys.*shape mismatch"):
        ext.extract(torch.zeros((1, 224, 224, 3), dtype=torch.uint8))


def test_uni_without_checkpoint_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    ext = create_extractor("uni", **CPU)
    assert ext.identity == "uni|hf-hub:MahmoodLab/uni"
    with pytest.raises(InputError, match="Hugging Face hub.*HF_TOKEN is not set.*local checkpoint"):
        ext.extract(torch.zeros((1, 224, 224, 3), dtype=torch.uint8))


# ----------------------------------------------------------------- extraction + cache


def test_extract_spot_features_cache_and_mean_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "blocks.tif"
    img, colours = _tiles_image(image)
    # Spot centres in the middle of each block, in a coordinate system 2x finer.
    ys, xs = np.mgrid[0:3, 0:4]
    xy = np.column_stack([xs.ravel() * 400 + 200, ys.ravel() * 400 + 200]).astype(float)
    adata = _adata_for(image, xy, diameter=100.0, scale=0.5)
    calls = []
    original = DefaultExtractor.extract
    monkeypatch.setattr(DefaultExtractor, "extract", lambda self, p: calls.append(len(p)) or original(self, p))
    cfg = FeatureConfig(batch_size=5, **CPU)
    events, res = _collect(extract_spot_features(adata, cfg))
    assert isinstance(res, SpotFeatures) and res.features.shape == (12, 86)
    assert calls == [5, 5, 2]
    assert all(isinstance(e, Progress) and e.stage == "features" and e.total == 12 for e in events)
    assert [e.step for e in events] == [0, 5, 10, 12]
    np.testing.assert_allclose(res.mean_rgb, colours.reshape(-1, 3) / 255, atol=1 / 255)
    assert res.identity == create_extractor("default", **CPU).identity  # centre fraction 100/200
    # Second call: loaded from the cache, no extractor call.
    again = run_to_end(extract_spot_features(adata, cfg))
    assert calls == [5, 5, 2]
    np.testing.assert_array_equal(again.features, res.features)
    np.testing.assert_array_equal(again.mean_rgb, res.mean_rgb)
    # A moved spot (beyond 0.01 px rounding) or another patch size is a cache miss.
    adata.obsm["spatial"][0, 0] += 0.5
    run_to_end(extract_spot_features(adata, cfg))
    assert len(calls) == 6
    run_to_end(extract_features_at(image, 0.5, xy, 150.0, cfg))
    assert len(calls) == 9
    # The cache can be turned off.
    run_to_end(extract_features_at(image, 0.5, xy, 150.0, FeatureConfig(cache=False, batch_size=64, **CPU)))
    assert len(calls) == 10


def test_extract_features_at_matches_spots(tmp_path: Path) -> None:
    image = tmp_path / "blocks.tif"
    _tiles_image(image)
    xy = np.array([[100.0, 100.0], [350.5, 420.25], [790.0, 10.0]])
    adata = _adata_for(image, xy, diameter=60.0)
    cfg = FeatureConfig(cache=False, **CPU)
    spots = run_to_end(extract_spot_features(adata, cfg))
    at = run_to_end(extract_features_at(image, 1.0, xy, patch_size_px(adata, cfg), cfg))
    np.testing.assert_allclose(at.features, spots.features, rtol=1e-5, atol=1e-6)
    empty = run_to_end(extract_features_at(image, 1.0, np.zeros((0, 2)), 120.0, cfg))
    assert empty.features.shape == (0, 86) and empty.mean_rgb.shape == (0, 3)


def test_cancel_between_batches(tmp_path: Path) -> None:
    image = tmp_path / "blocks.tif"
    _tiles_image(image)
    xy = np.random.default_rng(0).uniform(0, 600, (20, 2))
    cache = Path(os.environ["HISTOSGE_CACHE"]) / "features"
    before = set(cache.glob("*.npz"))
    token = CancelToken()
    gen = extract_features_at(image, 1.0, xy, 100.0, FeatureConfig(batch_size=4, **CPU), cancel=token)
    next(gen)
    next(gen)
    token.cancel()
    with pytest.raises(CancelledError):
        next(gen)
    assert set(cache.glob("*.npz")) == before  # nothing half-done was cached


def test_patch_size_rules(tmp_path: Path) -> None:
    image = tmp_path / "blocks.tif"
    _tiles_image(image)
    adata = _adata_for(image, np.zeros((1, 2)), diameter=80.0)
    assert patch_size_px(adata, FeatureConfig()) == 160.0
    assert patch_size_px(adata, FeatureConfig(patch_spot_fraction=3)) == 240.0
    assert patch_size_px(adata, FeatureConfig(patch_um=100.0)) == 160.0  # mpp unknown
    adata.uns["histosge"]["mpp"] = 0.5
    assert patch_size_px(adata, FeatureConfig(patch_um=100.0)) == 200.0
    assert spot_center_fraction(adata, FeatureConfig(patch_um=100.0)) == pytest.approx(0.4)
    assert spot_center_fraction(adata, FeatureConfig(patch_um=10.0)) == 1.0
    adata.uns["histosge"]["spot_diameter_px"] = None
    with pytest.raises(InputError, match="spot diameter is unknown"):
        patch_size_px(adata, FeatureConfig())


def test_bad_inputs(tmp_path: Path) -> None:
    image = tmp_path / "blocks.tif"
    _tiles_image(image)
    adata = _adata_for(image, np.zeros((2, 2)), 50.0)
    adata.uns["histosge"]["images"] = {}
    adata.uns["histosge"]["image"] = None
    with pytest.raises(InputError, match=rf"{tmp_path.name}.*no histology image"):
        run_to_end(extract_spot_features(adata, FeatureConfig(**CPU)))
    cfg = FeatureConfig(**CPU)
    with pytest.raises(InputError, match=r"gone\.tif.*not found"):
        run_to_end(extract_features_at(tmp_path / "gone.tif", 1.0, np.zeros((2, 2)), 50.0, cfg))
    with pytest.raises(InputError, match=r"\(n, 2\)"):
        run_to_end(extract_features_at(image, 1.0, np.zeros((2, 3)), 50.0, cfg))
    with pytest.raises(InputError, match="NaN"):
        run_to_end(extract_features_at(image, 1.0, np.full((2, 2), np.nan), 50.0, cfg))
    with pytest.raises(InputError, match="patch size must be positive"):
        run_to_end(extract_features_at(image, 1.0, np.zeros((2, 2)), 0.0, cfg))
    with pytest.raises(InputError, match="unknown device"):
        run_to_end(extract_features_at(image, 1.0, np.zeros((2, 2)), 50.0, FeatureConfig(device="tpu")))


# ----------------------------------------------------------------- real signal


def _her2st_adata(section: Path) -> tuple[ad.AnnData, np.ndarray]:
    from scipy.spatial import cKDTree

    name = section.name
    counts = pd.read_csv(section / f"{name}.tsv.gz", sep="\t", index_col=0)
    sel = pd.read_csv(section / f"{name}_selection.tsv", sep="\t")
    sel.index = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"], strict=True)]
    common = counts.index.intersection(sel.index)
    counts, sel = counts.loc[common], sel.loc[common]
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(float)
    spacing = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    adata = _adata_for(next(section.glob("*.jpg")), xy, diameter=spacing / 2)  # 100 um spots, 200 um grid
    return adata, counts.to_numpy(np.float64)


@pytest.mark.slow
def test_default_features_predict_expression_her2st(her2st_b4: Path) -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    adata, counts = _her2st_adata(her2st_b4)
    feats = run_to_end(extract_spot_features(adata, FeatureConfig(**CPU))).features
    assert feats.shape == (len(counts), 86) and np.isfinite(feats).all()
    logn = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    y = logn[:, np.argsort(logn.mean(0))[::-1][:50]]

    def mean_pcc(x: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 4, 12)))
        pred = cross_val_predict(model, x, y, cv=KFold(5, shuffle=True, random_state=0))
        return float(np.mean([np.corrcoef(pred[:, j], y[:, j])[0, 1] for j in range(y.shape[1])]))

    real = mean_pcc(feats)
    shuffled = [mean_pcc(feats[np.random.default_rng(s).permutation(len(feats))]) for s in range(2)]
    assert real > 0.2, real
    assert real > max(shuffled) + 0.2, (real, shuffled)
