"""Patch feature extraction around spots or arbitrary positions, with caching."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelToken, Progress, ProgressGenerator
from .cache import feature_cache_key, load_cached, save_cached
from .registry import create_extractor


@dataclass
class FeatureConfig:
    """How to extract patch features.

    Parameters
    ----------
    extractor
        Extractor spec: ``"default"``, ``"uni"`` or ``"timm:<model_name>"``.
    checkpoint
        Optional local weights file for the extractor.
    patch_um
        Patch edge in micrometres; used when the image's microns-per-pixel is known.
    patch_spot_fraction
        Patch edge as a multiple of the spot diameter, used when ``patch_um`` is
        None or the pixel size is unknown.
    batch_size
        Patches per batch.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    cache
        Reuse/write the on-disk feature cache.
    """

    extractor: str = "default"
    checkpoint: str | None = None
    patch_um: float | None = None
    patch_spot_fraction: float = 2.0
    batch_size: int = 64
    device: str = "auto"
    cache: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise InputError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown feature settings: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class SpotFeatures:
    """Features of a set of patches.

    Attributes
    ----------
    features
        float32 ``(n, dim)``.
    mean_rgb
        float32 ``(n, 3)`` in [0, 1]: mean colour of the spot-sized centre of each patch.
    identity
        The extractor identity that produced them.
    """

    features: np.ndarray
    mean_rgb: np.ndarray
    identity: str


def _spot_image(adata: Any) -> tuple[str, float]:
    """``(path, scale)`` of the largest image attached to ``adata``."""
    try:
        from ..io import spot_image  # written by a colleague; may not exist yet
    except ImportError:
        spot_image = None
    source = None
    info = adata.uns.get("histosge", {}) if hasattr(adata, "uns") else {}
    source = info.get("source")
    if spot_image is not None:
        found = spot_image(adata)
    else:
        name = info.get("image")
        images = info.get("images") or {}
        found = (images[name]["path"], images[name]["scale"]) if name in images else None
    if not found or not found[0]:
        raise InputError("no histology image is attached to these spots", source)
    return str(found[0]), float(found[1])


def patch_size_px(adata: Any, config: FeatureConfig) -> float:
    """Patch edge in full-res px for ``adata``'s spots.

    ``config.patch_um`` is used when micrometres per full-res pixel are known
    (``uns["histosge"]["mpp"]``); otherwise the patch is
    ``config.patch_spot_fraction`` spot diameters wide.

    Raises
    ------
    InputError
        If neither a pixel size (with ``patch_um``) nor the spot diameter is known.
    """
    info = adata.uns.get("histosge", {})
    mpp = info.get("mpp")
    if config.patch_um is not None and mpp:
        return float(config.patch_um) / float(mpp)
    diameter = info.get("spot_diameter_px")
    if not diameter or diameter <= 0:
        raise InputError(
            "spot diameter is unknown, so the patch size cannot be derived; set patch_um",
            info.get("source"),
        )
    return float(config.patch_spot_fraction) * float(diameter)


def spot_center_fraction(adata: Any, config: FeatureConfig) -> float:
    """Share of the patch edge covered by one spot (spot diameter / patch edge, at most 1)."""
    diameter = adata.uns.get("histosge", {}).get("spot_diameter_px")
    if not diameter:
        return min(1.0, 1.0 / config.patch_spot_fraction)
    return min(1.0, float(diameter) / patch_size_px(adata, config))


def extract_spot_features(
    adata: Any, config: FeatureConfig, *, cancel: CancelToken | None = None
) -> ProgressGenerator[SpotFeatures]:
    """Features of the patches around ``adata``'s own spots.

    Parameters
    ----------
    adata
        Spot AnnData (``obsm["spatial"]`` in full-res px, ``uns["histosge"]``).
    config
        Extraction settings.
    cancel
        Checked between batches.

    Yields
    ------
    Progress
        ``stage="features"``, one per batch.

    Returns
    -------
    SpotFeatures
    """
    path, scale = _spot_image(adata)
    size = patch_size_px(adata, config)
    fraction = spot_center_fraction(adata, config)
    centers = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    return (yield from _extract(path, scale, centers, size, config, fraction, cancel))


def extract_features_at(
    image_path: str | os.PathLike,
    scale: float,
    centers_xy: np.ndarray,
    patch_size_px: float,
    config: FeatureConfig,
    *,
    cancel: CancelToken | None = None,
    center_fraction: float | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Features of patches at arbitrary positions (e.g. a denser lattice).

    Parameters
    ----------
    image_path
        The slide.
    scale
        Slide level-0 px per full-res px.
    centers_xy
        ``(n, 2)`` centres ``(x, y)`` in full-res px.
    patch_size_px
        Patch edge in full-res px.
    config
        Extraction settings.
    cancel
        Checked between batches.
    center_fraction
        Share of the patch edge that is the spot; default ``1 / config.patch_spot_fraction``.
        Pass :func:`spot_center_fraction` of the training data to get features
        comparable with :func:`extract_spot_features`.

    Returns
    -------
    SpotFeatures
    """
    if image_path is None:
        raise InputError("no histology image given for feature extraction")
    fraction = center_fraction if center_fraction is not None else 1.0 / config.patch_spot_fraction
    centers = np.asarray(centers_xy, dtype=np.float64)
    return (yield from _extract(str(image_path), float(scale), centers, float(patch_size_px), config,
                                min(1.0, float(fraction)), cancel))


