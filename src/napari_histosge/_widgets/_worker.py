"""Run a core progress generator in a napari ``thread_worker`` with an activity-dock bar.

The core's expected failures (``InputError``, ``CancelledError``) are caught inside the
worker and handed back as an :class:`Outcome`, so the widget shows one clear
notification instead of a traceback; anything unexpected still goes through napari's
own error reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CancelledError, HistosgeError
from ..progress import Progress


@dataclass
class Outcome:
    """How a background job ended: a value, an expected error, or a cancel."""

    value: Any = None
    error: HistosgeError | None = None
    cancelled: bool = False


def _drive(make_gen: Callable[[], Any]):
    # Runs in the worker thread: yields the core's Progress events, returns an Outcome.
    try:
        result = yield from make_gen()
    except CancelledError:
        return Outcome(cancelled=True)
    except HistosgeError as exc:
        return Outcome(error=exc)
    return Outcome(value=result)


class _Bar:
    """A ``napari.utils.progress`` bar following Progress events (main thread only)."""

    def __init__(self, description: str) -> None:
        from napari.utils import progress

        self.description = description
        self.bar = progress(total=0, desc=description)

    def update(self, event: Progress) -> None:
        total = event.total or 0
        if self.bar.total != total:
            self.bar.total = total
        target = min(event.step, total) if total else event.step
        # update() (not assigning n) emits the value event the activity dock listens to
        self.bar.update(target - self.bar.n)
        detail = event.message
        if event.metrics:
            detail = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in event.metrics.items())
        self.bar.set_description(f"{self.description}: {event.stage} {detail}".strip())

    def close(self) -> None:
        self.bar.close()


def _llvm_loaded() -> bool:
    """Whether a system libLLVM (Mesa's software OpenGL) is mapped into this process."""
    try:
        with open("/proc/self/maps") as maps:
            return "libLLVM" in maps.read()
    except OSError:  # not Linux
        return False


def preload_torch() -> None:
    """Import torch and its lazily imported compiler stack safely, in the main thread.

    The optimiser imports ``torch._dynamo``, which imports ``triton`` when installed.
    triton bundles its own LLVM; loading it into a process where Mesa's llvmpipe OpenGL
    (napari's canvas on machines without a GPU driver) already loaded the system
    libLLVM crashes the process with a segfault. The plugin never compiles kernels, so
    in that situation triton is marked unavailable (torch then runs without it).
    """
    import sys

    if "triton" not in sys.modules and _llvm_loaded():
        sys.modules["triton"] = None  # makes "import triton" raise ImportError
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401


def start_job(
    make_gen: Callable[[], Any],
    *,
    description: str,
    on_event: Callable[[Progress], None] | None = None,
    on_done: Callable[[Outcome], None],
    on_crash: Callable[[Exception], None] | None = None,
):
    """Start ``make_gen()`` (a core progress generator) in a background thread.

    Parameters
    ----------
    make_gen
        Zero-argument callable creating the generator (called in the worker thread).
    description
        Label of the progress bar in the activity dock.
    on_event
        Called in the main thread for every Progress event.
    on_done
        Called in the main thread with the :class:`Outcome`.
    on_crash
        Called in the main thread on an unexpected exception (napari also reports it).

    Returns
    -------
    GeneratorWorker
        The started worker.
    """
    from napari.qt.threading import thread_worker

    preload_torch()
    bar = _Bar(description)
    worker = thread_worker(_drive, start_thread=False)(make_gen)

    def _event(event: Any) -> None:
        if isinstance(event, Progress):
            bar.update(event)
            if on_event is not None:
                on_event(event)

    def _returned(outcome: Outcome) -> None:
        bar.close()
        on_done(outcome)

    def _errored(exc: Exception) -> None:
        bar.close()
        if on_crash is not None:
            on_crash(exc)

    worker.yielded.connect(_event)
    worker.returned.connect(_returned)
    worker.errored.connect(_errored)
    worker.start()
    return worker
