"""Recovery benchmark: hide half of the spots of every real section, predict them.

For each section in ``$HISTOSGE_DATA`` (default ``../shared/data``) this runs, on the
same split and genes:

- the HisToSGE model with the default (weight-free) extractor, spatial attention groups;
- the same model with image features switched off (positions only);
- the same model with its image-input weights at PyTorch's initialisation instead of zero
  (``image_init`` 1.0, the default before 2026-11-24);
- the same model with attention groups in file order, as the reference code does;
- the sub-spot model (a grid of cells; each hidden spot the mean of its cells);
- the 6-nearest-neighbour inverse-distance baseline.

It writes ``benchmarks/results/recovery.json`` and the ``recovery`` table of
``docs/benchmarks.md``. Usage::

    python benchmarks/recovery.py                      # every section, paper defaults
    python benchmarks/recovery.py --sections B4 --epochs 300
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, update_block, write_json  # noqa: E402
from noise_ceiling import CEILING_NOTE, ceiling_pair  # noqa: E402

from napari_histosge.evaluation.metrics import read_layer_annotations, spatial_ari  # noqa: E402
from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import dense_targets, normalize_log1p  # noqa: E402
from napari_histosge.models import (
    HisToSGEConfig,  # noqa: E402
    train_config,  # noqa: E402
)
from napari_histosge.pipeline.recovery import recover  # noqa: E402
from napari_histosge.pipeline.steps import NO_IMAGE, spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402


def sections(root: Path, wanted: list[str] | None) -> list[tuple[str, Path]]:
    found = [(p.name, p) for p in sorted((root / "her2st").glob("*")) if p.is_dir()]
    found += [(p.name, p) for p in sorted((root / "dlpfc").glob("*")) if p.is_dir()]
    return [s for s in found if not wanted or s[0] in wanted]


def run_variant(adata, name, train_config, feature_config, features, args):
    t0 = time.perf_counter()
    result = run_to_end(recover(
        adata, holdout=args.holdout, seed=args.seed, train_config=train_config,
        feature_config=feature_config, features=features,
    ))
    wall = time.perf_counter() - t0
    s = result.summary()
    row = {
        "variant": name,
        "pcc_hvg": s["model"]["mean_pcc"], "pcc_top50": s["model_top_mean"]["mean_pcc"],
        "mse": s["model"]["mse"], "mae": s["model"]["mae"],
        "pcc_all_spots_incl_training": s["model_all_spots_incl_training"]["mean_pcc"],
        "fit_s": result.timings.get("fit_s", float("nan")), "wall_s": wall,
        # Early stopping: the epoch whose weights were kept, and where training ended.
        "best_epoch": result.model.meta.best_epoch,
        "epochs_run": (result.model.meta.stopped_at if result.model.meta.stopped_at is not None
                       else len(result.model.meta.history)),
        # A small section's fixed schedule on every training spot (no epoch chosen).
        "schedule_epochs": result.model.meta.schedule_epochs,
        # The conditioned model's HisToSGE companion: its weight in the prediction.
        "companion_weight": getattr(result.model, "blend_weight", None),
    }
    baseline = {
        "variant": "6-NN baseline",
        "pcc_hvg": s["baseline"]["mean_pcc"], "pcc_top50": s["baseline_top_mean"]["mean_pcc"],
        "mse": s["baseline"]["mse"], "mae": s["baseline"]["mae"],
        "pcc_all_spots_incl_training": float("nan"), "fit_s": 0.0, "wall_s": float("nan"),
    }
    return result, row, baseline


def domain_ari(section_dir: Path, adata, result) -> dict:
    tsv = next(section_dir.glob("*_layer_annotations.tsv"), None)
    if tsv is None:
        return {}
    labels = read_layer_annotations(tsv).reindex(result.test_ids).to_numpy()
    measured = dense_targets(normalize_log1p(adata)[result.test_ids], result.scored_genes)
    predicted = np.asarray(result.predictions[:, result.scored_genes].X)
    return {
        "ari_predicted": spatial_ari(predicted, labels, seed=0),
        "ari_measured": spatial_ari(measured, labels, seed=0),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", help="section names (default: all)")
    parser.add_argument("--epochs", type=int, default=HisToSGEConfig().epochs)
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-file-order", action="store_true", help="skip the file-order grouping variant")
    parser.add_argument("--only", help="re-run only the variants whose label starts with this (e.g. 'Conditioned'); "
                                       "the other rows of those sections are kept from the last run")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)

    root = existing_data_root()
    info = machine_info()
    base_train = HisToSGEConfig(epochs=args.epochs, seed=args.seed, gene_selection="hvg")
    rows = []
    for name, path in sections(root, args.sections):
        adata = read_spots(path)
        feature_config = FeatureConfig()
        t0 = time.perf_counter()
        feats = run_to_end(spot_features(adata, feature_config))
        feat_s = time.perf_counter() - t0
        print(f"[{name}] {adata.n_obs} spots, features {feats.features.shape[1]}-d in {feat_s:.1f} s", flush=True)
        variants = [("HisToSGE, default features", base_train, feature_config, feats)]
        variants.append(("HisToSGE, image features off", base_train, FeatureConfig(extractor=NO_IMAGE), None))
        variants.append(("Conditioned (neighbours + image)",
                         train_config("conditioned", seed=args.seed, gene_selection="hvg"), feature_config, feats))
        variants.append(("Sub-spot (grid of cells)", train_config("subspot", seed=args.seed, gene_selection="hvg"),
                         feature_config, feats))
        # The previous default: PyTorch's initialisation of the image-input weights (image_init 1).
        variants.append(("HisToSGE, default features, image weights at PyTorch init",
                         replace(base_train, image_init=1.0), feature_config, feats))
        if not args.no_file_order:
            variants.append(("HisToSGE, file-order groups", replace(base_train, grouping="file_order"),
                             feature_config, feats))
        if args.only:
            variants = [v for v in variants if v[0].lower().startswith(args.only.lower())]
        for i, (label, tc, fc, ff) in enumerate(variants):
            result, row, baseline = run_variant(adata, label, tc, fc, ff, args)
            row.update(domain_ari(path, adata, result))
            if i == 0:
                row["features_s"] = feat_s
                rows.append({"section": name, "n_spots": adata.n_obs, "n_genes": len(result.scored_genes),
                             **baseline})
            rows.append({"section": name, "n_spots": adata.n_obs, "n_genes": len(result.scored_genes), **row})
            print(f"[{name}] {label}: PCC {row['pcc_hvg']:.3f} (top50 {row['pcc_top50']:.3f}), "
                  f"baseline {baseline['pcc_hvg']:.3f}; fit {row['fit_s']:.1f} s", flush=True)
        _save(rows, info, args)  # after every section, so a long run keeps what it finished
    return 0


def _save(rows: list[dict], info: dict, args) -> None:
    for row in rows:
        if row["variant"].startswith("Conditioned"):
            row.setdefault("epochs", train_config("conditioned").epochs)
        if row["variant"].startswith("Sub-spot"):
            row["epochs"] = "closed form"  # fitted without epochs
        row.setdefault("epochs", args.epochs)
    payload = {"machine": info, "holdout": args.holdout, "seed": args.seed,
               "rows": _merge_previous(rows, args)}
    out = write_json("recovery", payload)
    print(f"results -> {out}")
    if not args.no_doc:
        update_block("recovery", render(payload))


def _merge_previous(rows: list[dict], args) -> list[dict]:
    """Keep earlier rows of sections not run now (same protocol), so sections can run separately."""
    import json

    from _report import RESULTS

    path = RESULTS / "recovery.json"
    if not path.exists():
        return rows
    previous = json.loads(path.read_text())
    if (previous.get("holdout"), previous.get("seed")) != (args.holdout, args.seed):
        return rows
    done = {(r["section"], r["variant"]) for r in rows}
    done_sections = {r["section"] for r in rows}
    kept = [r for r in previous.get("rows", [])
            if (r["section"] not in done_sections if not args.only else (r["section"], r["variant"]) not in done)]
    if not args.only:
        return kept + rows
    # Re-runs of single variants take their old places in the table.
    fresh = {(r["section"], r["variant"]): r for r in rows}
    merged = [fresh.pop((r["section"], r["variant"]), r) for r in previous.get("rows", [])]
    for row in fresh.values():  # new variants go after the last row of their section
        at = max((i for i, r in enumerate(merged) if r["section"] == row["section"]), default=len(merged) - 1)
        merged.insert(at + 1, row)
    return merged


def _fmt(v, digits=3):
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def render(payload: dict) -> str:
    lines = [
        machine_line(payload["machine"]),
        f"Hold-out {payload['holdout']:.0%} of spots (seed {payload['seed']}); epochs per row. "
        "PCC is the mean per-gene Pearson correlation over the HIDDEN spots on the "
        "log1p(normalize_total 1e4) scale; MSE/MAE over the top-1000 HVGs. "
        "'PCC all spots' scores every spot including the training ones, as the reference "
        "test.py does: it is not a held-out figure. " + CEILING_NOTE,
        "",
        "| section | spots | method | epochs: at most (ran; kept) | PCC HVG | PCC top-50 mean "
        "| noise ceiling HVG / top-50 "
        "| MSE | MAE | PCC all spots (incl. train) | fit s | ARI pred / measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in payload["rows"]:
        ceiling = "" if r["section"] in seen else ceiling_pair(r["section"], (payload["seed"],))
        seen.add(r["section"])
        ari = ""
        if "ari_predicted" in r:
            ari = f"{r['ari_predicted']:.3f} / {r['ari_measured']:.3f}"
        epochs = str(r["epochs"]) if r["fit_s"] else ""
        if r.get("best_epoch") is not None and r["fit_s"]:
            epochs += f" ({r['epochs_run']}; {r['best_epoch']})"
        elif r["fit_s"] and (r.get("schedule_epochs") or (r.get("epochs_run") or r["epochs"]) < r["epochs"]):
            epochs += f" ({r['epochs_run']}; fixed schedule)"
        lines.append(
            f"| {r['section']} | {r['n_spots']} | {r['variant']} | {epochs} "
            f"| {_fmt(r['pcc_hvg'])} | {_fmt(r['pcc_top50'])} | {ceiling} "
            f"| {_fmt(r['mse'], 4)} | {_fmt(r['mae'], 4)} | {_fmt(r['pcc_all_spots_incl_training'])} "
            f"| {_fmt(r['fit_s'], 1)} | {ari} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
