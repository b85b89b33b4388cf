"""Patch features around spots: extractor registry, extractors and cache.

Built-in extractors: ``default`` (weight-free colour/texture descriptors),
``uni`` (UNI ViT-L/16 from a local checkpoint or the Hugging Face hub) and
``timm:<model_name>`` (any timm backbone) and ``hf:<org>/<name>`` (a timm model of the
Hugging Face hub, from a local copy of its folder or the hub).

:class:`FeatureConfig` loads with this package; the extraction code on first use of one of
its names, so the command line builds its flags from the settings without loading the
image libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import FeatureConfig

if TYPE_CHECKING:
    from .extract import (
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

#: The module of each name loaded on first use.
_LAZY = {
    **dict.fromkeys(("SpotFeatures", "extract_features_at", "extract_spot_features", "patch_size_px",
                     "spot_center_fraction"), "extract"),
    **dict.fromkeys(("FeatureExtractor", "available_extractors", "check_extractor", "create_extractor",
                     "register_extractor", "unregister_extractor"), "registry"),
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
