"""Patch feature extraction around spots or arbitrary positions, with caching."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import require_spot_image
from ..progress import CancelToken, Progress, ProgressGenerator
from ..slide.open import open_slide
from .cache import feature_cache_key, load_cached, save_cached
from .config import FeatureConfig
from .registry import create_extractor
from .stain import StainNormaliser, estimate_stains


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
    path, scale = require_spot_image(adata)
    size = patch_size_px(adata, config)
    fraction = spot_center_fraction(adata, config)
    centers = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    mpp = adata.uns.get("histosge", {}).get("mpp")
    return (yield from _extract(path, scale, centers, size, config, fraction, cancel, patch_um_of(size, mpp)))


def extract_features_at(
    image_path: str | os.PathLike,
    scale: float,
    centers_xy: np.ndarray,
    patch_size_px: float,
    config: FeatureConfig,
    *,
    cancel: CancelToken | None = None,
    center_fraction: float | None = None,
    mpp: float | None = None,
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
    mpp
        Micrometres per full-res pixel, where known; extractors that measure in micrometres
        (``nuclei``) need it.

    Returns
    -------
    SpotFeatures
    """
    if image_path is None:
        raise InputError("no histology image given for feature extraction")
    fraction = center_fraction if center_fraction is not None else 1.0 / config.patch_spot_fraction
    centers = np.asarray(centers_xy, dtype=np.float64)
    return (yield from _extract(str(image_path), float(scale), centers, float(patch_size_px), config,
                                min(1.0, float(fraction)), cancel, patch_um_of(patch_size_px, mpp)))


def patch_um_of(patch_px: float, mpp: float | None) -> float | None:
    """Patch edge in µm from its edge in full-res px and the pixel size (``None`` where unknown)."""
    return float(patch_px) * float(mpp) if mpp else None


def slide_normaliser(path: str, config: FeatureConfig) -> StainNormaliser | None:
    """The stain normaliser ``config`` asks for on slide ``path`` (estimated now), else ``None``."""
    return estimate_stains(path) if config.stain == "macenko" else None


def _centre_mean_rgb(patches: np.ndarray, fraction: float) -> np.ndarray:
    s = patches.shape[1]
    c = max(1, int(round(s * fraction)))
    a = (s - c) // 2
    return patches[:, a : a + c, a : a + c].mean(axis=(1, 2), dtype=np.float64).astype(np.float32) / 255.0


def spatial_order(centers: np.ndarray, patch_px: float) -> np.ndarray:
    """Visiting order of patches: bands of rows, left to right, so batches share tiles.

    Parameters
    ----------
    centers
        ``(n, 2)`` patch centres ``(x, y)``.
    patch_px
        Patch edge in the same units; bands are four patches high.
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    band = np.floor(centers[:, 1] / max(4.0 * float(patch_px), 1e-9))
    return np.lexsort((centers[:, 0], band))


def _validate(path: str, scale: float, centers: np.ndarray, size: float) -> None:
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


def make_extractor(config: FeatureConfig, fraction: float, patch_um: float | None = None) -> tuple[Any, Any]:
    """The extractor of ``config`` and its autocast dtype (None: full precision).

    ``patch_um`` is the patch edge in micrometres, where the slide's pixel size is known.

    Raises
    ------
    InputError
        If the extractor measures in micrometres and ``patch_um`` is unknown.
    """
    import torch

    extractor = create_extractor(config.extractor, checkpoint=config.checkpoint, device=config.device)
    extractor.center_fraction = fraction
    extractor.patch_um = patch_um
    if extractor.needs_pixel_size and not patch_um:
        raise InputError(f"the {config.extractor!r} extractor measures in micrometres and needs the slide's pixel "
                         "size, which the data does not record; choose another extractor")
    amp_dtype = None
    if config.amp and extractor.device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return extractor, amp_dtype


def cache_identity(extractor: Any, amp_dtype: Any, stain: str = "none") -> str:
    """Cache-key identity: the extractor's, plus the reduced precision when AMP is on and the stain normalisation."""
    return (extractor.identity + (f"|amp-{str(amp_dtype).removeprefix('torch.')}" if amp_dtype else "")
            + (f"|stain-{stain}" if stain != "none" else ""))