def _centre_mean_rgb(patches: np.ndarray, fraction: float) -> np.ndarray:
    s = patches.shape[1]
    c = max(1, int(round(s * fraction)))
    a = (s - c) // 2
    return patches[:, a : a + c, a : a + c].mean(axis=(1, 2), dtype=np.float64).astype(np.float32) / 255.0


def _extract(
    path: str,
    scale: float,
    centers: np.ndarray,
    size: float,
    config: FeatureConfig,
    fraction: float,
    cancel: CancelToken | None,
) -> ProgressGenerator[SpotFeatures]:
    import torch

    from ..slide import open_slide

    if centers.ndim != 2 or centers.shape[1] != 2:
        raise InputError(f"patch centres must be an (n, 2) array, got shape {centers.shape}", path)
    if not np.isfinite(centers).all():
        raise InputError("patch centres contain NaN or infinite values", path)
    if not np.isfinite(size) or size <= 0:
        raise InputError(f"patch size must be positive, got {size}", path)
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(f"image scale must be positive, got {scale}", path)
    if not os.path.isfile(path):
        raise InputError("image file not found", path)

    extractor = create_extractor(config.extractor, checkpoint=config.checkpoint, device=config.device)
    extractor.center_fraction = fraction
    n = len(centers)
    key = feature_cache_key(path, scale, centers, size, extractor.input_size, extractor.identity, fraction)
    if config.cache:
        hit = load_cached(key)
        if hit is not None and hit["features"].shape[0] == n:
            yield Progress("features", n, n, "loaded from cache")
            return SpotFeatures(hit["features"], hit["mean_rgb"], str(hit["identity"]))

    batch = max(1, int(config.batch_size))
    feats: list[np.ndarray] = []
    rgbs: list[np.ndarray] = []
    yield Progress("features", 0, n, f"{extractor.identity}")
    with open_slide(path) as slide, ThreadPoolExecutor(max_workers=1) as pool:
        def read(i: int) -> np.ndarray:
            return slide.read_patches(centers[i : i + batch], size, extractor.input_size, scale=scale)

        # Read the next batch in a thread while the current one is processed.
        pending = pool.submit(read, 0) if n else None
        for start in range(0, n, batch):
            if cancel is not None:
                cancel.raise_if_cancelled()
            patches = pending.result()
            nxt = start + batch
            pending = pool.submit(read, nxt) if nxt < n else None
            out = extractor.extract(torch.from_numpy(patches))
            feats.append(out.detach().cpu().numpy().astype(np.float32, copy=False))
            rgbs.append(_centre_mean_rgb(patches, fraction))
            yield Progress("features", min(nxt, n), n)
    dim = feats[0].shape[1] if feats else extractor.dim
    result = SpotFeatures(
        np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        np.concatenate(rgbs) if rgbs else np.zeros((0, 3), np.float32),
        extractor.identity,
    )
    if config.cache:
        save_cached(key, features=result.features, mean_rgb=result.mean_rgb, identity=np.array(result.identity))
    return result
