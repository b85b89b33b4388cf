"""Colour scales of the plugin's layers: colormaps (heatmaps fade to transparent) and robust contrast limits.

The limits and the fade are the core's (:mod:`napari_histosge.export.colours`), shared with exported figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...export.colours import FADE_FRACTION, ROBUST_PERCENTILES
from ...export.colours import robust_range as robust_range  # re-exported: the widgets' limits
from ...export.colours import value_range as value_range

SPOT_COLORMAP = "viridis"
#: Heatmaps: inferno whose low end fades to transparent, so the H&E shows where expression is low.
HEATMAP_COLORMAP = "inferno (transparent low)"
#: Differences: a diverging colormap, used with limits symmetric about 0.
DIFF_COLORMAP = "PiYG"


def symmetric_range(values: np.ndarray, percentile: float = ROBUST_PERCENTILES[1]) -> tuple[float, float]:
    """Limits ``(-m, m)`` centred on 0 with ``m`` the ``percentile`` of ``|values|``."""
    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    m = float(np.percentile(finite, percentile)) if finite.size else 1.0
    m = m if m > 0 else max(float(finite.max()) if finite.size else 1.0, 1e-6)
    return -m, m


_COLORMAPS: dict[str, Any] = {}


def heatmap_colormap():
    """The napari colormap :data:`HEATMAP_COLORMAP`: inferno, transparent at its low end."""
    if HEATMAP_COLORMAP not in _COLORMAPS:
        from napari.utils.colormaps import Colormap, ensure_colormap

        pos = np.linspace(0.0, 1.0, 33)
        rgba = np.asarray(ensure_colormap("inferno").map(pos), dtype=np.float64)
        rgba[:, 3] = np.clip(pos / FADE_FRACTION, 0.0, 1.0)
        _COLORMAPS[HEATMAP_COLORMAP] = Colormap(colors=rgba, controls=pos, name=HEATMAP_COLORMAP,
                                                display_name=HEATMAP_COLORMAP)
    return _COLORMAPS[HEATMAP_COLORMAP]


def colormap_for(name: str):
    """A colormap usable by a napari layer: the plugin's own by its name, else ``name`` as is."""
    return heatmap_colormap() if name == HEATMAP_COLORMAP else name
