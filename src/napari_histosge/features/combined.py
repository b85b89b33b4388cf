"""Several extractors side by side: the spec ``"default+nuclei"`` concatenates their features.

Each part reads the same patch; the patch is read at the largest ``input_size`` of the parts
and each part resizes it to its own (as every extractor does with a patch of another size).
"""

from __future__ import annotations

from typing import Any

from .base import FeatureExtractor


class CombinedExtractor(FeatureExtractor):
    """The features of ``parts`` concatenated, in the order of the spec."""

    def __init__(self, parts: list[FeatureExtractor]) -> None:
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        self.dim = sum(p.dim for p in self.parts)
        self.input_size = max(p.input_size for p in self.parts)
        self.needs_pixel_size = any(p.needs_pixel_size for p in self.parts)
        self.arg, self.checkpoint, self.device = None, None, self.parts[0].device
        names: list[list[str]] = [list(getattr(p, "feature_names", None) or []) for p in self.parts]
        if all(names):
            self.feature_names = [f"{p.name}:{n}" for p, ns in zip(self.parts, names, strict=True) for n in ns]

    # The extraction code sets these on the extractor; every part needs them.
    @property
    def center_fraction(self) -> float:
        """Share of the patch edge covered by the spot, shared by every part."""
        return self.parts[0].center_fraction

    @center_fraction.setter
    def center_fraction(self, value: float) -> None:
        for p in self.parts:
            p.center_fraction = value

    @property
    def patch_um(self) -> float | None:
        """Patch edge in µm, shared by every part."""
        return self.parts[0].patch_um

    @patch_um.setter
    def patch_um(self, value: float | None) -> None:
        for p in self.parts:
            p.patch_um = value

    @property
    def identity(self) -> str:
        """The parts' identities joined (part of cache keys)."""
        return "+".join(p.identity for p in self.parts)

    def extract(self, patches: Any) -> Any:
        """The parts' features of a ``(n, H, W, 3)`` uint8 batch, concatenated, float32 ``(n, dim)``."""
        import torch

        return torch.cat([p.extract(patches).float().to(self.device) for p in self.parts], 1)
