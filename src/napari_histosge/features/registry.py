"""Create feature extractors from spec strings.

Adding an extractor is adding one class decorated with :func:`register_extractor`.
Specs are either a registered name (``"default"``, ``"uni"``) or a family prefix
(``"timm:<model_name>"``) whose class takes the part after the colon.
"""

from __future__ import annotations

from ..device import pick_device
from ..errors import InputError

# Importing the built-in extractor modules runs their @register_extractor decorators.
from . import default, timm_backbones  # noqa: F401
from .base import FeatureExtractor, register_extractor, registered_extractors, unregister_extractor

__all__ = [
    "FeatureExtractor",
    "available_extractors",
    "create_extractor",
    "register_extractor",
    "unregister_extractor",
]


def available_extractors() -> list[str]:
    """Registered extractor specs; families are shown as ``"timm:<model_name>"``."""
    return [f"{k}<model_name>" if k.endswith(":") else k for k in sorted(registered_extractors())]


def create_extractor(spec: str, *, checkpoint: str | None = None, device: str = "auto") -> FeatureExtractor:
    """Create an extractor from a spec string.

    Parameters
    ----------
    spec
        ``"default"``, ``"uni"`` or ``"timm:<model_name>"``.
    checkpoint
        Optional local weights file.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ... (see :func:`napari_histosge.device.pick_device`).

    Returns
    -------
    FeatureExtractor
        The extractor, on the picked device.

    Raises
    ------
    InputError
        For an unknown spec, an unknown timm model, or a missing checkpoint.
    """
    registry = registered_extractors()
    spec = str(spec).strip()
    family, _, arg = spec.partition(":")
    if spec in registry and not spec.endswith(":"):
        cls, name = registry[spec], None
    elif arg and family + ":" in registry:
        cls, name = registry[family + ":"], arg
    else:
        raise InputError(f"unknown feature extractor {spec!r}; choose one of {', '.join(available_extractors())}")
    return cls(name, checkpoint=checkpoint, device=pick_device(device))
