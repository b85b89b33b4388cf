"""Speed of the nucleus-morphometric extractor beside the default one, on real spots, as patches/s.

Both extractors run end to end (:func:`extract_spot_features`: tile reads in a background
thread, no cache) over the same her2st spots, one after the other in one process, so the
machine's load is shared alike; the spots are read once first to warm the file cache.
Writes ``benchmarks/results/morphometrics_speed.json`` and the ``morphometrics_speed`` block
(:mod:`_report` places it). Usage::

    python benchmarks/morphometrics_speed.py                 # B4 and C3, every spot
    python benchmarks/morphometrics_speed.py --sections B4 --no-doc
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402

from napari_histosge.features import FeatureConfig, extract_spot_features  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

EXTRACTORS = ("default", "nuclei", "default+nuclei")


def measure(adata, spec: str) -> dict:
    """One end-to-end extraction of every spot of ``adata`` with ``spec``."""
    config = FeatureConfig(extractor=spec, device="cpu", cache=False)
    t0 = time.perf_counter()
    feats = run_to_end(extract_spot_features(adata, config))
    seconds = time.perf_counter() - t0
    return {"extractor": spec, "spots": int(adata.n_obs), "dim": int(feats.features.shape[1]),
            "seconds": seconds, "patches_per_s": adata.n_obs / seconds}


def render(payload: dict) -> str:
    lines = [machine_line(payload["machine"]),
             "Every spot of the section, end to end (patch reads and extraction, no cache), on the CPU.",
             "", "| section | extractor | spots | dims | seconds | patches/s |", "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['section']} | `{r['extractor']}` | {r['spots']} | {r['dim']} | {r['seconds']:.1f} "
                     f"| {r['patches_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", default=["B4", "C3"], help="her2st sections")
    parser.add_argument("--no-doc", action="store_true", help="do not update the docs block")
    args = parser.parse_args(argv)
    root, rows = existing_data_root(), []
    info = machine_info()
    for name in args.sections:
        adata = read_spots(root / "her2st" / name)
        run_to_end(extract_spot_features(adata, FeatureConfig(device="cpu", cache=False)))  # warm the file cache
        rows += [{"section": name, **measure(adata, spec)} for spec in EXTRACTORS]
    payload = {"machine": info, "rows": rows}
    publish("morphometrics_speed", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
