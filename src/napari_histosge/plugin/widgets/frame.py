"""napari's world frame for a slide image, and the roles of the plugin's layers (numpy only).

Apart from :mod:`.layers` so that the slide reader, which napari imports on a user's first
File > Open, places a slide without importing the spot-data stack (anndata, pandas, scipy).
The frame itself is described in :mod:`.layers`.
"""

from __future__ import annotations

from typing import Any

from ...export.frame import META_KEY, world_frame

#: roles stored in ``layer.metadata["histosge"]["role"]``.
ROLE_SLIDE, ROLE_SPOTS, ROLE_PRED_SPOTS, ROLE_HEATMAP = "slide", "spots", "predicted_spots", "heatmap"
#: Heatmap of a prediction's spread (``layers["std"]``: what a measurement there could read).
ROLE_UNCERTAINTY = "uncertainty"


LayerDataTuple = tuple[Any, dict[str, Any], str]


# ----------------------------------------------------------------------------- frames
def image_transform(image_scale: float, mpp: float | None = None) -> dict[str, tuple[float, float]]:
    """``scale``/``translate`` placing an image stored at ``image_scale`` on the full-res grid.

    Parameters
    ----------
    image_scale
        Image pixels per full-resolution pixel (1.0 for the full-res image, 0.2 for
        an image downsampled 5x).
    mpp
        Micrometres per full-resolution pixel: the world frame is in micrometres when given.

    Notes
    -----
    Image pixel ``j`` covers full-res ``[j/s, (j+1)/s)``; in napari's convention (pixel
    centres at integer positions) its centre is at full-res ``(j + 0.5)/s - 0.5``.
    """
    s = float(image_scale)
    if not s > 0:
        raise ValueError(f"image scale must be positive, got {image_scale}")
    u = float(mpp) if mpp else 1.0
    step = 1.0 / s
    offset = 0.5 * step - 0.5
    return {"scale": (step * u, step * u), "translate": (offset * u, offset * u)}


# ----------------------------------------------------------------------------- slide
def slide_layer(levels: list, *, image_scale: float = 1.0, name: str = "slide",
                metadata: dict | None = None, mpp: float | None = None) -> LayerDataTuple:
    """A multiscale RGB image layer (dask levels, largest first) on the full-res grid.

    ``mpp`` (micrometres per full-res pixel) puts it in the micrometre world frame.
    """
    kwargs: dict[str, Any] = {
        "name": name,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": (0, 255),
        "metadata": {META_KEY: {"role": ROLE_SLIDE, **(metadata or {})}},
        **image_transform(image_scale, mpp),
        **world_frame(mpp),
    }
    data = list(levels) if len(levels) > 1 else levels[0]
    return data, kwargs, "image"


