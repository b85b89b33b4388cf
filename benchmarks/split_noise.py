"""How much a headline PCC moves with the random hold-out split alone.

For every real section, the 6-NN baseline of the recovery protocol is scored on ``--seeds``
different random halves (genes chosen on each training half, as in ``recovery.py``). The
baseline needs no training, so its spread across splits shows how large a difference
between two methods on ONE split (the recovery table uses seed 0) has to be before it means
anything. Writes ``benchmarks/results/split_noise.json`` and the ``split_noise`` block of
``docs/benchmarks.md``. Usage::

    python benchmarks/split_noise.py --seeds 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402
from noise_ceiling import ceiling_pair  # noqa: E402
from recovery import sections  # noqa: E402

from napari_histosge.evaluation.metrics import gene_metrics, holdout_split, knn_baseline, summarize  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import dense_targets, normalize_log1p, select_genes, top_mean_genes  # noqa: E402


def spread(adata, seeds: int, holdout: float) -> dict:
    """Baseline mean PCC (HVGs, top-50 genes) on ``seeds`` random splits."""
    log = normalize_log1p(adata)
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    hvg, top = [], []
    for seed in range(seeds):
        train_ids, test_ids = holdout_split(list(adata.obs_names), holdout, seed)
        genes = select_genes(log[train_ids], n_top=1000)
        top_genes = top_mean_genes(log[train_ids], n=50)
        scored = genes + [g for g in top_genes if g not in set(genes)]
        y = dense_targets(log, scored)
        tr, te = adata.obs_names.get_indexer(train_ids), adata.obs_names.get_indexer(test_ids)
        metrics = gene_metrics(y[te], knn_baseline(xy[tr], y[tr], xy[te], k=6), scored)
        hvg.append(summarize(metrics, genes)["mean_pcc"])
        top.append(summarize(metrics, top_genes)["mean_pcc"])
    return {"hvg": hvg, "top50": top}


def render(payload: dict) -> str:
    lines = [
        machine_line(payload["machine"]),
        f"6-NN baseline of the recovery protocol on {payload['seeds']} random {payload['holdout']:.0%} hold-out "
        "splits per section (seeds 0, 1, ...). Read a difference between two methods in the recovery table "
        "(one split, seed 0) against these spreads: one much smaller than the SD is noise. 'Noise ceiling HVG / "
        "top-50': the mean noise ceiling of the hidden spots and genes over the same splits (noise_ceiling block), "
        "the best mean PCC any predictor can reach against these measurements.",
        "",
        "| section | spots | PCC HVG: seed 0 | mean | SD | PCC top-50: seed 0 | mean | SD "
        "| noise ceiling HVG / top-50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        h, t = np.asarray(r["hvg"]), np.asarray(r["top50"])
        lines.append(f"| {r['section']} | {r['n_spots']} | {h[0]:.3f} | {h.mean():.3f} | {h.std():.3f} "
                     f"| {t[0]:.3f} | {t.mean():.3f} | {t.std():.3f} "
                     f"| {ceiling_pair(r['section'], range(payload['seeds']))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    root = existing_data_root()
    rows = []
    for name, path in sections(root, None):
        adata = read_spots(path)
        rows.append({"section": name, "n_spots": int(adata.n_obs), **spread(adata, args.seeds, args.holdout)})
        print(name, flush=True)
    payload = {"machine": machine_info(), "seeds": args.seeds, "holdout": args.holdout, "rows": rows}
    publish("split_noise", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
