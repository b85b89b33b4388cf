"""Feature extraction throughput on CPU (and GPU when present), as patches/s.

Measured side by side in one run:

- the default (weight-free) extractor: network only (random patches already in
  memory), and end to end with :func:`extract_features_at` on a generated tiled
  JPEG slide (tile reads in a background thread overlapping compute, no cache);
- a ViT-L/16 with random weights (``timm:vit_large_patch16_224``, UNI's
  architecture): network only.

It writes ``benchmarks/results/features_speed.json`` and the ``features_speed``
block of ``docs/benchmarks.md``. Usage::

    python benchmarks/features_speed.py
    python benchmarks/features_speed.py --vit-patches 16 --spots 2000 --no-doc
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_info, machine_line, publish  # noqa: E402


def network_rate(spec: str, n: int, batch: int, device: str) -> dict:
    """Patches/s of one extractor's network on random uint8 patches (after one warm-up batch)."""
    import torch

    from napari_histosge.features import FeatureConfig
    from napari_histosge.features.extract import make_extractor

    ext, amp = make_extractor(FeatureConfig(extractor=spec, device=device), 0.5)
    size = ext.input_size
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    with torch.inference_mode():
        ext.extract(x[: min(batch, 2)])  # builds the network, warms up
    build_s = time.perf_counter() - t0
    done = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(ext.device.type, dtype=amp, enabled=amp is not None):
        while done < n:
            out = ext.extract(x)
            done += len(x)
        if ext.device.type == "cuda":
            torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"extractor": spec, "device": str(ext.device), "amp": str(amp) if amp else None, "input_px": size,
            "dim": int(out.shape[1]), "batch": batch, "patches": done, "seconds": dt,
            "patches_per_s": done / dt, "build_s": build_s}


def end_to_end_rate(n_spots: int, device: str, batch: int) -> dict:
    import tifffile
    from slide_io import bench_dir, make_big_slide

    from napari_histosge.features import FeatureConfig, extract_features_at
    from napari_histosge.progress import run_to_end

    path = make_big_slide(bench_dir() / "synthetic_20000px_jpeg_pyramid.tif", 20_000)
    with tifffile.TiffFile(path) as tf:
        h, w = tf.series[0].shape[:2]
    xy = np.random.default_rng(0).uniform(200, min(h, w) - 200, (n_spots, 2))
    cfg = FeatureConfig(device=device, cache=False, batch_size=batch)
    run_to_end(extract_features_at(path, 1.0, xy[:batch], 224.0, cfg))  # imports, warm-up
    t0 = time.perf_counter()
    out = run_to_end(extract_features_at(path, 1.0, xy, 224.0, cfg))
    dt = time.perf_counter() - t0
    return {"extractor": "default", "device": device, "spots": n_spots, "patch_px": 224, "batch": batch,
            "seconds": dt, "patches_per_s": n_spots / dt, "dim": int(out.features.shape[1])}


def render(payload: dict) -> str:
    lines = [
        machine_line(payload["machine"]),
        "Random-weight networks (timing only). 'network only' feeds random uint8 patches already in "
        "memory; 'end to end' reads 224 px patches around random spots of a generated 20,000 px JPEG "
        "pyramidal TIFF (background reader thread, tiles decoded once) and runs the extractor, no cache.",
        "",
        "| extractor | device | measure | input px | dim | batch | patches | patches/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        dev = r["device"] + (f" ({r['amp']})" if r.get("amp") else "")
        lines.append(f"| {r['extractor']} | {dev} | {r['measure']} | {r.get('input_px', 64)} | {r['dim']} "
                     f"| {r['batch']} | {r.get('patches', r.get('spots'))} | {r['patches_per_s']:,.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--default-patches", type=int, default=4096)
    parser.add_argument("--vit-patches", type=int, default=32)
    parser.add_argument("--spots", type=int, default=5000, help="spots for the end-to-end run")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        r = network_rate("default", args.default_patches, 256, dev)
        rows.append({**r, "measure": "network only"})
        print(rows[-1], flush=True)
        e = end_to_end_rate(args.spots, dev, 256)
        rows.append({**e, "measure": "end to end (read + extract)"})
        print(rows[-1], flush=True)
        n_vit = args.vit_patches if dev == "cpu" else max(args.vit_patches, 1024)
        r = network_rate("timm:vit_large_patch16_224", n_vit, 8 if dev == "cpu" else 128, dev)
        rows.append({**r, "measure": "network only"})
        print(rows[-1], flush=True)
    payload = {"machine": machine_info(), "rows": rows}
    publish("features_speed", payload, render(payload), doc=not args.no_doc, show=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
