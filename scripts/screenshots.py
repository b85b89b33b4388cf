"""Regenerate the user-guide screenshots from the real her2st B4 section.

    python scripts/screenshots.py            # writes docs/images/*.png
    python scripts/screenshots.py --epochs 30 --out /tmp/shots

It drives the plugin exactly as a user would (reader, Train, Super-resolve and Gene
viewer widgets) and captures the window with napari's screenshot API. Without a
display it re-runs itself under ``xvfb-run`` (a virtual X server).
Data: ``$HISTOSGE_DATA/her2st/B4`` or ``../shared/data/her2st/B4`` beside the repo.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFERRED_GENES = ("ERBB2", "GRB7", "KRT19", "MGP", "IGKC", "COL1A1")
#: Markers of HER2+ breast tissue (tumour, stroma, immune) the pictures train on, where present.
MARKER_GENES = PREFERRED_GENES + (
    "KRT8", "KRT18", "EPCAM", "COL1A2", "COL3A1", "IGHG1", "IGHA1", "FN1", "SPARC", "LUM", "DCN", "CD74",
    "HLA-DRA", "MUC1", "S100A6", "TFF1", "TFF3", "FASN", "SCD", "MUCL1", "PIP", "CRISP3", "POSTN", "ACTB")


def data_dir() -> Path:
    root = Path(os.environ.get("HISTOSGE_DATA", REPO.parent / "shared" / "data"))
    section = root / "her2st" / "B4"
    if not section.is_dir():
        sys.exit(f"her2st B4 not found at {section}; set HISTOSGE_DATA to the folder holding her2st/")
    return section


def wait(app, predicate, timeout: float = 1800.0) -> None:
    """Process Qt events until ``predicate()`` (the viewer stays live meanwhile)."""
    start = time.time()
    while not predicate():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - start > timeout:
            raise TimeoutError("timed out waiting for the plugin")


def pick_gene(model_genes: list[str], heatmap) -> str:
    """ERBB2 (HER2) or another marker when the model predicts it, else the best-fitting gene."""
    from napari_histosge.plugin.widgets.gene_viewer import gene_pcc

    preferred = next((g for g in PREFERRED_GENES if g in model_genes), None)
    if preferred is not None:
        return preferred
    meta = heatmap.metadata["histosge"]
    scores = {g: gene_pcc(meta["adata"], meta["source_adata"], g) for g in model_genes}
    return max(scores, key=lambda g: scores[g] if scores[g] == scores[g] else -2.0)


def hot_spot_outline(layer):
    """A wobbly loop (world row, col) around where ``layer``'s gene is highest, as a user would lasso it."""
    import numpy as np

    from napari_histosge.plugin.widgets.layers import gene_values, um_per_px

    meta = layer.metadata["histosge"]
    adata = meta["adata"]
    values = gene_values(adata, meta["gene"])
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    top = xy[values >= np.nanpercentile(values, 90)]
    centre = np.median(top, axis=0)
    radius = 0.6 * np.median(np.linalg.norm(top - centre, axis=1))
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    loop = centre + radius * np.column_stack([np.cos(t), np.sin(t)]) * (1 + 0.15 * np.sin(3 * t))[:, None]
    return loop[:, ::-1] * (um_per_px(adata) or 1.0)


