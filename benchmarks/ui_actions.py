"""The event loop's longest stall during each action of a user's walk through the plugin on her2st B4.

Run through ``python benchmarks/ui_responsiveness.py --actions`` (or this file). A napari
window is shown (under a virtual X server when there is no display); a ``QTimer`` ticks
every 20 ms in the GUI thread, and a stall is the gap between two ticks. The actions run one
after the other as a user's clicks do, each from the event loop: open B4 (an empty pyramid
cache, then again with the cache written), open each widget, train (positions only, a short
run), super-resolve, switch genes, the comparison panels, draw the first region, export the
figure. An action that starts a background job lasts until the job has finished; each is
followed by a second of idle time, whose stalls count for it too (a deferred repaint).
Writes ``benchmarks/results/ui_actions.json`` and the ``ui_actions`` block of
``docs/benchmarks-studies.md``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TICK_MS = 20
TARGET_MS = 500.0
SETTLE_S = 1.0


def actions(viewer, tmp: Path, b4: Path, epochs: int) -> list[tuple[str, object, object]]:
    """``(name, start, done)``: ``start()`` runs on the event loop, ``done()`` says when its job has finished."""
    from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
    from napari_histosge.plugin.widgets.layers import ROLE_SPOTS, histosge_meta, layers_with_role
    from napari_histosge.plugin.widgets.region import RegionsWidget
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget
    from napari_histosge.plugin.widgets.train import TrainWidget

    w: dict = {}

    def cache_written() -> bool:
        slides = [histosge_meta(lyr).get("slide") for lyr in viewer.layers]
        build = [getattr(s, "cache_build", None) for s in slides if s is not None]
        return all(b is None or not b.is_alive() for b in build)

    def reopen() -> None:
        viewer.layers.clear()
        viewer.open(str(b4), plugin="napari-histosge")

    def dock(name: str, make) -> None:
        w[name] = make(viewer)
        viewer.window.add_dock_widget(w[name], name=name, area="right")

    def train() -> None:
        t = w["Train"]
        [spots] = layers_with_role(viewer.layers, ROLE_SPOTS)
        t.data.value = [spots]
        t.extractor.value, t.n_genes.value, t.epochs.value, t.device.value = "none", 100, epochs, "cpu"
        t.out_dir.value = str(tmp / "models")
        t.start()

    def region() -> None:
        [spots] = layers_with_role(viewer.layers, ROLE_SPOTS)
        xy = np.asarray(spots.data)
        lo, hi = np.percentile(xy, 30, axis=0), np.percentile(xy, 70, axis=0)
        r = w["Regions"]
        r.regions_layer().add_polygons([np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]], [hi[0], lo[1]]])])

    return [
        ("open B4, no cached pyramid", lambda: viewer.open(str(b4), plugin="napari-histosge"), cache_written),
        ("open B4 again, cached pyramid (warm)", reopen, cache_written),
        ("open the Train widget", lambda: dock("Train", TrainWidget), None),
        ("open the Gene viewer", lambda: dock("Gene viewer", GeneViewerWidget), None),
        ("open the Super-resolve widget", lambda: dock("Super-resolve", SuperResolveWidget), None),
        ("open the Regions widget", lambda: dock("Regions", RegionsWidget), None),
        (f"train (positions only, {epochs} epochs)", train,
         lambda: w["Train"].worker is None and w["Train"].last_outcome is not None),
        ("super-resolve (4x lattice)", lambda: w["Super-resolve"].run(), lambda: w["Super-resolve"].worker is None),
        ("switch gene: ERBB2", lambda: w["Gene viewer"].ask_for_gene("ERBB2"), None),
        ("switch gene: GRB7", lambda: w["Gene viewer"].ask_for_gene("GRB7"), None),
        ("comparison panels (observed | predicted | difference)", lambda: w["Gene viewer"].compare(), None),
        ("close the comparison", lambda: w["Gene viewer"].close_comparison(), None),
        ("draw the first region", region, lambda: getattr(w["Regions"], "worker", None) is None),
        ("export the figure (PNG)", lambda: w["Gene viewer"].export_figure(str(tmp / "fig.png")), None),
    ]


def walk(b4: Path, epochs: int, timeout_s: float) -> list[dict]:
    import napari
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtWidgets import QApplication

    tmp = Path(tempfile.mkdtemp(prefix="histosge-ui-actions-"))
    os.environ["HISTOSGE_CACHE"] = str(tmp / "cache")  # the first open builds B4's pyramid
    viewer = napari.Viewer(title="napari-histosge walkthrough", show=True)
    app = QApplication.instance()
    steps = actions(viewer, tmp, b4, epochs)
    rows: list[dict] = []
    state = {"i": -1, "ticks": [], "t0": 0.0, "done_at": None, "error": None, "running": False}

    def next_action() -> None:
        state["i"] += 1
        if state["i"] >= len(steps):
            app.quit()
            return
        name, start, _ = steps[state["i"]]
        state["ticks"], state["t0"], state["done_at"] = [time.perf_counter()], time.perf_counter(), None
        state["running"] = True  # napari may process events inside an action: no next one from there
        try:
            start()
        except Exception as exc:  # noqa: BLE001 - recorded in the results, the walk goes on
            import traceback

            traceback.print_exc()
            state["error"] = f"{type(exc).__name__}: {exc}"
        state["running"] = False

    def tick() -> None:
        now = time.perf_counter()
        if state["i"] < 0 or state["i"] >= len(steps):
            return
        state["ticks"].append(now)
        if state["running"]:
            return
        name, _, done = steps[state["i"]]
        if state["done_at"] is None and (done is None or done() or state["error"]):
            state["done_at"] = now
        if state["done_at"] is not None and now - state["done_at"] >= SETTLE_S:
            gaps = np.diff(np.asarray(state["ticks"])) * 1000.0
            rows.append({"action": name, "seconds": state["done_at"] - state["t0"],
                         "max_stall_ms": float(gaps.max()) if len(gaps) else float("nan"),
                         "stalls_over_target": int((gaps > TARGET_MS).sum()), "error": state["error"]})
            state["error"] = None
            print(f"{name}: {rows[-1]['seconds']:.1f} s, longest stall {rows[-1]['max_stall_ms']:.0f} ms",
                  flush=True)
            next_action()

    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    QTimer.singleShot(2000, next_action)
    QTimer.singleShot(int(timeout_s * 1000), app.quit)
    app.exec_()
    timer.stop()
    print(f"walk ended after {len(rows)} of {len(steps)} actions", flush=True)
    try:
        viewer.close()
    except RuntimeError:  # the window is gone already
        pass
    return rows


def render(payload: dict) -> str:
    from _report import machine_line

    lines = [machine_line(payload["machine"]),
             f"napari {payload['napari']} under {payload['display']}, software OpenGL; her2st B4 through the "
             f"plugin's widgets as a user clicks them, each action started from the event loop. A {TICK_MS} ms "
             f"QTimer in the GUI thread; stall = the longest gap between two ticks while the action (and its "
             f"background job) ran and for {SETTLE_S:g} s after. Target: no stall over {TARGET_MS:g} ms.",
             "",
             "| action | seconds | longest stall ms | stalls > 500 ms | target |",
             "|---|---|---|---|---|"]
    for r in payload["rows"]:
        verdict = "met" if r["max_stall_ms"] <= TARGET_MS else "not met"
        note = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['action']}{note} | {r['seconds']:.1f} | {r['max_stall_ms']:.0f} | "
                     f"{r['stalls_over_target']} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    from _report import data_root, rerun_under_xvfb

    rerun_under_xvfb(__file__, argv)
    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5.*")
    b4 = data_root() / "her2st" / "B4"
    if not b4.is_dir():
        sys.exit(f"her2st B4 not found under {data_root()} (set HISTOSGE_DATA)")
    rows = walk(b4, args.epochs, args.timeout_s)
    import napari
    from _report import machine_info, publish

    payload = {"machine": machine_info(), "napari": napari.__version__,
               "display": "Xvfb (xvfb-run)" if os.environ.get("HISTOSGE_UNDER_XVFB") else "a real display",
               "tick_ms": TICK_MS, "target_ms": TARGET_MS, "rows": rows}
    publish("ui_actions", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
