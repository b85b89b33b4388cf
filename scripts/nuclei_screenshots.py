"""Regenerate the Detect nuclei screenshots: the detector's labels over B4, C3, and an SVS slide.

    python scripts/nuclei_screenshots.py            # writes docs/images/nuclei_*.png
    python scripts/nuclei_screenshots.py --out /tmp/shots

Each slide is opened with the plugin's reader, the Detect nuclei widget runs with its
defaults, and the canvas is captured at three zooms (the whole slide, then about 400 and 120 µm
around the densest nuclei), side by side in one picture. Without a display it re-runs itself
under ``xvfb-run``. Data: ``$HISTOSGE_DATA`` or ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from screenshots import wait  # noqa: E402

# (MOB's pixels are too coarse for nuclei: the detector refuses them)
SLIDES = {"B4": "her2st/B4", "C3": "her2st/C3", "cmu_svs": "wsi/cmu_small_region.svs"}
#: Fields of view (µm across the canvas) of the pictures; ``None``: the whole slide.
FIELDS_UM = (None, 400.0, 120.0)
CANVAS = (900, 700)


def densest_point(xy, radius: float):
    """The centroid with the most others within ``radius`` (full-res px)."""
    import numpy as np
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    sample = xy[:: max(1, len(xy) // 3000)]
    counts = [len(n) for n in tree.query_ball_point(sample, radius)]
    return sample[int(np.argmax(counts))]


def settle(app, seconds: float = 1.5) -> None:
    """Process Qt events for a while: napari loads the visible part of a multiscale slide after a move."""
    import time

    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def shoot(name: str, path: Path, out: Path) -> Path:
    import napari
    import numpy as np
    from PIL import Image

    from napari_histosge.plugin.widgets import layers as L
    from napari_histosge.plugin.widgets.nuclei import ROLE_CELLS, NucleiWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*CANVAS)
    viewer.open(str(path), plugin="napari-histosge")
    for layer in L.layers_with_role(viewer.layers, L.ROLE_SPOTS):
        layer.visible = False
    widget = NucleiWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Detect nuclei")
    widget.run()
    app = napari.qt.get_qapp()
    wait(app, lambda: widget.worker is None)
    [labels] = L.layers_with_role(viewer.layers, ROLE_CELLS)
    labels.contour = 1
    labels.opacity = 0.9
    cells = L.histosge_meta(labels)["cells"]
    mpp = cells.uns["histosge"]["mpp"] or 1.0
    y, x = densest_point(np.asarray(cells.obsm["spatial"])[:, ::-1], 50 / mpp) * mpp
    viewer.window._qt_window.removeDockWidget(viewer.window._dock_widgets["Detect nuclei"])
    settle(app)  # the window at its size without the dock
    pictures = []
    for field in FIELDS_UM:
        labels.contour = 0 if field is None else 1  # filled where nuclei are a few screen pixels wide
        for _ in range(2):  # once more after napari's own reaction to the first change
            if field is None:
                viewer.reset_view()
            else:
                viewer.camera.center = (y, x)
                viewer.camera.zoom = viewer.window._qt_viewer.canvas.size[1] / field
            settle(app)
        pictures.append(viewer.screenshot(canvas_only=True, flash=False))
    height = min(p.shape[0] for p in pictures)
    joined = np.concatenate([p[:height, :, :3] for p in pictures], axis=1)
    target = out / f"nuclei_{name}.png"
    image = Image.fromarray(joined)
    image.thumbnail((1500, 500))
    image.quantize(256).save(target, optimize=True)  # a palette keeps the pictures small
    print(f"{name}: {cells.n_obs:,} nuclei -> {target}", flush=True)
    viewer.close()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--slides", nargs="*", default=list(SLIDES))
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("HISTOSGE_UNDER_XVFB"):
        os.environ["HISTOSGE_UNDER_XVFB"] = "1"
        os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, __file__,
                               *(argv if argv is not None else sys.argv[1:])])
    root = Path(os.environ.get("HISTOSGE_DATA", REPO.parent / "shared" / "data"))
    for name in args.slides:
        shoot(name, root / SLIDES[name], Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