def with_cache(
    path: str,
    scale: float,
    centers: np.ndarray,
    size: float,
    config: FeatureConfig,
    fraction: float,
    compute: Callable[[Any, Any], ProgressGenerator[SpotFeatures]],
    patch_um: float | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Validate, look the features up in the on-disk cache, else ``compute(extractor, amp_dtype)``.

    The single-process and the distributed paths differ only in ``compute``, so they share
    one cache key and one cache policy. ``patch_um``: as in :func:`make_extractor`.
    """
    _validate(path, scale, centers, size)
    extractor, amp_dtype = make_extractor(config, fraction, patch_um)
    n = len(centers)
    identity = cache_identity(extractor, amp_dtype, config.stain)
    if extractor.needs_pixel_size:  # the same pixels measured at another stated pixel size are other features
        identity += f"|um{patch_um:.6g}"
    key = feature_cache_key(path, scale, centers, size, extractor.input_size, identity, fraction)
    if config.cache:
        hit = load_cached(key)
        if hit is not None and hit["features"].shape[0] == n:
            yield Progress("features", n, n, "loaded from cache")
            return SpotFeatures(hit["features"], hit["mean_rgb"], str(hit["identity"]))
    result = yield from compute(extractor, amp_dtype)
    if config.cache:
        save_cached(key, features=result.features, mean_rgb=result.mean_rgb, identity=np.array(result.identity))
    return result


def _extract(
    path: str,
    scale: float,
    centers: np.ndarray,
    size: float,
    config: FeatureConfig,
    fraction: float,
    cancel: CancelToken | None,
    patch_um: float | None,
) -> ProgressGenerator[SpotFeatures]:
    def compute(extractor, amp_dtype):
        return compute_features(path, scale, centers, size, extractor, config.batch_size, fraction, cancel,
                                order=spatial_order(centers, size), amp_dtype=amp_dtype,
                                normalise=slide_normaliser(path, config))

    return (yield from with_cache(path, scale, centers, size, config, fraction, compute, patch_um))


def compute_features(
    path: str,
    scale: float,
    centers: np.ndarray,
    size: float,
    extractor: Any,
    batch_size: int,
    fraction: float,
    cancel: CancelToken | None = None,
    *,
    order: np.ndarray | None = None,
    amp_dtype: Any = None,
    prefetch: int = 2,
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Run ``extractor`` over patches (no cache), overlapping reading with compute.

    A background thread reads the next ``prefetch`` batches (tiles decoded once,
    in parallel) while the current batch runs through the network under
    ``torch.inference_mode`` (and autocast + channels-last on CUDA).

    Parameters
    ----------
    path, scale, centers, size
        Slide, level-0 px per full-res px, ``(n, 2)`` centres and patch edge (full-res px).
    extractor
        A created :class:`~napari_histosge.features.registry.FeatureExtractor`.
    batch_size
        Patches per batch.
    fraction
        Spot share of the patch edge (for ``mean_rgb``).
    cancel
        Checked between batches.
    order
        Visiting order (batches are consecutive runs of it); default input order.
        Results are always returned in input order.
    amp_dtype
        Autocast dtype on CUDA, or None.
    prefetch
        Batches read ahead.
    normalise
        Applied to each batch of uint8 patches as read (e.g. a :class:`.stain.StainNormaliser`).

    Returns
    -------
    SpotFeatures
    """
    import torch

    n = len(centers)
    order = np.arange(n) if order is None else np.asarray(order)
    batch = max(1, int(batch_size))
    cuda = extractor.device.type == "cuda"
    if cuda and amp_dtype is not None and getattr(extractor, "model", None) is not None:
        extractor.model.to(memory_format=torch.channels_last)  # faster convolutions under AMP
    feats: np.ndarray | None = None
    rgbs = np.zeros((n, 3), np.float32)
    yield Progress("features", 0, n, f"{extractor.identity}")
    starts = list(range(0, n, batch))
    with open_slide(path) as slide, ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        def read(start: int) -> Any:
            patches = slide.read_patches(centers[order[start : start + batch]], size, extractor.input_size,
                                         scale=scale)
            if normalise is not None:
                patches = normalise(patches)
            t = torch.from_numpy(patches)
            return patches, (t.pin_memory() if cuda else t)

        pending = [pool.submit(read, s) for s in starts[:prefetch]]
        for j, start in enumerate(starts):
            if cancel is not None:
                cancel.raise_if_cancelled()
            patches, tensor = pending.pop(0).result()
            if j + prefetch < len(starts):
                pending.append(pool.submit(read, starts[j + prefetch]))
            idx = order[start : start + batch]
            tensor = tensor.to(extractor.device, non_blocking=cuda)
            if amp_dtype is not None:
                with torch.autocast("cuda", dtype=amp_dtype):
                    out = extractor.extract(tensor)
            else:
                out = extractor.extract(tensor)
            out = out.float().cpu().numpy()
            if feats is None:
                feats = np.empty((n, out.shape[1]), np.float32)
            feats[idx] = out
            rgbs[idx] = _centre_mean_rgb(patches, fraction)
            yield Progress("features", min(start + batch, n), n)
    if feats is None:
        feats = np.zeros((0, extractor.dim), np.float32)
    return SpotFeatures(feats, rgbs, extractor.identity)
