"""Run a core progress generator in a napari ``thread_worker`` with an activity-dock bar.

The core's expected failures (``InputError``, ``CancelledError``) are caught inside the
worker and handed back as an :class:`Outcome`, so the widget shows one clear
notification instead of a traceback; anything unexpected still goes through napari's
own error reporting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import CancelledError, HistosgeError
from ...progress import Progress


@dataclass
class Outcome:
    """How a background job ended: a value, an expected error, or a cancel."""

    value: Any = None
    error: HistosgeError | None = None
    cancelled: bool = False


#: How much nicer than the GUI thread the job thread runs (Linux per-thread nice).
BACKGROUND_NICE = 10


def lower_thread_priority(step: int = BACKGROUND_NICE) -> bool:
    """Make the calling thread, and the compute threads it starts later, yield the CPU to the GUI.

    On a machine with few cores, torch's compute threads compete with napari's GUI
    thread for the CPU; a nicer job thread keeps pan/zoom smooth and costs the job
    little when the GUI is idle. Linux scheduling priorities are per thread and inherited
    by threads it creates (torch's OpenMP team). Only raised once per thread; returns
    whether this thread now runs nicer than the process.
    """
    import os
    import threading

    try:
        tid = threading.get_native_id()
        base, current = os.getpriority(os.PRIO_PROCESS, os.getpid()), os.getpriority(os.PRIO_PROCESS, tid)
        if current <= base:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, base + step))
        return os.getpriority(os.PRIO_PROCESS, tid) > base
    except (AttributeError, OSError):  # no per-thread priorities here (not Linux): run as is
        return False


def status_text(event: Progress) -> str:
    """One status line for a Progress event: ``stage step/total message``."""
    total = f"/{event.total}" if event.total else ""
    return f"{event.stage} {event.step}{total} {event.message}".strip()


def _drive(make_gen: Callable[[], Any]):
    # Runs in the worker thread: yields the core's Progress events, returns an Outcome.
    lower_thread_priority()
    try:
        result = yield from make_gen()
    except CancelledError:
        return Outcome(cancelled=True)
    except HistosgeError as exc:
        return Outcome(error=exc)
    return Outcome(value=result)


class _Bar:
    """A ``napari.utils.progress`` bar following Progress events (main thread only).

    Its text changes only with the stage (the widget's own status line shows the loss):
    a new text re-lays out the activity dock.
    """

    def __init__(self, description: str) -> None:
        from napari.utils import progress

        self.description = description
        # Refresh the "n/total, rate" text once a second: tqdm's adaptive skipping would
        # freeze it, and each new text re-lays out the activity dock (a costly repaint).
        self.bar = progress(total=0, desc=description, miniters=1, mininterval=1.0)
        self._stage: str | None = None

    def update(self, event: Progress) -> None:
        total = event.total or 0
        if self.bar.total != total:
            self.bar.total = total
        target = min(event.step, total) if total else event.step
        # update() (not assigning n) emits the value event the activity dock listens to
        self.bar.update(target - self.bar.n)
        if event.stage != self._stage:
            self._stage = event.stage
            self.bar.set_description(f"{self.description}: {event.stage}")

    def close(self) -> None:
        self.bar.close()


class _Batcher:
    """Hands Progress events to the GUI in batches, at most every ``interval_s`` (main thread).

    Every widget repaint makes Qt compose the whole window, OpenGL canvas included; with
    software OpenGL (no GPU) that costs tens of milliseconds, so a job yielding many
    events per second would stall the GUI over and over. Events are never dropped: each
    batch delivers all pending events (their repaints coalesce into one), a stage change
    or a finished stage is delivered at once, and a timer delivers the rest.
    """

    interval_s = 0.25

    def __init__(self, deliver: Callable[[list[Progress]], None]) -> None:
        from qtpy.QtCore import QTimer

        self.deliver = deliver
        self.pending: list[Progress] = []
        self._last = float("-inf")
        self._stage: str | None = None
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.flush)

    def add(self, event: Progress) -> None:
        import time

        self.pending.append(event)
        urgent = event.stage != self._stage or (event.total is not None and 0 < event.total <= event.step)
        self._stage = event.stage
        if urgent or time.monotonic() - self._last >= self.interval_s:
            self.flush()
        elif not self.timer.isActive():
            self.timer.start(int(self.interval_s * 1000))

    def flush(self) -> None:
        import time

        self.timer.stop()
        batch, self.pending = self.pending, []
        self._last = time.monotonic()
        if batch:
            self.deliver(batch)


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
        # None in sys.modules makes "import triton" raise ImportError (the typeshed stub omits it)
        sys.modules["triton"] = None  # type: ignore[assignment]
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401


def warm_up_in_background(modules: Sequence[str] = (), on_ready: Callable[[], None] | None = None):
    """Import ``modules`` and torch (:func:`preload_torch`) in a background thread; returns its napari worker.

    A widget that opens calls it so its first click starts at once, without the seconds of
    importing torch on the event loop: the GUI thread goes on while the worker imports (a
    click that needs torch before it is done waits for it at its own import). ``on_ready``
    runs in the GUI thread once the imports succeeded (e.g. to list the registered models).
    """
    import importlib

    from napari.qt.threading import create_worker

    def work() -> bool:
        try:
            for name in modules:
                importlib.import_module(name)
            preload_torch()
        except Exception:  # noqa: BLE001 - a failed warm-up only means the first click imports (and reports) it
            return False
        return True

    worker = create_worker(work, _start_thread=False)
    if on_ready is not None:
        worker.returned.connect(lambda ok: on_ready() if ok else None)
    worker.start()
    return worker


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
        Called in the main thread for every Progress event (delivered in batches at most
        every 0.25 s, see :class:`_Batcher`).
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
    from qtpy.QtCore import QTimer

    preload_torch()
    bar = _Bar(description)
    worker = thread_worker(_drive, start_thread=False)(make_gen)

    delivering = [False]

    def _deliver(events: list[Progress]) -> None:
        # The widget first, the bar second: napari's progress bar calls processEvents(),
        # in which the job's end (or its next events) can arrive.
        delivering[0] = True
        try:
            if on_event is not None:
                for event in events:
                    on_event(event)
            bar.update(events[-1])
        finally:
            delivering[0] = False

    batcher = _Batcher(_deliver)
    worker._histosge_batcher = batcher  # keeps the timer alive as long as the worker

    def _event(event: Any) -> None:
        if isinstance(event, Progress):
            batcher.add(event)

    def _after_delivery(finish: Callable[[], None]) -> None:
        # The end arriving inside a delivery (see _deliver) waits for it: the widget's last
        # word (done, cancelled) must come after every progress line.
        if delivering[0]:
            QTimer.singleShot(0, lambda: _after_delivery(finish))
            return
        batcher.flush()  # every event reaches the widget before the outcome
        bar.close()
        finish()

    def _returned(outcome: Outcome) -> None:
        _after_delivery(lambda: on_done(outcome))

    def _errored(exc: Exception) -> None:
        _after_delivery(lambda: on_crash(exc) if on_crash is not None else None)

    worker.yielded.connect(_event)
    worker.returned.connect(_returned)
    worker.errored.connect(_errored)
    worker.start()
    return worker
