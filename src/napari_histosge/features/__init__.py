"""Patch features around spots: extractor registry, extractors and cache.

Built-in extractors: ``default`` (weight-free colour/texture descriptors),
``uni`` (UNI ViT-L/16 from a local checkpoint or the Hugging Face hub) and
``timm:<model_name>`` (any timm backbone) and ``hf:<org>/<name>`` (a timm model of the
Hugging Face hub, from a local copy of its folder or the hub).
"""

from __future__ import annotations

from .extract import (
    FeatureConfig,
    SpotFeatures,
    extract_features_at,
    extract_spot_features,
    patch_size_px,
    spot_center_fraction,
)
from .registry import (
    FeatureExtractor,
    available_extractors,
    check_extractor,
    create_extractor,
    register_extractor,
    unregister_extractor,
)

__all__ = [
    "FeatureConfig",
    "FeatureExtractor",
    "SpotFeatures",
    "available_extractors",
    "check_extractor",
    "create_extractor",
    "extract_features_at",
    "extract_spot_features",
    "patch_size_px",
    "register_extractor",
    "spot_center_fraction",
    "unregister_extractor",
]
