"""Colour scales of the plugin's layers: colormaps (heatmaps fade to transparent) and robust contrast limits."""

from __future__ import annotations

from typing import Any

import numpy as np

SPOT_COLORMAP = "viridis"
#: Heatmaps: inferno whose low end fades to transparent, so the H&E shows where expression is low.
HEATMAP_COLORMAP = "inferno (transparent low)"
#: Differences: a diverging colormap, used with limits symmetric about 0.
DIFF_COLORMAP = "PiYG"
#: Percentiles of the shown values that set a heatmap's contrast limits (one outlier must not).
ROBUST_PERCENTILES = (1.0, 99.0)
#: Share of the colormap over which the heatmap's opacity rises from 0 to 1.
FADE_FRACTION = 0.3


def value_range(values: np.ndarray) -> tuple[float, float]:
    """Finite (min, max) of ``values``, widened when flat so a colormap stays valid."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def robust_range(values: np.ndarray, percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> tuple[float, float]:
    """Contrast limits at ``percentiles`` of the finite ``values`` (widened when flat)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    return (lo, hi) if hi > lo else value_range(finite)


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
