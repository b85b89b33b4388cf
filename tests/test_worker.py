"""The plugin's job runner: batched progress delivery and a job thread that yields the CPU."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from napari_histosge.plugin.widgets.worker import _Batcher, lower_thread_priority
from napari_histosge.progress import Progress


def test_batcher_delivers_every_event_in_order_but_few_times(qtbot) -> None:
    batches: list[list[Progress]] = []
    batcher = _Batcher(batches.append)
    events = [Progress("train", i, 50) for i in range(1, 50)]
    batcher.add(Progress("features", 10, 10))  # a finished stage: delivered at once
    assert len(batches) == 1
    for event in events:
        batcher.add(event)
    assert len(batches) == 2  # the stage change went out at once, the rest waits for the timer
    qtbot.waitUntil(lambda: not batcher.pending, timeout=2000)
    batcher.add(Progress("train", 50, 50))  # the end of a stage is never held back
    delivered = [e for batch in batches for e in batch]
    assert delivered == [Progress("features", 10, 10), *events, Progress("train", 50, 50)]
    assert len(batches) <= 4


def test_batcher_flush_hands_over_what_is_pending(qtbot) -> None:
    batches: list[list[Progress]] = []
    batcher = _Batcher(batches.append)
    batcher.add(Progress("train", 1, 9))
    batcher.add(Progress("train", 2, 9))
    assert batcher.pending
    batcher.flush()
    assert [e.step for batch in batches for e in batch] == [1, 2] and not batcher.pending


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
def test_job_thread_runs_nicer_than_the_gui_thread() -> None:
    seen: dict = {}

    def job() -> None:
        seen["lowered"] = lower_thread_priority(5)
        seen["again"] = lower_thread_priority(5)  # only once per thread: no further drop
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=job)
    t.start()
    t.join()
    assert seen["lowered"] and seen["again"]
    assert seen["nice"] == min(19, base + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller is untouched


@pytest.mark.slow
def test_opening_the_train_widget_imports_what_its_first_start_needs() -> None:
    """The first Start must not import torch's compiler stack in the GUI thread (seconds of freeze)."""
    import subprocess

    code = ("import sys, threading, napari; from napari_histosge.plugin.widgets.train import TrainWidget; "
            "v = napari.Viewer(show=False); TrainWidget(v); "
            "from napari.qt.threading import WorkerBase; WorkerBase.await_workers(60_000); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]


def test_opening_a_widget_imports_torch_in_a_background_thread(make_napari_viewer, monkeypatch, qtbot) -> None:
    """Opening the Train or Super-resolve widget, or drawing the first region, froze the viewer while torch
    was imported."""
    from napari_histosge.plugin.widgets import worker
    from napari_histosge.plugin.widgets.region import RegionsWidget
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget
    from napari_histosge.plugin.widgets.train import TrainWidget

    release, threads = threading.Event(), []

    def slow_preload() -> None:  # stands in for seconds of importing torch
        threads.append(threading.current_thread())
        release.wait(timeout=5)

    monkeypatch.setattr(worker, "preload_torch", slow_preload)
    viewer = make_napari_viewer()
    t0 = time.perf_counter()
    train = TrainWidget(viewer)
    SuperResolveWidget(viewer)
    RegionsWidget(viewer)  # its first region's summary job needs torch too
    assert time.perf_counter() - t0 < 4  # all opened while the imports were still running
    # every model is offered at once: their settings register without torch
    assert train.model_name.value == "histosge" and "subspot" in train.model_name.choices
    release.set()
    qtbot.waitUntil(lambda: len(threads) == 3, timeout=60_000)
    assert all(t is not threading.main_thread() for t in threads)


def test_the_outcome_comes_after_every_progress_event(qtbot, monkeypatch) -> None:
    """napari's progress bar calls processEvents() while it updates, where the job's end can
    arrive: it must still reach the widget last (else its status shows 'epoch 3/30' after
    'cancelled')."""
    import time

    from qtpy.QtWidgets import QApplication

    from napari_histosge.plugin.widgets import worker as W

    def napari_like_update(self, event) -> None:  # what napari's bar does: repaint, processing events
        time.sleep(0.2)  # meanwhile the job ends
        QApplication.processEvents()

    monkeypatch.setattr(W._Bar, "update", napari_like_update)
    log: list[str] = []

    def job():
        yield Progress("train", 3, 30)
        return "value"

    W.start_job(job, description="test", on_event=lambda e: log.append(f"epoch {e.step}/{e.total}"),
                on_done=lambda outcome: log.append(f"done {outcome.value}"))
    qtbot.waitUntil(lambda: "done value" in log, timeout=20_000)
    qtbot.wait(300)
    assert log == ["epoch 3/30", "done value"]
