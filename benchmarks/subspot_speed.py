"""Sub-spot model speed and memory: fitting on a section, and a grid of cells predicted with its features.

For her2st B4 (full-resolution H&E, 14 µm cells) and DLPFC 151676 (3,460 spots, a low-res
image only: cells of two image pixels), each step runs in its own process so its peak
resident memory is its own: ``fit`` (cell features under the spots, calibration, ridge;
1000 HVGs) and ``grid`` (``superresolve_grid`` over the tissue: mask, cell features,
prediction, consistency), with a fresh ``$HISTOSGE_CACHE`` per section. Writes
``benchmarks/results/subspot_speed.json`` and its block of ``docs/benchmarks.md``::

    python benchmarks/subspot_speed.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402

SECTIONS = {"B4": "her2st/B4", "151676": "dlpfc/151676"}

STEP = r"""
import json, resource, sys, time
import napari_histosge as hs
section, model_path, step, image = sys.argv[1:5]
adata = hs.read_spots(section)
t0 = time.perf_counter()
if step == "fit":
    config = hs.train_config("subspot", image_modulation=image == "1")
    model = hs.run(hs.steps.fit(adata, train_config=config))
    model.save(model_path)
    out = {"cells": None, "genes": len(model.genes), "cell_um": model.meta.cell_um}
else:
    model = hs.load_model(model_path, device="cpu")
    t0 = time.perf_counter()
    grid = hs.run(hs.steps.superresolve_grid(model, adata))
    out = {"cells": int(grid.n_obs), "genes": int(grid.n_vars), "cell_um": grid.uns["histosge"]["grid"]["cell_um"]}
out["seconds"] = time.perf_counter() - t0
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print("RESULT " + json.dumps(out))
"""


def run_step(section: Path, model_path: Path, step: str, cache: str, image: bool) -> dict:
    env = {**__import__("os").environ, "HISTOSGE_CACHE": cache}
    done = subprocess.run([sys.executable, "-c", STEP, str(section), str(model_path), step, "1" if image else "0"],
                          env=env,
                          capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def render(payload: dict) -> str:
    lines = [machine_line(payload["machine"]),
             "Sub-spot model, default settings (the image is off, so no cell features are read): `fit` is "
             "training on all of a section's spots (1000 HVGs); `grid` is `superresolve_grid` over the tissue "
             "(tissue mask, prediction, consistency); '+ image' rows train and map with the image modulation "
             "on (cell features of every cell, calibration one scale up). Each step in its own "
             "process, peak resident memory of that process; a fresh cache per section (the grid step "
             "reuses the slide pyramid the fit built).",
             "", "| section | step | cell µm | cells | genes | seconds | peak memory GB |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        cells = "" if r["cells"] is None else f"{r['cells']:,}"
        lines.append(f"| {r['section']} | {r['step']} | {r['cell_um']:.3g} | {cells} | {r['genes']} | "
                     f"{r['seconds']:.1f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS))
    args = parser.parse_args()
    root = existing_data_root()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections:
            for image in (False, True):
                model_path = Path(tmp) / f"{name}-{image}.pt"
                for step in ("fit", "grid"):
                    result = run_step(root / SECTIONS[name], model_path, step, str(Path(tmp) / f"cache-{name}"),
                                      image)
                    rows.append({"section": name, "step": step + (" + image" if image else ""), **result})
                    print(rows[-1], flush=True)
    payload = {"machine": machine_info(), "rows": rows}
    publish("subspot_speed", payload, render(payload))


if __name__ == "__main__":
    main()
