"""Stain normalisation of H&E patches (Macenko), estimated once per slide.

Slides from different labs or scanners stain and image the same tissue differently, and
image features follow the colour. With ``FeatureConfig(stain="macenko")`` each slide's two
stain vectors (haematoxylin, eosin) and its stain concentration scale are estimated once,
with torchstain's Macenko normaliser, from the tissue pixels of a low-resolution level (so
the estimate does not depend on which positions are read), and every patch read from that
slide is re-rendered with torchstain's reference stains before the extractor sees it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..slide.mask import low_resolution_rgb, tissue_from_rgb
from ..slide.open import open_slide

#: Transmitted light intensity of the optical density transform (torchstain's default).
LIGHT = 240.0
#: Longest side of the level the stains are estimated on.
ESTIMATE_SIDE = 2048
#: Fewest tissue pixels an estimate is made from.
MIN_PIXELS = 500


@dataclass(frozen=True)
class StainNormaliser:
    """Re-renders patches of one slide with the reference stains.

    Attributes
    ----------
    stains
        ``(3, 2)`` optical density of the slide's haematoxylin and eosin per RGB channel.
    max_concentration
        ``(2,)`` 99th percentile of the slide's stain concentrations.
    reference_stains, reference_max
        The same for the reference the patches are rendered in (torchstain's).
    """

    stains: np.ndarray
    max_concentration: np.ndarray
    reference_stains: np.ndarray
    reference_max: np.ndarray

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """``(..., 3)`` uint8 RGB patches of this slide, re-rendered with the reference stains."""
        rgb = np.asarray(patches)
        density = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / LIGHT)
        concentration = np.linalg.lstsq(self.stains, density.T, rcond=None)[0]
        concentration /= (self.max_concentration / self.reference_max)[:, None]
        out = LIGHT * np.exp(-self.reference_stains @ concentration)
        return np.clip(out.T, 0, 255).astype(np.uint8).reshape(rgb.shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-friendly), e.g. for a worker or a record of the run."""
        return {"stains": self.stains.tolist(), "max_concentration": self.max_concentration.tolist(),
                "reference_stains": self.reference_stains.tolist(), "reference_max": self.reference_max.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainNormaliser:
        """Inverse of :meth:`to_dict`."""
        return cls(*(np.asarray(d[k], np.float64) for k in
                     ("stains", "max_concentration", "reference_stains", "reference_max")))


def estimate_stains(image_path: str | os.PathLike) -> StainNormaliser:
    """Estimate a slide's stains on the tissue of a low-resolution level.

    Raises
    ------
    InputError
        When the slide shows too little tissue to estimate from, or the estimate fails.
    """
    from torchstain.base.normalizers import MacenkoNormalizer

    with open_slide(image_path) as slide:
        rgb, _ = low_resolution_rgb(slide, ESTIMATE_SIDE)
    rgb = np.asarray(rgb, np.float64).clip(0, 255).astype(np.uint8)
    pixels = rgb[tissue_from_rgb(rgb)]
    if len(pixels) < MIN_PIXELS:
        raise InputError(f"stain normalisation found too little tissue to estimate the stains from "
                         f"({len(pixels)} pixels); use stain 'none' for this slide", image_path)
    normaliser = MacenkoNormalizer(backend="numpy")
    reference = (np.array(normaliser.HERef, np.float64), np.array(normaliser.maxCRef, np.float64))
    try:
        normaliser.fit(pixels[None])  # sets the reference to the slide's own: its estimate
    except (ValueError, np.linalg.LinAlgError, IndexError) as exc:
        raise InputError(f"cannot estimate the slide's stains ({exc}); use stain 'none' for this slide",
                         image_path) from exc
    stains = np.asarray(normaliser.HERef, np.float64)
    max_concentration = np.asarray(normaliser.maxCRef, np.float64)
    if not (np.isfinite(stains).all() and np.isfinite(max_concentration).all() and (max_concentration > 0).all()):
        raise InputError("cannot estimate the slide's stains (a degenerate estimate); use stain 'none' for "
                         "this slide", image_path)
    return StainNormaliser(stains, max_concentration, *reference)
