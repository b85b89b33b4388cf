"""Map artefacts: measured spots stamped on the sub-spot grid map, and lattice maps painted on glass.

Per section: (a) the default ``subspot`` model fitted on every spot, its grid map at the
model's cell size inside the detected tissue, for each consistency mode; the disc contrast
ratio (:func:`napari_histosge.evaluation.map_artefacts.disc_contrast_ratio`: contrast across
the measured spots' edges over the contrast across circles of the same size between spots,
top-50 genes of the map; 1 = no disc; target at most 1.3 for the default). (b) The share of
a 4-fold lattice map's painted pixels whose centre the detected tissue mask calls glass
(target under 3 %), for the earlier raster (a square of nearest-position cells within 0.75
pitches) and the drawn one (:func:`napari_histosge.export.raster.lattice_raster`, smooth,
inside the tissue the prediction records; it uses the same detected mask, so a non-zero
share would be a bug). Only positions matter for (b), so no lattice model is trained.
One section per process::

    python benchmarks/map_artefacts.py --section her2st/B4
    python benchmarks/map_artefacts.py --render    # its doc block from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, existing_data_root, machines_line, measure_sections, publish  # noqa: E402

import napari_histosge as hs  # noqa: E402
from napari_histosge.evaluation.map_artefacts import disc_contrast_ratio, glass_fraction  # noqa: E402
from napari_histosge.export.raster import rasterize, smooth_raster  # noqa: E402
from napari_histosge.pipeline.grid_maps import CONSISTENCY, DEFAULT_CONSISTENCY, section_mask  # noqa: E402
from napari_histosge.prediction.grid import superresolution_positions  # noqa: E402

FOLD = 4


def measure(path: Path) -> dict:
    adata = hs.read_spots(path)
    tissue = section_mask(adata, "auto")
    positions = superresolution_positions(adata, FOLD, anchor="lattice").positions
    glass = {"nearest_squares": glass_fraction(rasterize(positions, np.zeros(len(positions))), tissue),
             "smooth_in_tissue": glass_fraction(smooth_raster(positions, tissue=tissue), tissue)}
    t0 = time.perf_counter()
    model = hs.fit(adata, train_config=hs.train_config("subspot"))
    fit_s = time.perf_counter() - t0
    xy, diameter = np.asarray(adata.obsm["spatial"]), float(model.meta.spot_diameter_px)
    discs = {}
    for mode in CONSISTENCY:
        t0 = time.perf_counter()
        grid = hs.run(hs.steps.superresolve_grid(model, adata, mask=tissue, consistency=mode))
        discs[mode] = {**disc_contrast_ratio(grid, xy, diameter), "cells": int(grid.n_obs),
                       "seconds": time.perf_counter() - t0}
        print(f"  {mode}: ratio {discs[mode]['ratio']:.2f}", flush=True)
    return {"glass": glass, "discs": discs, "cell_um": model.meta.cell_um, "fit_s": fit_s,
            "default": DEFAULT_CONSISTENCY}


def render(payload: dict) -> str:
    modes = list(CONSISTENCY)
    lines = [
        "Disc contrast ratio of the default `subspot` model's grid map (model's cells, detected tissue) per "
        "consistency mode: contrast across the measured spots' edges over that across same-size circles "
        "between spots, top-50 genes (1 = no disc; target ≤ 1.3 for the default). Lattice map: share of a "
        f"{FOLD}-fold map's painted pixels on glass by the detected tissue mask (target < 3 %).",
        "",
        machines_line(list(payload["machines"].values())),
        "",
        "| section | " + " | ".join(f"disc ratio, {m}" for m in modes)
        + " | glass, nearest squares | glass, smooth in tissue |",
        "|---|" + "---|" * (len(modes) + 2),
    ]
    for section, r in payload["results"].items():
        cells = [f"{r['discs'][m]['ratio']:.2f}" + (" (default)" if m == r["default"] else "") for m in modes]
        glass = [f"{100 * r['glass'][k]:.1f} %" for k in ("nearest_squares", "smooth_in_tissue")]
        lines.append(f"| {section} | " + " | ".join(cells + glass) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", action="append", help="GROUP/NAME under the data root")
    parser.add_argument("--render", action="store_true", help="write the doc block from the saved JSON, run nothing")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    if args.render:
        payload = json.loads((RESULTS / "map_artefacts.json").read_text())
        publish("map_artefacts", payload, render(payload))
        return
    if not args.section:
        parser.error("give --section GROUP/NAME, or --render")
    root = existing_data_root()
    measure_sections("map_artefacts", {Path(s).name: root / s for s in args.section}, measure, render,
                     doc=not args.no_doc)


if __name__ == "__main__":
    main()
