"""Cell-map speed and memory: segmented cells mapped by the sub-spot model on her2st B4.

The default sub-spot model is fitted on all of B4's spots (1000 HVGs, saved), then each
step runs in its own process, so its peak resident memory is its own: ``nuclei`` maps the
built-in detector's nuclei (detected first, outside the timing) and ``lattice`` a
generated segmentation of cells every 16 px over the slide (about 10^5 of them within a
spot spacing of the spots), both with ``superresolve_cells`` and its default consistency.
The timing covers ``superresolve_cells`` only. Writes ``benchmarks/results/cell_maps_speed.json``
and its block of ``docs/benchmarks-studies.md``::

    python benchmarks/cell_maps_speed.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402

SECTION = "her2st/B4"
#: Pitch (full-res px) of the generated lattice of cells.
LATTICE_PITCH_PX = 16.0

STEP = r"""
import json, resource, sys, time
import numpy as np
import napari_histosge as hs
from napari_histosge.cells import Segmentation, cell_table, detect_nuclei, slide_source
from napari_histosge.slide.open import open_slide
section, model_path, step, pitch = sys.argv[1:5]
adata = hs.read_spots(section)
source = slide_source(section)
model = hs.fit(adata, train_config=hs.train_config("subspot")) if step == "fit" else hs.load_model(model_path)
if step == "fit":
    model.save(model_path)
    print("RESULT " + json.dumps({}))
    raise SystemExit
if step == "nuclei":
    with open_slide(source.image) as slide:
        cells = hs.run(detect_nuclei(slide, mpp=source.mpp, scale=source.scale))
else:
    h, w = source.shape
    ys, xs = np.mgrid[float(pitch) / 2:h:float(pitch), float(pitch) / 2:w:float(pitch)]
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    table = cell_table(np.arange(1, len(xy) + 1), xy, np.full(len(xy), 150.0), mpp=source.mpp,
                       px_per_label_px=4.0, source="lattice")
    cells = Segmentation(np.zeros((-(-h // 4), -(-w // 4)), np.int32), 4.0, table, "lattice")
t0 = time.perf_counter()
mapped = hs.run(hs.steps.superresolve_cells(model, adata, cells))
out = {"segmented": cells.n_cells, "mapped": int(mapped.n_obs), "genes": int(mapped.n_vars),
       "seconds": time.perf_counter() - t0,
       "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
print("RESULT " + json.dumps(out))
"""


def run_step(section: Path, model_path: Path, step: str, cache: str) -> dict:
    env = {**os.environ, "HISTOSGE_CACHE": cache}
    done = subprocess.run([sys.executable, "-c", STEP, str(section), str(model_path), step, str(LATTICE_PITCH_PX)],
                          env=env, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def render(payload: dict) -> str:
    lines = [machine_line(payload["machine"]),
             f"Cell maps on her2st B4: the default sub-spot model (fitted on all spots) maps the cells of a "
             f"segmentation with `superresolve_cells` (default consistency; the image is off, so no cell "
             f"features are read). 'nuclei': the built-in detector's, detected before the timing; 'lattice': "
             f"a generated cell every {payload['pitch_px']:g} px over the slide. 'mapped': the cells within a "
             "spot spacing of a spot. Each step in its own process, peak resident memory of that process "
             "(the section, the model and the segmentation included).",
             "", "| section | cells | segmented | mapped | genes | seconds | peak memory GB |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['section']} | {r['step']} | {r['segmented']:,} | {r['mapped']:,} | {r['genes']} | "
                     f"{r['seconds']:.1f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    section = existing_data_root() / SECTION
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path, cache = Path(tmp) / "model.pt", str(Path(tmp) / "cache")
        run_step(section, model_path, "fit", cache)
        for step in ("nuclei", "lattice"):
            rows.append({"section": section.name, "step": step, **run_step(section, model_path, step, cache)})
            print(rows[-1], flush=True)
    payload = {"machine": machine_info(), "pitch_px": LATTICE_PITCH_PX, "rows": rows}
    publish("cell_maps_speed", payload, render(payload))


if __name__ == "__main__":
    main()
