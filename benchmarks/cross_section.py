"""Cross-section benchmark: learn from the other sections of a tissue, leave one section out.

For each shared tissue group (her2st: B4, C2, C3, C4; DLPFC: 151675, 151676; mouse
olfactory bulb: MOB1, MOB2) and each section S of it, a HisToSGE model (defaults, default
image features) is trained on the group's other sections, on the highly variable genes of
those sections plus their 50 highest-mean genes, and then:

(a) predicts every spot of S from its H&E alone (``predict_spots``), as does a second model
    of the other sections trained with weight averaging (``TRANSFER``: every spot for 200
    epochs, the mean of the weights of epochs 40-200);
(b) runs the recovery protocol on S (half the spots hidden, seed 0) without the prior,
    with the same genes;
(c) runs it with the prior: the multi-section model fine-tuned on S's training spots
    (``recover(..., init=model)``, ``histosge recover --init``).

(b) and (c) run for each of ``--models``: HisToSGE fine-tunes the prior itself, the
conditioned model starts its image companion from it.

Per row: top-50 and HVG mean per-gene PCC on the scored spots, the 6-NN baseline of the
same split (recovery rows) and the noise ceiling of the same spots and genes (the best PCC
any predictor can reach against these measurements). Writes
``benchmarks/results/cross_section.json`` and the ``cross_section`` block of
docs/benchmarks.md. Usage::

    python benchmarks/cross_section.py                     # both groups, every section
    python benchmarks/cross_section.py --groups dlpfc --epochs 100
    python benchmarks/cross_section.py --models histosge      # HisToSGE's recovery rows only
    python benchmarks/cross_section.py --he-only              # the H&E-alone rows only (merged)
    python benchmarks/cross_section.py --he-only --stain macenko --groups her2st   # + stain-normalised rows
    python benchmarks/cross_section.py --he-only --extractor nuclei --sections C2   # + nucleus-morphometric rows
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, update_block, write_json  # noqa: E402

from napari_histosge.evaluation.metrics import holdout_split  # noqa: E402
from napari_histosge.evaluation.noise_ceiling import noise_ceiling  # noqa: E402
from napari_histosge.evaluation.predictions import evaluate_predictions  # noqa: E402
from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import normalize_log1p, select_genes, top_mean_genes  # noqa: E402
from napari_histosge.models import HisToSGEConfig, train_config  # noqa: E402
from napari_histosge.pipeline.recovery import recover  # noqa: E402
from napari_histosge.pipeline.steps import fit, predict_spots, spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

GROUPS = {"her2st": ("B4", "C2", "C3", "C4"), "dlpfc": ("151675", "151676"), "stutility_mob": ("MOB1", "MOB2")}
#: The weight-averaged model of the other sections: settings over HisToSGE's defaults.
TRANSFER = {"epochs": 200, "average_from": 40}
HE_ALONE = "H&E alone (model of the other sections)"
HE_AVERAGED = "H&E alone, weight-averaged model (200 epochs, mean from 40)"
HOLDOUT, SEED, TOP = 0.5, 0, 50
MODEL_LABELS = {"histosge": "HisToSGE", "conditioned": "conditioned"}


def training_genes(adatas, n_top: int, measured: set[str]) -> tuple[list[str], list[str]]:
    """``(genes, top)``: the HVGs of the training sections plus their ``TOP`` highest-mean genes.

    Only genes in ``measured`` (names every section of the tissue has, the left-out one
    included: names, not values) are candidates, so the left-out section can score them all.
    """
    import anndata as ad

    logs = [normalize_log1p(a) for a in adatas]
    shared = sorted(set.intersection(measured, *(set(map(str, log.var_names)) for log in logs)))
    combined = ad.concat([log[:, shared] for log in logs], join="inner")
    hvg = select_genes(combined, n_top=n_top)
    top = top_mean_genes(combined, n=TOP)
    return hvg + [g for g in top if g not in set(hvg)], top


def _mean_pcc(metrics, genes) -> float:
    return float(np.nanmean(metrics.loc[[g for g in genes if g in metrics.index], "pcc"].to_numpy()))


def _ceiling(ceilings, genes) -> float:
    """Mean of the per-gene noise ceilings ``ceilings`` over ``genes``."""
    return float(np.nanmean(ceilings.reindex([str(g) for g in genes]).to_numpy()))


def _recovery_row(adata, label, hvg, top, config, features, hidden_ceilings, init=None) -> dict:
    """One recovery run's row; ``hidden_ceilings`` the per-gene ceilings of the split's hidden spots."""
    t0 = time.perf_counter()
    result = run_to_end(recover(adata, holdout=HOLDOUT, seed=SEED, train_config=config, features=features,
                                init=init))
    return {"variant": label, "pcc_top50": _mean_pcc(result.metrics, top), "pcc_hvg": _mean_pcc(result.metrics, hvg),
            "baseline_top50": _mean_pcc(result.baseline_metrics, top),
            "baseline_hvg": _mean_pcc(result.baseline_metrics, hvg),
            "ceiling_top50": _ceiling(hidden_ceilings, top), "ceiling_hvg": _ceiling(hidden_ceilings, hvg),
            "best_epoch": kept_epoch(result.model.meta), "wall_s": time.perf_counter() - t0,
            "companion_weight": (result.model.meta.histosge or {}).get("weight")}


def kept_epoch(meta):
    """The epoch a run kept (``meta``: its ``ModelMeta``): its best on the validation spots, or the last of its
    fixed schedule."""
    return meta.best_epoch if meta.best_epoch is not None else meta.schedule_epochs


def run_section(held: str, group: dict, feats: dict, args) -> list[dict]:
    """The three rows of one left-out section."""
    others = [n for n in group if n != held]
    train_sets = [group[n] for n in others]
    measured = set.intersection(*(set(map(str, a.var_names)) for a in group.values()))
    genes, top = training_genes(train_sets, args.n_genes, measured)
    hvg = [g for g in genes if g not in set(top)] or genes
    config = HisToSGEConfig(seed=SEED, genes=genes, epochs=args.epochs)
    t0 = time.perf_counter()
    model = run_to_end(fit(train_sets if len(train_sets) > 1 else train_sets[0], train_config=config,
                           features=[feats[n] for n in others] if len(others) > 1 else feats[others[0]]))
    fit_s = time.perf_counter() - t0
    adata = group[held]
    t0 = time.perf_counter()
    averaged = run_to_end(fit(train_sets if len(train_sets) > 1 else train_sets[0],
                              train_config=HisToSGEConfig(seed=SEED, genes=genes, **TRANSFER),
                              features=[feats[n] for n in others] if len(others) > 1 else feats[others[0]]))
    averaged_s = time.perf_counter() - t0
    scored_genes = [g for g in model.genes if g in adata.var_names]
    # Per-gene ceilings once per spot set: every spot (H&E alone) and the split's hidden spots (recovery).
    everywhere = noise_ceiling(adata, scored_genes)
    _, hidden = holdout_split(list(adata.obs_names), HOLDOUT, SEED)
    hidden_ceilings = noise_ceiling(adata, scored_genes, spots=hidden)
    top_here = [g for g in top if g in set(scored_genes)]
    hvg_here = [g for g in hvg if g in set(scored_genes)]
    base = {"section": held, "trained_on": others, "n_spots": int(adata.n_obs), "n_genes": len(scored_genes)}
    rows = []
    stained = ("" if args.stain == "none" else f", {args.stain} stain normalisation") + (
        "" if args.extractor == "default" else f", {args.extractor} features")
    for label, m, wall in ((HE_ALONE + stained, model, fit_s), (HE_AVERAGED + stained, averaged, averaged_s)):
        ev = evaluate_predictions(run_to_end(predict_spots(m, adata, features=feats[held])), adata)
        span = m.meta.averaged_epochs
        epoch = kept_epoch(m.meta) if not span else f"{span[0]}-{span[1]}"
        rows.append({**base, "variant": label, "pcc_top50": _mean_pcc(ev.metrics, top_here),
                     "pcc_hvg": _mean_pcc(ev.metrics, hvg_here), "ceiling_top50": _ceiling(everywhere, top_here),
                     "ceiling_hvg": _ceiling(everywhere, hvg_here), "best_epoch": epoch, "wall_s": wall})
    for name in [] if args.he_only else args.models:
        # HisToSGE's epochs are the run's; the conditioned model keeps its own (and its companion takes HisToSGE's).
        # As the product runs it: the small sections keep HisToSGE's fixed schedule (epochs given
        # to train_config would otherwise run as given).
        epochs = ({"epochs": args.epochs, "schedule_epochs": HisToSGEConfig.default_of("schedule_epochs")}
                  if name == "histosge" else {"histosge_epochs": args.epochs})
        same = train_config(name, seed=SEED, genes=scored_genes, **epochs)
        label = MODEL_LABELS[name]
        if scored_genes == model.genes:  # the prior needs all its genes measured here
            rows.append({**base, **_recovery_row(adata, f"{label} recovery, with the prior (--init)", hvg_here,
                                                top_here, same, feats[held], hidden_ceilings, init=model)})
        rows.append({**base, **_recovery_row(adata, f"{label} recovery, without the prior", hvg_here, top_here,
                                            same, feats[held], hidden_ceilings)})
    for r in rows:
        print(f"[{held}] {r['variant']}: top-50 {r['pcc_top50']:.3f}, HVG {r['pcc_hvg']:.3f} "
              f"(ceiling {r['ceiling_top50']:.3f} / {r['ceiling_hvg']:.3f})", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="*", choices=sorted(GROUPS), help="tissue groups (default: all)")
    parser.add_argument("--sections", nargs="*", help="left-out sections to run (default: all of the groups)")
    parser.add_argument("--epochs", type=int, default=HisToSGEConfig().epochs, help="most epochs (early-stopped)")
    parser.add_argument("--n-genes", type=int, default=HisToSGEConfig().n_top_genes, help="HVGs of the training "
                                                                                         "sections")
    parser.add_argument("--models", nargs="*", choices=sorted(MODEL_LABELS), default=["histosge", "conditioned"],
                        help="models whose recovery runs with and without the prior")
    parser.add_argument("--he-only", action="store_true",
                        help="only the H&E-alone rows; the saved recovery rows are kept")
    parser.add_argument("--stain", choices=("none", "macenko"), default="none",
                        help="stain normalisation of every section's patches (its H&E-alone rows are labelled; "
                             "use with --he-only)")
    parser.add_argument("--extractor", default="default",
                        help="image features of every section (a spec as --extractor takes; rows other than "
                             "'default' are labelled; use with --he-only)")
    parser.add_argument("--render-only", action="store_true", help="re-render the saved results, run nothing")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if (args.stain != "none" or args.extractor != "default") and not args.he_only:
        parser.error("--stain and --extractor add H&E-alone rows: use them with --he-only")
    if args.render_only:
        import json

        from _report import RESULTS

        update_block("cross_section", render(json.loads((RESULTS / "cross_section.json").read_text())))
        return 0
    root, info, rows = existing_data_root(), machine_info(), []
    for name in args.groups or sorted(GROUPS):
        group = {s: read_spots(root / name / s) for s in GROUPS[name] if (root / name / s).is_dir()}
        config = FeatureConfig(stain=args.stain, extractor=args.extractor)
        feats = {s: run_to_end(spot_features(a, config)) for s, a in group.items()}
        for held in group:
            if not args.sections or held in args.sections:
                new = run_section(held, group, feats, args)
                if args.he_only:  # rows added to a saved run say when they were measured
                    when = {"date": info["date"], "load_average_1m": info["load_average_1m"]}
                    new = [{**r, "measured": when} for r in new]
                rows += new
                payload = {"machine": _saved_machine(args) or info if args.he_only else info,
                           "holdout": HOLDOUT, "seed": SEED, "epochs": args.epochs,
                           "n_genes": args.n_genes, "rows": _with_earlier(rows, args)}
                write_json("cross_section", payload)
    if not args.no_doc:
        update_block("cross_section", render(payload))
    return 0


def _saved_machine(args) -> dict | None:
    """The machine of the saved run of the same protocol (rows added with --he-only keep its header)."""
    import json

    from _report import RESULTS

    path = RESULTS / "cross_section.json"
    if not path.exists():
        return None
    previous = json.loads(path.read_text())
    same = (previous.get("epochs"), previous.get("n_genes")) == (args.epochs, args.n_genes)
    return previous.get("machine") if same else None


def _measured(row: dict) -> str:
    """When a row added to a saved run was measured, for its variant cell."""
    when = row.get("measured")
    return "" if not when else f" (measured {when['date']}, load {when['load_average_1m']:.1f})"


def _with_earlier(rows: list[dict], args) -> list[dict]:
    """The saved rows of sections not run now (same protocol) before ``rows``, so groups can run separately."""
    import json

    from _report import RESULTS

    path = RESULTS / "cross_section.json"
    if not path.exists():
        return rows
    previous = json.loads(path.read_text())
    if (previous.get("epochs"), previous.get("n_genes")) != (args.epochs, args.n_genes):
        return rows
    if args.he_only:  # keep every saved row but the H&E-alone rows measured now, in the saved order
        done = {(r["section"], r["variant"]) for r in rows}
        kept = [r for r in previous.get("rows", []) if (r["section"], r["variant"]) not in done]
        order = {s: i for i, s in enumerate(dict.fromkeys(r["section"] for r in kept + rows))}
        return sorted(kept + rows, key=lambda r: (order[r["section"]], not r["variant"].startswith("H&E")))
    done = {r["section"] for r in rows}
    return [r for r in previous.get("rows", []) if r["section"] not in done] + rows


def _f(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _weight(row: dict) -> str:
    """The conditioned model's companion weight, where recorded (0: the companion had no say)."""
    w = row.get("companion_weight")
    return "" if w is None else f"; companion weight {w:g}"


