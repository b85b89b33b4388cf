"""Visium HD in the plugin: opening and recolouring 500,000 square bins.

Writes a synthetic Visium HD output (tests/hd_fixture.py: Space Ranger's layout, 10 genes)
with about 500,000 8 µm bins under tissue, reads it with ``read_spots``, then in napari
(under ``xvfb-run`` when there is no display) times

* open: building the spots layer (:func:`~napari_histosge.plugin.widgets.layers.spots_layer`,
  normalisation included), adding it and drawing the first frame, in a viewer that has drawn
  an image and a points layer before (as a section's H&E is added before its spots);
* recolour: the Gene viewer's ``show_gene`` for other genes, each until drawn;

for the raster of the bin grid (the plugin's path for bins) and, for comparison, for the
same bins as a Points layer (the path of Visium spots). A frame is drawn by
``viewer.screenshot(canvas_only=True)``. Writes ``benchmarks/results/visium_hd_render.json``
and the ``visium_hd_render`` block of docs/benchmarks.md. Usage::

    python benchmarks/visium_hd_render.py              # 500,000 bins, raster and Points
    python benchmarks/visium_hd_render.py --side 300 --no-points
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

TARGET_S = 2.0


def drawn(viewer) -> None:
    viewer.screenshot(canvas_only=True, flash=False)


def measure(viewer, adata, genes: list[str], label: str) -> dict:
    import napari

    from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget
    from napari_histosge.plugin.widgets.layers import spots_layer

    start = time.perf_counter()
    data, kwargs, kind = spots_layer(adata, genes[0], name=f"{label} bins")
    built = time.perf_counter()
    layer = viewer.add_layer(napari.layers.Layer.create(data, kwargs, kind))
    viewer.reset_view()
    drawn(viewer)
    opened = time.perf_counter()
    widget = GeneViewerWidget(viewer)
    recolour = []
    for gene in genes[1:]:
        t0 = time.perf_counter()
        assert widget.show_gene(gene)
        drawn(viewer)
        recolour.append(time.perf_counter() - t0)
    viewer.layers.remove(layer)
    return {"layer": kind, "build_s": built - start, "open_s": opened - start, "recolour_s": recolour,
            "recolour_max_s": max(recolour), "recolour_median_s": float(np.median(recolour))}


def run(args) -> dict:
    import napari
    from _report import machine_info

    from hd_fixture import make_visium_hd
    from napari_histosge.io import read_spots

    tmp = Path(tempfile.mkdtemp(prefix="histosge-hd-bench-"))
    try:
        t0 = time.perf_counter()
        truth = make_visium_hd(tmp, n=args.side)
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        adata = read_spots(truth["folder"], bin_um=8)
        read_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    genes = [str(g) for g in adata.var_names[: args.genes + 1]]
    viewer = napari.Viewer(show=True)
    # napari's one-time costs (OpenGL, its first image and points layers import xarray and a unit
    # registry) are not the bins': a section pays them for its H&E, added before its spots
    for warm in (viewer.add_image(np.zeros((2, 2)), units=("um", "um")), viewer.add_points(np.zeros((1, 2)))):
        drawn(viewer)
        viewer.layers.remove(warm)
    results = {"raster": measure(viewer, adata, genes, "raster")}
    if not args.no_points:
        points = adata.copy()
        del points.uns["histosge"]["bins"]  # no bin grid: drawn as Points, like Visium spots
        results["points"] = measure(viewer, points, genes, "points")
    viewer.close()
    return {"machine": machine_info(), "synthetic": True, "bins": int(adata.n_obs), "genes_in_data": adata.n_vars,
            "bin_um": 8, "write_fixture_s": written, "read_spots_s": read_s, "target_s": TARGET_S,
            "display": "Xvfb (xvfb-run)" if os.environ.get("HISTOSGE_UNDER_XVFB") else "a real display",
            "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1000,
                        help="bins per side of the array; a disc of 0.4 side is under tissue (1000: ~500,000)")
    parser.add_argument("--genes", type=int, default=5, help="recolours timed")
    parser.add_argument("--no-points", action="store_true", help="skip the Points comparison")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the block of docs/benchmarks.md")
    args = parser.parse_args(argv)
    from _report import publish, rerun_under_xvfb

    rerun_under_xvfb(__file__, argv)
    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5.*")
    payload = run(args)
    publish("visium_hd_render", payload, render(payload), doc=not args.no_doc)
    return 0


def render(payload: dict) -> str:
    """The Markdown block of docs/benchmarks.md."""
    from _report import machine_line

    lines = [f"**Visium HD bins in the plugin** ({payload['bins']:,} synthetic 8 µm bins, "
             f"{payload['genes_in_data']} genes; {payload['display']}; target {payload['target_s']:g} s). "
             f"`read_spots` took {payload['read_spots_s']:.1f} s.", "",
             "| layer | open (build + add + first frame) s | recolour by gene, median s | max s |",
             "|---|---|---|---|"]
    for name, row in payload["results"].items():
        lines.append(f"| {name} ({row['layer']}) | {row['open_s']:.2f} | {row['recolour_median_s']:.2f} | "
                     f"{row['recolour_max_s']:.2f} |")
    lines += ["", machine_line(payload["machine"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
