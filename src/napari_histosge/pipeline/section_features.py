"""Image features of a section's own spots, and what a model keeps about the section it is trained on.

:func:`spot_features` extracts (here or on dask.distributed) or, with image features off,
returns empty ones; :func:`model_meta` is the section's part of a checkpoint's metadata.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..features import FeatureConfig, SpotFeatures, extract_spot_features, patch_size_px, spot_center_fraction
from ..io import require_spot_image, spot_image
from ..io.preprocess import TARGET_SUM
from ..prediction.distributed import extract_features_distributed
from ..progress import CancelToken, ProgressGenerator
from ..training.model_meta import ModelMeta
from .placement import section_box

#: ``FeatureConfig.extractor`` value that switches image features off (the ablation).
NO_IMAGE = "none"


def spot_features(
    adata,
    config: FeatureConfig,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Image features for ``adata``'s own spots, or empty ones when image features are off.

    Parameters
    ----------
    scheduler
        ``None`` extracts in this process; ``"local"`` starts a dask LocalCluster; any other
        value is a dask.distributed scheduler address (e.g. ``tcp://host:8786``). Results are
        identical either way.
    n_workers
        Workers of the LocalCluster (``scheduler="local"`` only).
    """
    if config.extractor == NO_IMAGE:
        return no_image_features(adata.n_obs)
    warn_if_low_resolution(adata)
    if scheduler is None:
        return (yield from extract_spot_features(adata, config, cancel=cancel))
    path, scale = require_spot_image(adata)
    return (yield from distributed_features(
        path, scale, np.asarray(adata.obsm["spatial"], np.float64), patch_size_px(adata, config), config,
        spot_center_fraction(adata, config), scheduler, n_workers, cancel, mpp=adata.uns.get("histosge", {}).get("mpp"),
    ))


#: Fewer image pixels than this across a spot: the image shows colour, hardly any morphology.
LOW_RESOLUTION_PX = 16


def image_pixels_per_spot(adata) -> float | None:
    """Image pixels across one spot in the image features are cut from (``None`` if unknown)."""
    image = spot_image(adata)
    diameter = adata.uns.get("histosge", {}).get("spot_diameter_px")
    if image is None or not diameter:
        return None
    return float(diameter) * image[1]


def warn_if_low_resolution(adata) -> None:
    """Warn when the only image is too coarse for image features to say much (e.g. a Visium low-res PNG)."""
    px = image_pixels_per_spot(adata)
    if px is not None and px < LOW_RESOLUTION_PX:
        source = adata.uns.get("histosge", {}).get("source", "the data")
        warnings.warn(
            f"{source}: the image has only {px:.0f} px across a spot, so image features carry little "
            "beyond colour; attach the full-resolution H&E (--image) or compare with --extractor none "
            "(docs/benchmarks.md: on DLPFC's low-res image they raised the most expressed genes' "
            "held-out accuracy but slightly lowered the variable genes')",
            UserWarning, stacklevel=3,
        )


def distributed_features(path, scale, centers, patch_px, config, center_fraction, scheduler, n_workers, cancel,
                         mpp=None):
    """Features at ``centers`` on dask.distributed (``scheduler`` ``"local"`` or an address; ``mpp`` where known)."""
    return (yield from extract_features_distributed(
        path, scale, centers, patch_px, config, scheduler=None if scheduler == "local" else scheduler,
        n_workers=n_workers, center_fraction=center_fraction, cancel=cancel, mpp=mpp,
    ))


def no_image_features(n: int) -> SpotFeatures:
    """Zero-width features and a constant colour for ``n`` positions: the model sees positions only."""
    return SpotFeatures(
        features=np.zeros((n, 0), np.float32), mean_rgb=np.zeros((n, 3), np.float32), identity=NO_IMAGE
    )


def section_record(adata, feature_config: FeatureConfig) -> dict[str, Any]:
    """What a model keeps about one section it is trained on: patch, spot, pixel size, platform, source, box.

    The entries are :class:`~napari_histosge.training.model_meta.ModelMeta`'s of the same
    names; a model trained on several sections keeps one record each in ``meta.sections``.
    """
    info = adata.uns.get("histosge", {})
    return {
        "patch_size_px": patch_size_px(adata, feature_config),
        "center_fraction": spot_center_fraction(adata, feature_config),
        "spot_diameter_px": float(info.get("spot_diameter_px", np.nan)),
        "mpp": info.get("mpp"),
        "platform": info.get("platform", "unknown"),
        "lattice": info.get("lattice"),
        "source": str(info.get("source", "")),
        "section_box": section_box(adata),
    }


def model_meta(adata, feature_config: FeatureConfig) -> ModelMeta:
    """What a model keeps about the section it is trained on: feature settings, normalisation and its record."""
    return ModelMeta.from_dict({"features": feature_config.to_dict(), "normalisation": {"target_sum": TARGET_SUM,
                                "log1p": True}, **section_record(adata, feature_config)})


#: What the platforms are called in messages.
PLATFORM_NAMES = {"st_v1": "ST v1", "visium": "Visium", "visium_hd": "Visium HD"}
#: Spot diameters (µm) that differ by more than this factor are called different.
SPOT_SIZE_TOLERANCE = 1.25


def _spot_um(part: dict[str, Any]) -> float | None:
    try:
        size = float(part.get("spot_diameter_px") or np.nan) * float(part.get("mpp") or np.nan)
    except (TypeError, ValueError):
        return None
    return size if np.isfinite(size) and size > 0 else None


def warn_if_other_platform(meta: ModelMeta, adata) -> None:
    """Warn when a model predicts on another platform than it was trained on, or on spots of another size.

    ``meta`` is the model's (:func:`model_meta`, one entry per section for several); the
    platform and the spot diameter in µm of ``adata`` are compared with the training
    sections'. Unknown platforms (a bare ``.h5ad``, a slide) are not compared.
    """
    info = adata.uns.get("histosge", {})
    trained = meta.sections or [meta.to_dict()]
    platforms = sorted({str(t.get("platform")) for t in trained} - {"unknown", "slide", "None"})
    here = str(info.get("platform"))
    sizes = [s for s in (_spot_um(t) for t in trained) if s is not None]
    size_here = _spot_um(info)
    other_platform = bool(platforms) and here in PLATFORM_NAMES and here not in platforms
    other_size = bool(sizes) and size_here is not None and not any(
        1 / SPOT_SIZE_TOLERANCE <= size_here / s <= SPOT_SIZE_TOLERANCE for s in sizes)
    if not (other_platform or other_size):
        return
    names = " and ".join(PLATFORM_NAMES.get(p, p) for p in platforms) or "other"
    trained_um = " or ".join(f"{s:.0f}" for s in sorted(set(np.round(sizes)))) if sizes else "?"
    here_um = f"{size_here:.0f}" if size_here is not None else "?"
    warnings.warn(
        f"{info.get('source', 'the data')}: the model was trained on {names} spots of {trained_um} µm but this "
        f"section is {PLATFORM_NAMES.get(here, here)} with spots of {here_um} µm; expression per spot and the "
        "image around it differ between platforms, so expect less accurate predictions (train on this platform)",
        UserWarning, stacklevel=2,
    )
