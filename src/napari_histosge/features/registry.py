"""Feature extractor base class and registry.

Adding an extractor is adding one class decorated with :func:`register_extractor`.
Specs are either a registered name (``"default"``, ``"uni"``) or a family prefix
(``"timm:<model_name>"``) whose class takes the part after the colon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import InputError

_REGISTRY: dict[str, type[FeatureExtractor]] = {}
E = TypeVar("E", bound="type[FeatureExtractor]")


class FeatureExtractor:
    """Base class: turns uint8 RGB patches into float32 feature vectors.

    Attributes
    ----------
    name
        Registered name.
    dim
        Length of a feature vector.
    input_size
        Patch edge (px) the extractor expects; patches are read at this size.
    identity
        Stable string naming the extractor and its weights (used in cache keys).
    center_fraction
        Share of the patch edge covered by the spot itself; extractors that
        describe the spot and its context separately use it.
    """

    name: str = ""
    dim: int = 0
    input_size: int = 224
    center_fraction: float = 0.5

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        import torch

        self.arg = arg
        self.checkpoint = checkpoint
        self.device = torch.device(device)

    @property
    def identity(self) -> str:
        return self.name

    def extract(self, patches: Any) -> Any:
        """Features of a batch.

        Parameters
        ----------
        patches
            ``torch.Tensor`` uint8 ``(n, H, W, 3)`` on any device.

        Returns
        -------
        torch.Tensor
            float32 ``(n, dim)`` on the extractor's device.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, device={self.device})"


def register_extractor(name: str) -> Callable[[E], E]:
    """Class decorator registering a :class:`FeatureExtractor` under ``name``.

    A name ending in ``":"`` (e.g. ``"timm:"``) registers a family: the spec
    ``"timm:resnet18"`` creates the class with ``arg="resnet18"``.
    """

    def decorator(cls: E) -> E:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"feature extractor {name!r} is already registered")
        _REGISTRY[name] = cls
        if not cls.name:
            cls.name = name.rstrip(":")
        return cls

    return decorator


def available_extractors() -> list[str]:
    """Registered extractor specs; families are shown as ``"timm:<model_name>"``."""
    _load_builtins()
    return [f"{k}<model_name>" if k.endswith(":") else k for k in sorted(_REGISTRY)]


def _load_builtins() -> None:
    # Importing the modules runs their decorators.
    from . import default, timm_backbones  # noqa: F401


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

    Raises
    ------
    InputError
        For an unknown spec, an unknown timm model, or a missing checkpoint.
    """
    from ..device import pick_device

    _load_builtins()
    spec = str(spec).strip()
    choices = ", ".join(available_extractors())
    if spec in _REGISTRY and not spec.endswith(":"):
        cls, arg = _REGISTRY[spec], None
    elif ":" in spec and spec.split(":", 1)[0] + ":" in _REGISTRY and spec.split(":", 1)[1]:
        prefix, arg = spec.split(":", 1)
        cls = _REGISTRY[prefix + ":"]
    else:
        raise InputError(f"unknown feature extractor {spec!r}; choose one of {choices}")
    return cls(arg, checkpoint=checkpoint, device=pick_device(device))