def save(viewer, path: Path) -> None:
    from PIL import Image

    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for toast in QApplication.instance().allWidgets():  # toasts would cover the canvas
        if isinstance(toast, NapariQtNotification):
            toast.close()
    QApplication.processEvents()
    image = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(image).save(path, optimize=True)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="folder for the PNGs")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (CPU: about 1 s each)")
    parser.add_argument("--n-genes", type=int, default=0,
                        help="train on this many highly variable genes instead of the marker genes")
    args = parser.parse_args(argv)

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        # No display: run again under a virtual X server that is torn down after Qt exits.
        import shutil

        if shutil.which("xvfb-run"):
            cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, __file__, *(argv or sys.argv[1:])]
            os.execvp(cmd[0], cmd)
        sys.exit("no display: install Xvfb (xvfb-run) or run under a desktop session")

    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    # Toasts would cover the canvas in the pictures; the widgets' status lines remain.
    get_settings().application.gui_notification_level = "none"

    from napari_histosge.plugin.widgets.state import SESSION_MODELS
    from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
    from napari_histosge.plugin.widgets.layers import ROLE_HEATMAP, ROLE_PRED_SPOTS, ROLE_SPOTS, layers_with_role
    from napari_histosge.plugin.widgets.region import RegionsWidget
    from napari_histosge.plugin.widgets.superres import GRID, SuperResolveWidget
    from napari_histosge.plugin.widgets.train import GENES_LIST, TrainWidget

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-histosge", show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.scale_bar.visible = True
    app = QApplication.instance()
    viewer.open(str(data_dir()), plugin="napari-histosge")
    [spots] = layers_with_role(viewer.layers, ROLE_SPOTS)
    genes = GeneViewerWidget(viewer)
    viewer.window.add_dock_widget(genes, name="Gene viewer", area="right")
    gene = next((g for g in PREFERRED_GENES if g in spots.metadata["histosge"]["adata"].var_names), None)
    if gene:
        genes.show_gene(gene)
    viewer.reset_view()
    wait(app, lambda: True)
    save(viewer, out / "slide_spots.png")

    # Training in progress: the activity dock bar, loss curve and a still-live viewer.
    train = TrainWidget(viewer)
    train_dock = viewer.window.add_dock_widget(train, name="Train", area="right")
    train.out_dir.value = tempfile.mkdtemp(prefix="histosge-shots-")  # the checkpoint stays out of the repo
    train.epochs.value = args.epochs
    if args.n_genes:
        train.n_genes.value = args.n_genes
    else:
        measured = set(spots.metadata["histosge"]["adata"].var_names)
        train.genes_mode.value = GENES_LIST
        train.gene_list.value = ", ".join(g for g in MARKER_GENES if g in measured)
    train.data.value = spots
    viewer.window._status_bar._toggle_activity_dock(True)
    train.start_button.native.click()
    wait(app, lambda: train.worker is None or len(train.loss_curve.values) >= max(3, args.epochs // 3))
    save(viewer, out / "training.png")
    wait(app, lambda: train.worker is None)
    if train.last_model is None:
        print(f"training failed: {train.status.value}")
        return 1
    viewer.window._status_bar._toggle_activity_dock(False)
    viewer.window.remove_dock_widget(train_dock)

    # 4x super-resolution heatmap over the H&E.
    sr = SuperResolveWidget(viewer)
    sr_dock = viewer.window.add_dock_widget(sr, name="Super-resolve", area="right")
    sr.data.value = spots
    sr.model.value = SESSION_MODELS.names()[-1]
    sr.fold.value = 4
    sr.run_button.native.click()
    wait(app, lambda: sr.worker is None)
    if not layers_with_role(viewer.layers, ROLE_HEATMAP):
        print(f"super-resolution failed: {sr.status.value}")
        return 1
    shown = pick_gene(train.last_model.genes, layers_with_role(viewer.layers, ROLE_HEATMAP)[0])
    print(f"showing {shown}")
    genes.refresh_genes()
    genes.show_gene(shown)
    spots.visible = False
    for layer in layers_with_role(viewer.layers, ROLE_PRED_SPOTS):
        layer.visible = False
    viewer.reset_view()
    wait(app, lambda: True)
    save(viewer, out / "heatmap_4x.png")
    viewer.window.remove_dock_widget(sr_dock)

    # Gene viewer: observed | predicted | difference side by side, with PCC.
    genes.compare()
    wait(app, lambda: True)
    save(viewer, out / "gene_viewer.png")
    genes.close_comparison()
    for layer in layers_with_role(viewer.layers, ROLE_HEATMAP):
        layer.visible = False

    # The sub-spot model's grid of cells, masked to the tissue, on the same genes.
    train_genes = list(train.last_model.genes)
    train = TrainWidget(viewer)
    train_dock = viewer.window.add_dock_widget(train, name="Train", area="right")
    train.out_dir.value = tempfile.mkdtemp(prefix="histosge-shots-")
    train.list_models()  # (a new widget lists the other models once its background imports are done)
    train.model_name.value = "subspot"
    train.genes_mode.value = GENES_LIST
    train.gene_list.value = ", ".join(train_genes)
    train.data.value = spots
    train.start_button.native.click()
    wait(app, lambda: train.worker is None)
    viewer.window.remove_dock_widget(train_dock)
    if train.last_model is None:
        print(f"sub-spot training failed: {train.status.tooltip}")
        return 1
    sr = SuperResolveWidget(viewer)
    sr_dock = viewer.window.add_dock_widget(sr, name="Super-resolve", area="right")
    sr.data.value = spots
    sr.model.value = SESSION_MODELS.names()[-1]
    sr.positions.value = GRID
    sr.run_button.native.click()
    wait(app, lambda: sr.worker is None)
    genes.show_gene(shown if shown in train.last_model.genes else train.last_model.genes[0])
    viewer.reset_view()
    wait(app, lambda: True)
    save(viewer, out / "grid_map.png")

    # Regions: a lasso around where the shown gene is highest, and the genes most above the rest.
    viewer.window.remove_dock_widget(sr_dock)
    regions = RegionsWidget(viewer)
    viewer.window.add_dock_widget(regions, name="Regions", area="right")
    [grid] = layers_with_role(viewer.layers, ROLE_HEATMAP)[-1:]
    regions.target.value = grid
    regions.start_drawing()
    regions.shapes_layer().add_polygons([hot_spot_outline(grid)])
    regions.refresh()
    wait(app, lambda: regions.tables is not None and regions._job is None)
    wait(app, lambda: True)
    save(viewer, out / "regions.png")
    print(f"trained on {len(train_genes)} genes")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
