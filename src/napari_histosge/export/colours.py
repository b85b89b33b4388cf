"""Colour scales shared by the plugin's layers and exported figures: robust limits and the heatmap's fade.

The heatmap colormap is inferno whose opacity rises from 0 to 1 over its lowest
:data:`FADE_FRACTION`, so the H&E shows through where expression is low. Numpy only: the
plugin imports this module whenever a widget opens.
"""

from __future__ import annotations

import numpy as np

#: Percentiles of the shown values that set a heatmap's contrast limits (one outlier must not).
ROBUST_PERCENTILES = (1.0, 99.0)
#: Share of the colormap over which the heatmap's opacity rises from 0 to 1.
FADE_FRACTION = 0.3
#: The colormap under the heatmap's fade.
HEATMAP_BASE = "inferno"
#: Opacity of a heatmap over the slide, as the plugin's heatmap layers draw it.
HEATMAP_OPACITY = 0.85


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