def render(payload: dict) -> str:
    lines = [machine_line(payload["machine"]),
             f"Leave one section out: HisToSGE (defaults, default image features, at most {payload['epochs']} "
             "epochs with early stopping) trained on the other sections of the same tissue, on their "
             f"{payload.get('n_genes', 'top')} HVGs plus their 50 highest-mean genes. 'H&E alone': every spot "
             "of the left-out section predicted from its image; 'weight-averaged': the same model trained on "
             "every spot of the other sections for 200 epochs, keeping the mean of the weights of epochs 40-200 "
             f"(`--epochs 200 --average-from 40`). Recovery: {payload['holdout']:.0%} of its spots hidden (seed "
             f"{payload['seed']}), trained on the rest with or without starting from the other sections' "
             "early-stopped model (`--init`: HisToSGE fine-tunes it, the conditioned model starts its image "
             "companion from it; both with their defaults otherwise, so HisToSGE takes its fixed schedule on the "
             "small sections). 'kept epoch': the epoch of the model's best validation score or of its fixed "
             "schedule (conditioned: its own network's), or the averaged epochs. Mean per-gene PCC on the scored "
             "spots; 6-NN: the inverse-distance baseline of the same split; ceiling: the noise ceiling of the "
             "same spots and genes, the best PCC any predictor can reach against these measurements.",
             "",
             "| left out | trained on | variant | PCC top-50 | PCC HVG | 6-NN top-50 / HVG "
             "| noise ceiling top-50 / HVG | kept epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        knn = f"{_f(r['baseline_top50'])} / {_f(r['baseline_hvg'])}" if "baseline_top50" in r else ""
        lines.append(f"| {r['section']} | {', '.join(r['trained_on'])} | {r['variant']}{_measured(r)} "
                     f"| {_f(r['pcc_top50'])} "
                     f"| {_f(r['pcc_hvg'])} | {knn} | {_f(r['ceiling_top50'])} / {_f(r['ceiling_hvg'])} "
                     f"| {r.get('best_epoch', '')}{_weight(r)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
