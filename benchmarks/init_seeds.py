"""How much the training seed alone moves the recovery numbers (one split, several seeds).

The recovery table compares methods on one split (seed 0) with one training run each. This
script keeps that split, its genes and its validation spots, and changes only the seed of the
initial weights, batch order and jitter (``TrainConfig.init_seed``), for HisToSGE with default
features and for the conditioned model (whose HisToSGE companion members then start from
other seeds too). It reports the mean, SD and range of the held-out PCC over those seeds and
on how many seeds the conditioned model is above HisToSGE run with the same seed. Writes
``benchmarks/results/init_seeds.json`` and the ``init_seeds`` block of ``docs/benchmarks.md``.
Usage::

    python benchmarks/init_seeds.py --runs 5                    # her2st sections
    python benchmarks/init_seeds.py --runs 5 --sections B4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, existing_data_root, machine_info, machine_line, publish, wins  # noqa: E402
from recovery import run_variant, sections  # noqa: E402

from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.models import (
    train_config,  # noqa: E402
)
from napari_histosge.pipeline.steps import spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

HISTOSGE, CONDITIONED = "HisToSGE, default features", "Conditioned (neighbours + image)"
#: Init seeds ``STRIDE * run``: far enough apart that no two conditioned runs share a companion member.
STRIDE = 100


def run_section(adata, runs: int) -> dict[str, list[tuple[float, float]]]:
    """``method -> [(PCC HVG, PCC top-50) per init seed]`` on split 0."""
    feats = run_to_end(spot_features(adata, FeatureConfig()))
    out: dict[str, list[tuple[float, float]]] = {HISTOSGE: [], CONDITIONED: []}
    split = argparse.Namespace(holdout=0.5, seed=0)
    for run in range(runs):
        init = STRIDE * run
        for method, config in ((HISTOSGE, train_config(init_seed=init, gene_selection="hvg")),
                               (CONDITIONED, train_config("conditioned", init_seed=init, gene_selection="hvg"))):
            _, row, _ = run_variant(adata, method, config, FeatureConfig(), feats, split)
            out[method].append((row["pcc_hvg"], row["pcc_top50"]))
            print(f"init seed {init} {method}: {row['pcc_hvg']:.3f} / {row['pcc_top50']:.3f}", flush=True)
    return out


def render(payload: dict) -> str:
    lines = [
        machine_line(payload["machine"]),
        f"Recovery protocol, hold-out 50%, split seed 0 (the recovery table's split, genes and validation spots), "
        f"{payload['runs']} training runs per method with init seeds {payload['init_seeds']}: only the initial "
        "weights, batch order and jitter change (the conditioned model's companion members start from the "
        "same seeds). Mean, SD and range of the held-out PCC; 'above HisToSGE' counts the seeds on which the "
        "conditioned model's PCC is above HisToSGE's with the same seed (HVG, top-50).",
        "",
        "| section | method | PCC HVG mean (SD) | HVG min-max | PCC top-50 mean (SD) | top-50 min-max "
        "| above HisToSGE: HVG, top-50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for section, res in payload["results"].items():
        ref = np.asarray(res[HISTOSGE])
        for method in (HISTOSGE, CONDITIONED):
            v = np.asarray(res[method])
            sd = [v[:, j].std(ddof=1) if len(v) > 1 else 0.0 for j in (0, 1)]
            above = "" if method == HISTOSGE else wins(v, ref)
            lines.append(f"| {section} | {method} | {v[:, 0].mean():.3f} ({sd[0]:.3f}) | {v[:, 0].min():.3f}-"
                         f"{v[:, 0].max():.3f} | {v[:, 1].mean():.3f} ({sd[1]:.3f}) | {v[:, 1].min():.3f}-"
                         f"{v[:, 1].max():.3f} | {above} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="training runs per method (init seeds 0, 100, ...)")
    parser.add_argument("--sections", nargs="*", default=["B4", "C2", "C3", "C4"])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    init_seeds = [STRIDE * r for r in range(args.runs)]
    previous = RESULTS / "init_seeds.json"
    old = json.loads(previous.read_text()) if previous.exists() else {}
    old = old["results"] if old.get("init_seeds") == init_seeds else {}  # only results on the same seeds
    results, t0 = {}, time.perf_counter()
    for name, path in sections(existing_data_root(), args.sections):
        print(f"[{name}]", flush=True)
        results[name] = run_section(read_spots(path), args.runs)
    results = {**{k: v for k, v in old.items() if k not in results}, **results}  # sections not re-run stay
    payload = {"machine": machine_info(), "runs": args.runs, "init_seeds": init_seeds, "results": results,
               "wall_s": time.perf_counter() - t0}
    publish("init_seeds", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
