"""The world frame of maps and layers: the pixel size a section records, and its units.

Kept apart from :mod:`.raster` (numpy only), so the slide reader can place a slide without
importing the spot-data stack.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: key of ``adata.uns`` (and of a napari ``layer.metadata``) holding what napari-histosge recorded.
META_KEY = "histosge"


def um_per_px(adata) -> float | None:
    """Micrometres per full-resolution pixel recorded for ``adata`` (``uns["histosge"]["mpp"]``), else ``None``."""
    info = getattr(adata, "uns", {}).get(META_KEY, {}) or {}
    try:
        mpp = float(info["mpp"])
    except (KeyError, TypeError, ValueError):
        return None
    return mpp if np.isfinite(mpp) and mpp > 0 else None


def world_frame(mpp: float | None) -> dict[str, Any]:
    """The layer kwargs of the world frame: ``units`` in micrometres when ``mpp`` is known."""
    return {"units": ("um", "um")} if mpp else {}


