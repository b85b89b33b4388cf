"""UI responsiveness: the napari event loop's longest stall while the plugin trains.

Opens napari (under a virtual X server when there is no display: the script re-runs
itself under ``xvfb-run``), loads the generated demo section through the plugin's reader,
and starts training from the Train widget exactly as a click on "Start training" does.
A ``QTimer`` fires every 5 ms in the GUI thread; a stall is the gap between two ticks
minus those 5 ms. Stalls are recorded while the worker runs (feature extraction and
training; the training epochs alone are reported too), and for a few idle seconds
before, which is the floor the machine and virtual display give. Writes
``benchmarks/results/ui_responsiveness.json`` and the ``ui_responsiveness`` block of
``docs/benchmarks.md``. Usage::

    python benchmarks/ui_responsiveness.py              # 100 epochs
    python benchmarks/ui_responsiveness.py --epochs 50
    python benchmarks/ui_responsiveness.py --epochs 300 --val-fraction 0 --runs 3 --block ui_responsiveness_long
    python benchmarks/ui_responsiveness.py --actions  # each action of a walk on her2st B4 (ui_actions.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_MS = 50.0
TICK_MS = 5


def stall_stats(ticks: list[float]) -> dict:
    """Max, p99 and median of ``gap - TICK_MS`` (ms, floored at 0) between consecutive ticks."""
    gaps = np.diff(np.asarray(ticks)) * 1000.0 - TICK_MS
    gaps = np.maximum(gaps, 0.0)
    if len(gaps) == 0:
        return {"ticks": len(ticks), "max_ms": float("nan"), "p99_ms": float("nan"), "median_ms": float("nan")}
    return {"ticks": len(ticks), "max_ms": float(gaps.max()), "p99_ms": float(np.percentile(gaps, 99)),
            "median_ms": float(np.median(gaps)), "over_50ms": int((gaps > TARGET_MS).sum())}


def run(args) -> dict:
    import napari
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_histosge.demo import make_demo_dataset
    from napari_histosge.plugin.widgets.layers import ROLE_SPOTS, layers_with_role
    from napari_histosge.plugin.widgets.train import TrainWidget
    from napari_histosge.plugin.widgets.worker import preload_torch

    tmp = Path(tempfile.mkdtemp(prefix="histosge-ui-bench-"))
    demo = make_demo_dataset(tmp / "demo")
    viewer = napari.Viewer(title="napari-histosge UI benchmark", show=True)
    app = QApplication.instance()
    viewer.open(str(demo), plugin="napari-histosge")
    [spots] = layers_with_role(viewer.layers, ROLE_SPOTS)
    n_spots = len(spots.data)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train", area="right")
    viewer.window._status_bar._toggle_activity_dock(True)  # the progress bar redraws too
    train.data.value = [spots]
    train.epochs.value = args.epochs
    train.n_genes.value = args.n_genes
    train.device.value = "cpu"
    train.out_dir.value = str(tmp / "models")
    if args.val_fraction is not None:  # the form has no field for it: set it on the config the form makes
        form_config = train.train_config
        train.train_config = lambda: replace(form_config(), val_fraction=args.val_fraction)
    preload_torch()  # as start_job does, before torch meets the GL context's libLLVM
    import torch

    torch.set_num_threads(args.threads)

    ticks = {"idle": [], "job": [], "train": []}
    state = {"phase": "idle", "started": False, "t_start": None, "t_end": None, "t_first_epoch": None}

    def tick() -> None:
        now = time.perf_counter()
        phase = state["phase"]
        if phase in ("idle", "job"):
            ticks[phase].append(now)
        if phase == "job":
            if state["t_first_epoch"] is None and any(e.stage == "train" and e.step >= 1 for e in train.events_seen):
                state["t_first_epoch"] = now
            if state["t_first_epoch"] is not None:
                ticks["train"].append(now)
            # (start() may process events before it stores the worker: wait until it has returned)
            if state["started"] and train.worker is None:  # the worker returned and the widget finished
                state["t_end"], state["phase"] = now, "done"
                app.quit()

    def start_training() -> None:
        state["phase"], state["t_start"] = "job", time.perf_counter()
        train.start()
        state["started"] = True

    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    QTimer.singleShot(int(args.idle_s * 1000), start_training)
    QTimer.singleShot(int(args.timeout_s * 1000), app.quit)  # safety net
    app.exec_()
    timer.stop()
    outcome = train.last_outcome
    ok = outcome is not None and outcome.value is not None
    history = train.last_model.meta.history if ok else []
    result = {
        "n_spots": n_spots, "epochs": args.epochs, "n_genes_requested": args.n_genes, "trained": ok,
        "status": train.status.value, "job_s": (state["t_end"] or time.perf_counter()) - state["t_start"],
        "train_s": ((state["t_end"] - state["t_first_epoch"]) if state["t_first_epoch"] and state["t_end"] else None),
        "final_loss": history[-1] if history else None,
        "idle": stall_stats(ticks["idle"]), "job": stall_stats(ticks["job"]), "train": stall_stats(ticks["train"]),
    }
    viewer.close()
    return result


def render(payload: dict) -> str:
    from _report import machine_line

    r = payload["result"]
    lines = [
        machine_line(payload["machine"]),
        f"napari {payload['napari']} under {payload['display']}; demo section ({r['n_spots']} spots) opened through "
        f"the plugin reader, training started from the Train widget ({r['epochs']} epochs"
        + ("" if payload.get("val_fraction") is None else
           f", validation share {payload['val_fraction']:g}" + (": no early stopping" if not payload["val_fraction"]
                                                                  else ""))
        + ", "
        f"{r['n_genes_requested']} genes, CPU, {payload['machine']['torch_threads']} torch threads; "
        f"{'finished' if r['trained'] else 'did not finish: ' + r['status']}). A {TICK_MS} ms QTimer in the GUI "
        f"thread; stall = gap between ticks - {TICK_MS} ms. Load average at the end: "
        f"{payload['loadavg_end'][0]:.1f} (training's own threads count; the idle row is the floor that the "
        f"machine and the virtual display give). Target: longest stall "
        f"under {TARGET_MS:g} ms.",
        "",
        "| period | duration s | ticks | max stall ms | p99 ms | median ms | stalls > 50 ms | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    periods = [("idle viewer, before training (floor)", payload["idle_s"], r["idle"]),
               ("whole job (features + training)", r["job_s"], r["job"]),
               ("training epochs only", r["train_s"], r["train"])]
    for label, dur, s in periods:
        met = "" if label.startswith("idle") else (
            f"< {TARGET_MS:g} ms: {'met' if s['max_ms'] < TARGET_MS else 'not met'}")
        dur_s = f"{dur:.1f}" if dur is not None else "-"
        lines.append(f"| {label} | {dur_s} | {s['ticks']} | {s['max_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{s['median_ms']:.2f} | {s.get('over_50ms', 0)} | {met} |")
    runs = r.get("runs_max_ms")
    if runs and len(runs) > 1:
        ok = sum(m < TARGET_MS for m in runs)
        lines += ["", f"The table is the run with the median longest stall of {len(runs)} runs; the longest stall of "
                  f"each whole job: {', '.join(f'{m:.0f}' for m in runs)} ms ({ok} of {len(runs)} under "
                  f"{TARGET_MS:g} ms). Most stalls are the window repaint itself: with software OpenGL (Mesa "
                  "llvmpipe under Xvfb) every widget update composes the whole window, canvas included, which "
                  "costs about 30 ms here, while the idle viewer, which repaints nothing, stays near its floor."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--actions" in argv:  # the walk through the widgets, action by action (ui_actions.py)
        from ui_actions import main as walk_actions

        return walk_actions([a for a in argv if a != "--actions"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--n-genes", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle seconds measured before training")
    parser.add_argument("--runs", type=int, default=5, help="repeat the whole measurement (stalls vary run to run)")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="the training job's validation share (default: the widget's; 0 turns early "
                             "stopping off, so the job runs all --epochs)")
    parser.add_argument("--block", default="ui_responsiveness",
                        help="docs/benchmarks.md block and results file to write (ui_responsiveness_long for a long job)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)

    from _report import rerun_under_xvfb

    rerun_under_xvfb(__file__, argv)

    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5.*")
    load_start = os.getloadavg()
    results = [run(args) for _ in range(args.runs)]  # a fresh viewer each time
    # The table shows the run with the median longest stall; every run's maximum is listed.
    result = sorted(results, key=lambda r: r["job"]["max_ms"])[len(results) // 2]
    result["runs_max_ms"] = [r["job"]["max_ms"] for r in results]
    import napari
    from _report import machine_info, publish

    info = machine_info()  # after the run: torch must not be imported before preload_torch
    info["load_average_1m"] = load_start[0]  # the load when it started
    payload = {"machine": info, "napari": napari.__version__,
               "display": "Xvfb (xvfb-run)" if os.environ.get("HISTOSGE_UNDER_XVFB") else "a real display",
               "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "idle_s": args.idle_s,
               "tick_ms": TICK_MS, "target_ms": TARGET_MS, "result": result}
    payload["val_fraction"] = args.val_fraction
    publish(args.block, payload, render(payload), doc=not args.no_doc)
    return 0 if all(r["trained"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
