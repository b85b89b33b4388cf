"""Uncertainty benchmark: does the conditioned model's spread follow its error on hidden spots?

For each real section (``$HISTOSGE_DATA``, default ``../shared/data``) this runs the recovery
protocol with the conditioned model (same split and genes as ``benchmarks/recovery.py``) and
scores its spread (``layers["std"]``: the generator samples' spread plus the counting noise of
a measurement) against the absolute error on the hidden spots, over the top-1000 HVGs
(:mod:`napari_histosge.evaluation.uncertainty`), and the samples' spread alone. Two spreads
anyone could compute without a generator are scored against the same error, as references:
the spread of the 6 nearest training spots' values, and the distance to the nearest training
spot (a ranking only: it is not in expression units). It writes
``benchmarks/results/uncertainty.json`` and the ``uncertainty`` block of
``docs/benchmarks.md``. Usage::

    python benchmarks/uncertainty.py
    python benchmarks/uncertainty.py --sections 151675 --merge   # add to the saved sections
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, publish, run_lines, saved_rows  # noqa: E402
from noise_ceiling import ceiling_cell  # noqa: E402
from recovery import sections  # noqa: E402

from napari_histosge.evaluation.uncertainty import uncertainty_metrics  # noqa: E402
from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import dense_targets, normalize_log1p  # noqa: E402
from napari_histosge.models import train_config  # noqa: E402
from napari_histosge.pipeline.recovery import recover  # noqa: E402
from napari_histosge.pipeline.steps import spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

#: The model's spread without the counting noise (what ``layers["std"]`` held before 2026-11-24).
SAMPLES_ALONE = "conditioned model, generator samples alone (the spread before 2026-11-24)"


def reference_spreads(adata, result) -> dict[str, np.ndarray]:
    """Spreads without a generator, ``(hidden spots, scored genes)``: the 6 nearest training
    spots' standard deviation, and the distance to the nearest training spot."""
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    rows = {s: i for i, s in enumerate(adata.obs_names)}
    train = np.array([rows[s] for s in result.train_ids])
    test = np.array([rows[s] for s in result.test_ids])
    values = dense_targets(normalize_log1p(adata)[result.train_ids], result.scored_genes)
    dist, nearest = cKDTree(xy[train]).query(xy[test], k=6)
    n_genes = len(result.scored_genes)
    return {"6 nearest training spots' SD": values[nearest].std(axis=1),
            "distance to nearest training spot": np.repeat(dist[:, :1], n_genes, axis=1)}


def _samples_alone(adata, result, feats) -> np.ndarray:
    """The model's spread without the counting noise, at the hidden spots and scored genes."""
    rows = adata.obs_names.get_indexer(result.test_ids)
    _, std = result.model.predict(feats.features[rows], feats.mean_rgb[rows],
                                  np.asarray(adata.obsm["spatial"], np.float64)[rows],
                                  return_std=True, counting_noise=False)
    return std[:, [result.model.genes.index(g) for g in result.scored_genes]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", help="section names (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the saved rows of sections not run now (results/uncertainty.json)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    root = existing_data_root()
    config = train_config("conditioned", seed=args.seed, gene_selection="hvg")  # the product defaults
    todo = sections(root, args.sections)
    rows, machines = saved_rows("uncertainty", {n for n, _ in todo}, "machines") if args.merge else ([], {})
    for name, path in todo:
        machines[name] = machine_info()  # before the run: its load average is what the run met
        adata = read_spots(path)
        feats = run_to_end(spot_features(adata, FeatureConfig()))
        result = run_to_end(recover(adata, holdout=args.holdout, seed=args.seed, train_config=config,
                                    features=feats))
        s = result.summary()
        base = {"section": name, "n_hidden": len(result.test_ids), "pcc_hvg": s["model"]["mean_pcc"]}
        rows.append({**base, "spread": "conditioned model (samples + counting noise; the default)",
                     **result.uncertainty})
        truth = dense_targets(normalize_log1p(adata)[result.test_ids], result.scored_genes)
        pred = np.asarray(result.predictions[:, result.scored_genes].X)
        spreads = {SAMPLES_ALONE: _samples_alone(adata, result, feats)}
        spreads.update({f"reference: {k}": v for k, v in reference_spreads(adata, result).items()})
        for label, spread in spreads.items():
            u = uncertainty_metrics(truth, pred, spread)
            if "distance" in label:  # not in expression units: only its ranking means anything
                u = {k: u[k] for k in ("gene_rank_corr", "n_genes_ranked", "spot_rank_corr")}
            rows.append({**base, "spread": label, **u})
        print(f"[{name}] " + "; ".join(f"{r['spread']}: gene {r['gene_rank_corr']:.3f}, spot {r['spot_rank_corr']:.3f}"
                                       for r in rows if r["section"] == name), flush=True)
        payload = {"machines": machines, "holdout": args.holdout, "seed": args.seed, "rows": rows}
        publish("uncertainty", payload, render(payload), doc=not args.no_doc, show=False)
    return 0


def _fmt(r: dict, key: str, spec: str) -> str:
    v = r.get(key)
    return "" if v is None or not np.isfinite(v) else format(v, spec)


def render(payload: dict) -> str:
    lines = [
        "### Uncertainty: does the spread follow the error?",
        "",
        *run_lines(payload["machines"]),
        f"Recovery protocol, hold-out {payload['holdout']:.0%} (seed {payload['seed']}), the conditioned model "
        "with its defaults (4 generator samples per spot; its spread adds the Poisson counting noise of a "
        "measurement at the neighbours' kriged depth to the samples' spread); over the top-1000 HVGs of the "
        "hidden spots. "
        "'rank corr per gene': Spearman correlation over hidden spots between the spread and the absolute "
        "error, averaged over genes; 'per spot': between each spot's root-mean-square spread and its "
        "root-mean-square error over genes; 'within 1 / 2 spreads': share of measured values that close "
        "to the prediction (0.68 / 0.95 for a well-scaled Gaussian spread); 'RMS error / RMS spread': 1 "
        "when the spread has the error's size. The reference rows score two spreads that need no "
        "generator against the same predictions. 'Noise ceiling HVG': the ceiling of the same hidden spots "
        "and genes (noise_ceiling block), the best mean PCC any predictor can reach against these measurements.",
        "",
        "| section | hidden spots | PCC HVG | noise ceiling HVG | spread | rank corr per gene | rank corr per spot "
        "| within 1 / 2 spreads | RMS error / RMS spread |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        ceiling = ceiling_cell(r["section"], "hvg", (payload["seed"],))
        cover = (f"{r['coverage_1sd']:.2f} / {r['coverage_2sd']:.2f}" if "coverage_1sd" in r else "")
        lines.append(f"| {r['section']} | {r['n_hidden']} | {r['pcc_hvg']:.3f} | {ceiling} | {r['spread']} "
                     f"| {_fmt(r, 'gene_rank_corr', '.3f')} | {_fmt(r, 'spot_rank_corr', '.3f')} | {cover} "
                     f"| {_fmt(r, 'error_to_spread', '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
