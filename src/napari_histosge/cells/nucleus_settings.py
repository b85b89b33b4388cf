"""The nucleus detector's settings: every size in micrometres, checked before any pixel is read.

A module of its own, free of the image libraries, so the command line builds its ``nuclei``
flags (and the Detect nuclei widget its fields) from this declaration without loading the
detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import InputError

__all__ = ["MAX_TILE_PX", "NucleusSettings", "margin_um"]

#: A tile with its margins is at most this many working pixels across (memory grows with its square).
MAX_TILE_PX = 4096


@dataclass(frozen=True)
class NucleusSettings:
    """The detector's settings, every size in micrometres.

    Attributes
    ----------
    nucleus_um
        Typical nucleus diameter: the scale of the blob seeds and the least seed spacing.
    min_area_um2
        Objects smaller than this are dropped (debris, cut edges of nuclei).
    expand_um
        Grow each nucleus by this distance without overlapping its neighbours (0: nuclei).
    work_um
        Finest pixel size worked at: the coarsest pyramid level at least this fine is read.
    tile_um
        Edge of the tiles the slide is processed in (their core, without the overlap).
    threshold
        Haematoxylin optical density above which a pixel is nuclear, or ``None`` (three quarters of Otsu's
        threshold over the tissue).
    """

    nucleus_um: float = field(default=7.0, metadata={
        "help": "typical nucleus diameter in µm: the scale of the seeds and their least spacing"})
    min_area_um2: float = field(default=10.0, metadata={
        "help": "objects smaller than this many µm² are dropped (debris, cut edges)"})
    expand_um: float = field(default=0.0, metadata={
        "help": "grow each nucleus by this many µm, never into a neighbour (cells rather than nuclei; 0: nuclei)"})
    work_um: float = field(default=0.5, metadata={
        "help": "finest pixel size in µm worked at (finer scans are binned to it)"})
    tile_um: float = field(default=750.0, metadata={
        "help": "edge in µm of the tiles the slide is read in (memory grows with its square; with its margins "
                "at most 4096 working pixels)"})
    threshold: float | None = field(default=None, metadata={
        "help": "haematoxylin optical density above which a pixel is nuclear (default: three quarters of Otsu's "
                "threshold over the tissue)"})

    def check(self) -> NucleusSettings:
        """The settings, refused with one line when one is out of range."""
        for name in ("nucleus_um", "work_um", "tile_um"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number of micrometres, got {value}")
        for name in ("min_area_um2", "expand_um"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be zero or a positive number, got {value}")
        if self.tile_um < 4 * self.nucleus_um:
            raise InputError(f"tile_um ({self.tile_um:g}) must be at least four nuclei wide "
                             f"({4 * self.nucleus_um:g} µm)")
        padded_um = self.tile_um + 2 * margin_um(self)
        if padded_um / self.work_um > MAX_TILE_PX:
            raise InputError(f"tile_um ({self.tile_um:g}) with its margins is {padded_um / self.work_um:.0f} working "
                             f"pixels across; at most {MAX_TILE_PX} (tile_um up to "
                             f"{max(0.0, MAX_TILE_PX * self.work_um - 2 * margin_um(self)):.0f} at work_um "
                             f"{self.work_um:g})")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise InputError(f"the haematoxylin threshold must be positive, got {self.threshold}")
        return self


def margin_um(settings: NucleusSettings) -> float:
    """The tiles' overlap in µm: two nuclei and twice the growth.

    A grown cell reaches ``expand_um`` past its nucleus and competes with nuclei up to
    ``expand_um`` beyond that; the margin holds both whole, so every tile draws a seam cell the
    same way.
    """
    return 2 * (settings.nucleus_um + settings.expand_um)
