"""Create feature extractors from spec strings.

Adding an extractor is adding one class decorated with :func:`register_extractor`.
Specs are either a registered name (``"default"``, ``"uni"``, ``"nuclei"``) or a family prefix
(``"timm:<model_name>"``, ``"hf:<org>/<name>"``) whose class takes the part after the colon;
specs joined by ``"+"`` (``"default+nuclei"``) concatenate their extractors' features.
:func:`check_extractor` is the one check of a spec and its weights that the command line and
the Train widget both run before any slide is read.
"""

from __future__ import annotations

from pathlib import Path

from ..device import pick_device
from ..errors import InputError

# Importing the built-in extractor modules runs their @register_extractor decorators.
from . import default, hub, morphometrics, timm_backbones  # noqa: F401
from .base import FeatureExtractor, register_extractor, registered_extractors, unregister_extractor
from .combined import CombinedExtractor

__all__ = [
    "FeatureExtractor",
    "available_extractors",
    "check_extractor",
    "create_extractor",
    "register_extractor",
    "unregister_extractor",
]


def available_extractors() -> list[str]:
    """Registered extractor specs; families are shown as ``"timm:<model_name>"`` and ``"hf:<org>/<name>"``."""
    return [f"{k}<org>/<name>" if hub.is_hub_spec(k) else f"{k}<model_name>" if k.endswith(":") else k
            for k in sorted(registered_extractors())] + ["<spec>+<spec>"]


def create_extractor(spec: str, *, checkpoint: str | None = None, device: str = "auto") -> FeatureExtractor:
    """Create an extractor from a spec string.

    Parameters
    ----------
    spec
        ``"default"``, ``"uni"``, ``"nuclei"``, ``"timm:<model_name>"`` or ``"hf:<org>/<name>"``
        (also timm's ``"hf-hub:<org>/<name>"``); several joined by ``"+"`` concatenate their
        features (``"default+nuclei"``).
    checkpoint
        Optional local weights file; for a hub model the folder holding the hub's files
        (in a ``"+"`` spec, for the parts that take weights).
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
    if "+" in spec:
        parts = [p.strip() for p in spec.split("+")]
        if len(parts) != len(set(parts)) or not all(parts):
            raise InputError(f"a combined extractor names each part once, none empty: {spec!r}")
        # Extractors without weights ignore a checkpoint: the weights go to the part that takes them.
        return CombinedExtractor([create_extractor(p, checkpoint=checkpoint, device=device) for p in parts])
    family, _, arg = spec.partition(":")
    if spec in registry and not spec.endswith(":"):
        cls, name = registry[spec], None
    elif arg and family + ":" in registry:
        cls, name = registry[family + ":"], arg
    else:
        raise InputError(f"unknown feature extractor {spec!r}; choose one of {', '.join(available_extractors())}")
    return cls(name, checkpoint=checkpoint, device=pick_device(device))


def check_extractor(spec: str, weights: str | None) -> None:
    """Refuse, in one line, an extractor and weights that cannot load; reads no slide.

    Parameters
    ----------
    spec
        As in :func:`create_extractor` (``"none"``: image features off, nothing to check).
    weights
        The weights given: a file (UNI, timm), a hub model's folder (``hf:``), or ``None``.

    Raises
    ------
    InputError
        A missing weights file; a hub folder without ``config.json`` or weights, or whose
        weights do not fit its architecture; a hub model or UNI that is neither on this
        machine nor reachable on the hub.
    """
    spec = str(spec).strip()
    if hub.is_hub_spec(spec):
        hub.check_hub_model(spec, weights)
        return
    if weights is not None and not Path(weights).expanduser().is_file():
        what = "is a folder: a folder of hub files goes with hf:<org>/<name>" if Path(weights).is_dir() else \
            "does not exist"
        raise InputError(f"the extractor weights file {what}", weights)
    if spec == "uni" and weights is None:
        timm_backbones.uni_weights_source()  # offline without cached weights: one line now, not retries later
