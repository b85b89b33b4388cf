"""Typed progress events shared by every long operation.

Long work is written as a generator that yields :class:`Progress` events and
*returns* its result (``StopIteration.value``). The CLI drives it with a
terminal progress bar (:func:`run_with_tqdm`); the napari plugin wraps the same
generator in ``thread_worker``. Cancelling is cooperative: the consumer sets a
:class:`CancelToken`, and the generator checks it between batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import CancelledError

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Parameters
    ----------
    stage
        Short name of the step, e.g. ``"features"``, ``"train"``, ``"predict"``.
    step
        Units done so far in this stage.
    total
        Units in this stage, or ``None`` when unknown.
    message
        Human-readable detail.
    metrics
        Numbers worth showing, e.g. ``{"epoch": 3, "loss": 0.12}``.
    """

    stage: str
    step: int
    total: int | None = None
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


ProgressGenerator = Generator[Progress, None, T]

#: ``False``/``None``: silent; ``True``: a tqdm bar per stage; a callable: called with each event.
ProgressOption = bool | None | Callable[[Progress], Any]


class CancelToken:
    """A thread-safe flag a consumer sets to stop a running generator."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the operation to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` has been called."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~napari_histosge.errors.CancelledError` if cancelled."""
        if self._event.is_set():
            raise CancelledError("cancelled by user")


def map_events(gen: ProgressGenerator[T], change: Callable[[Progress], Progress]) -> ProgressGenerator[T]:
    """Re-yield ``gen``'s events passed through ``change`` and return its result.

    For a step run inside a larger one, e.g. to name the section or sub-model it works on.
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        yield change(event)


def run_to_end(gen: ProgressGenerator[T]) -> T:
    """Consume a progress generator silently and return its result."""
    return _drain(gen, None)


def _drain(gen: ProgressGenerator[T], on_event: Callable[[Progress], Any] | None) -> T:
    """Run ``gen`` to its end, passing each event to ``on_event`` (if any); its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def run_collecting(gen: ProgressGenerator[T]) -> tuple[T, list[Progress]]:
    """Consume a progress generator, keeping its events.

    Returns
    -------
    tuple
        The generator's result and every :class:`Progress` it yielded, in order.
    """
    events: list[Progress] = []
    return _drain(gen, events.append), events


def run_with_tqdm(gen: ProgressGenerator[T], *, disable: bool = False) -> T:
    """Consume a progress generator, showing one tqdm bar per stage.

    Parameters
    ----------
    gen
        The generator to drive.
    disable
        Hide the bars (e.g. ``--quiet``).
    """
    from tqdm.auto import tqdm

    bar: Any = None
    stage = None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if event.stage != stage:
                if bar is not None:
                    bar.close()
                stage = event.stage
                bar = tqdm(total=event.total, desc=stage, disable=disable, leave=True)
            if event.total is not None and bar.total != event.total:
                bar.total = event.total
            bar.n = event.step
            if event.metrics:
                bar.set_postfix({k: f"{v:.4g}" for k, v in event.metrics.items()}, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def drive(gen: ProgressGenerator[T], progress: ProgressOption = False) -> T:
    """Run a progress generator to its end and return its result.

    Parameters
    ----------
    gen
        A generator of :class:`~napari_histosge.progress.Progress` events that returns a result.
    progress
        ``False`` or ``None`` runs silently; ``True`` shows a tqdm bar per stage; a callable is
        called with every event (a notebook's own bar, a log line, a cancel check that raises).

    Returns
    -------
    object
        What the generator returned.
    """
    if not isinstance(gen, Generator):
        # The one mistake a user of the old API makes: run(fit(...)) now that fit returns its result.
        raise TypeError(f"expected a progress generator (napari_histosge.steps), got {type(gen).__name__}: "
                        "the functions of napari_histosge return their result already")
    if progress is True:
        return run_with_tqdm(gen)
    if progress is None or progress is False:
        return run_to_end(gen)
    if not callable(progress):
        raise TypeError(f"progress must be True, False or a callable taking a Progress event, got {progress!r}")
    try:
        return _drain(gen, progress)
    finally:
        gen.close()  # a callback that raises (to cancel) still releases the step's slides and pools
