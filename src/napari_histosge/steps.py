"""The generator forms of the public functions: each yields progress events and returns its result.

``napari_histosge.fit(spots)`` returns the trained model; ``napari_histosge.steps.fit(spots)`` is
the same step as a generator of :class:`~napari_histosge.progress.Progress` events, for a display of
your own or to cancel between batches with a :class:`~napari_histosge.progress.CancelToken`.
Drive one to its end with :func:`napari_histosge.run`.

Examples
--------
>>> import napari_histosge as hs
>>> cancel = hs.CancelToken()
>>> for event in hs.steps.fit(spots, cancel=cancel):              # doctest: +SKIP
...     print(event.stage, event.step, event.total)
"""

from __future__ import annotations

from .pipeline.cell_maps import superresolve_cells
from .pipeline.grid_maps import superresolve_grid
from .pipeline.recovery import recover
from .pipeline.steps import fit, predict_spots, superresolve

__all__ = ["fit", "predict_spots", "recover", "superresolve", "superresolve_cells", "superresolve_grid"]
