"""The feature extractor base class and the table of registered extractors.

The built-in extractors and :mod:`.registry` both build on this module, so it imports
neither of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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
    patch_um
        Edge of the patch in micrometres where the slide's pixel size is known, else ``None``;
        set by the extraction code beside ``center_fraction``.
    needs_pixel_size
        Whether the extractor measures in micrometres and so cannot run without ``patch_um``.
    """

    name: str = ""
    dim: int = 0
    input_size: int = 224
    center_fraction: float = 0.5
    patch_um: float | None = None
    needs_pixel_size: bool = False

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        import torch

        self.arg = arg
        self.checkpoint = checkpoint
        self.device = torch.device(device)

    @property
    def identity(self) -> str:
        """Stable string naming the extractor and its weights (part of feature cache keys)."""
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


def registered_extractors() -> dict[str, type[FeatureExtractor]]:
    """A copy of the registry: spec (a name, or a family prefix ending in ``":"``) -> class."""
    return dict(_REGISTRY)


def unregister_extractor(name: str) -> None:
    """Remove the extractor registered under ``name`` (as given to :func:`register_extractor`).

    Raises
    ------
    KeyError
        If nothing is registered under ``name``.
    """
    del _REGISTRY[name]
