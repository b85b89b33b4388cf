"""The public functions of the library: each long step called once, returning its result.

Every long step of the pipeline is written as a generator of :class:`~napari_histosge.progress.Progress`
events (the plugin runs it in a worker thread, the command line under a terminal bar). A script or a
notebook wants the result: the functions here drive the same generators to their end and return
what they return, optionally reporting progress to a tqdm bar or a callback. The generator forms
stay public under :mod:`napari_histosge.steps`, for your own progress display or cancelling.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .pipeline import cell_maps, grid_maps, recovery
from .pipeline import steps as pipeline_steps
from .progress import ProgressGenerator, ProgressOption, drive

T = TypeVar("T")


def _plain(step: Callable[..., ProgressGenerator[T]]) -> Callable[..., T]:
    """The function that runs the generator function ``step`` to its end (same parameters, plus ``progress``)."""

    @functools.wraps(step)
    def run_step(*args: Any, progress: ProgressOption = False, **kwargs: Any) -> T:
        return drive(step(*args, **kwargs), progress)

    signature = inspect.signature(step)
    extra = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False,
                              annotation="bool | Callable[[Progress], Any]")
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    run_step.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], extra, *params[at:]])  # before a **options
    run_step.__doc__ = (
        f"{inspect.getdoc(step)}\n\n"
        "Other Parameters\n----------------\n"
        "progress\n"
        "    ``False`` (default) runs silently, ``True`` shows a tqdm bar per stage, a callable is\n"
        "    called with each :class:`~napari_histosge.progress.Progress` event.\n\n"
        f"Notes\n-----\n"
        f"The generator form, yielding progress events, is ``napari_histosge.steps.{step.__name__}``.\n"
    )
    del run_step.__wrapped__  # help() and inspect show the signature above, with progress
    run_step.__module__ = __name__
    return run_step


fit = _plain(pipeline_steps.fit)
predict_spots = _plain(pipeline_steps.predict_spots)
superresolve = _plain(pipeline_steps.superresolve)
#: The ``grid`` product of a cell model, as ``superresolve(model, adata, product="grid", ...)`` makes it (the same
#: ``mask``: ``"auto"``, a path, a :class:`~napari_histosge.slide.mask.TissueMask`, or ``None``/``"none"``).
superresolve_grid = _plain(grid_maps.superresolve_grid)
superresolve_cells = _plain(cell_maps.superresolve_cells)
recover = _plain(recovery.recover)
