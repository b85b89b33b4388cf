"""Early stopping of HisToSGE on every section: the kept epoch against fixed epoch counts.

Per section and split (the recovery protocol: ``--holdout`` of the spots hidden, genes chosen
on the training half, HisToSGE with the default features and every other setting at its
default) this measures

- the default run (``recover`` defaults: validation share, early stopping): the epoch it
  kept, the epoch it stopped at, and its held-out PCC over the HVGs and the top-50 genes,
  beside the 6-NN baseline;
- the same model trained on every training spot (``val_fraction=0``) for ``--epochs``,
  scored on the hidden spots every ``--every`` epochs: the best fixed epoch count and its
  held-out PCC.

The default passes on a section when its kept epoch is >= 1 and its top-50 PCC is above half
the baseline's on every split, and its mean PCC over the splits is within one split-to-split
SD (of the default's PCC over the splits; HisToSGE's from ``results/seeds.json`` where only
one split was run) of the best fixed epoch count's: the one count whose mean held-out PCC
over the splits is highest, per gene set. Writes
``benchmarks/results/early_stopping.json`` and the ``early_stopping`` block of
``docs/benchmarks.md``. Usage::

    nice python benchmarks/early_stopping.py                          # every section, seed 0
    nice python benchmarks/early_stopping.py --sections B4 C2 --seeds 0 1
    nice python benchmarks/early_stopping.py --no-curve               # the default runs only
    nice python benchmarks/early_stopping.py --render-only            # re-render the saved results

Sections measured before stay in the table unless measured again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, data_root, existing_data_root, machine_info, machine_line, publish  # noqa: E402
from noise_ceiling import CEILING_NOTE, ceiling_pair  # noqa: E402

from napari_histosge.evaluation.metrics import gene_metrics, holdout_split, summarize  # noqa: E402
from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import dense_targets, normalize_log1p, select_genes, top_mean_genes  # noqa: E402
from napari_histosge.models import (  # noqa: E402
    HisToSGEConfig,
    load_model,  # noqa: E402
    train_config,
)
from napari_histosge.pipeline.recovery import recover  # noqa: E402
from napari_histosge.pipeline.steps import fit, spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

METHOD = "HisToSGE, default features"


def sections(root: Path, wanted: list[str] | None) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every shared section (her2st, DLPFC, the mouse olfactory bulbs), or of ``wanted``."""
    found = [(p.name, p) for group in ("her2st", "dlpfc", "stutility_mob")
             for p in sorted((root / group).glob("*")) if p.is_dir()]
    return [s for s in found if not wanted or s[0] in wanted]


def default_run(adata, features, seed: int, holdout: float) -> dict:
    """The ``recover`` defaults on one split: kept and stop epoch, held-out PCC, the baseline's."""
    t0 = time.perf_counter()
    config = train_config(seed=seed, gene_selection="hvg")  # the paper's genes, as the curve below
    result = run_to_end(recover(adata, holdout=holdout, seed=seed, train_config=config,
                                features=features))
    s, meta = result.summary(), result.model.meta
    return {"kept_epoch": meta.best_epoch or meta.schedule_epochs,
            "rule": "schedule" if meta.schedule_epochs else "early stopping",
            "stopped_at": meta.stopped_at if meta.stopped_at is not None else len(meta.history),
            "n_validation_spots": meta.n_validation_spots, "n_train_spots": len(result.train_ids),
            "pcc_hvg": s["model"]["mean_pcc"], "pcc_top50": s["model_top_mean"]["mean_pcc"],
            "baseline_hvg": s["baseline"]["mean_pcc"], "baseline_top50": s["baseline_top_mean"]["mean_pcc"],
            "wall_s": time.perf_counter() - t0}


def fixed_epoch_curve(adata, features, seed: int, holdout: float, epochs: int, every: int) -> dict:
    """Held-out PCC (HVGs, top-50) every ``every`` epochs of one run on every training spot."""
    train_ids, test_ids = holdout_split(list(adata.obs_names), holdout, seed)
    log_all = normalize_log1p(adata)
    hvg = select_genes(log_all[train_ids], n_top=HisToSGEConfig.n_top_genes)
    top = top_mean_genes(log_all[train_ids], n=50)
    genes = hvg + [g for g in top if g not in set(hvg)]
    rows = adata.obs_names.get_indexer(test_ids)
    truth = dense_targets(log_all, genes)[rows]
    positions = np.asarray(adata.obsm["spatial"], np.float64)[rows]
    config = train_config(seed=seed, genes=genes, val_fraction=0.0, epochs=epochs, checkpoint_every=every)
    curve = {"epoch": [], "pcc_hvg": [], "pcc_top50": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "curve.pt"
        for event in fit(adata, train_config=config, train_ids=train_ids, features=features, checkpoint_path=path):
            if event.stage != "train" or event.step == 0 or event.step % every:
                continue
            model = load_model(path, device="cpu")
            pred = model.predict(features.features[rows], features.mean_rgb[rows], positions)
            metrics = gene_metrics(truth, pred, genes)
            curve["epoch"].append(int(event.step))
            curve["pcc_hvg"].append(summarize(metrics, hvg)["mean_pcc"])
            curve["pcc_top50"].append(summarize(metrics, top)["mean_pcc"])
    return curve


def split_sd(section: str) -> tuple[float, float] | None:
    """HisToSGE's split-to-split SD of held-out PCC (HVGs, top-50) from ``results/seeds.json``."""
    path = RESULTS / "seeds.json"
    if not path.is_file():
        return None
    runs = json.loads(path.read_text())["results"].get(section, {}).get(METHOD)
    if not runs or len(runs) < 2:
        return None
    values = np.asarray(runs, float)
    return float(values[:, 0].std(ddof=1)), float(values[:, 1].std(ddof=1))


def seed_sd(row: dict) -> tuple[float, float] | None:
    """SD over the row's splits of the default run's PCC (HVGs, top-50): the split-to-split noise."""
    runs = [s["default"] for s in row["splits"]]
    if len(runs) < 2:
        return None
    return (float(np.std([r["pcc_hvg"] for r in runs], ddof=1)),
            float(np.std([r["pcc_top50"] for r in runs], ddof=1)))


def verdict(run: dict, curve: dict | None, sd: tuple[float, float] | None) -> dict:
    """Which of the three conditions the default run meets on one split."""
    out = {"trained": run["kept_epoch"] is not None and run["kept_epoch"] >= 1,
           "above_half_baseline": run["pcc_top50"] > 0.5 * run["baseline_top50"]}
    if curve and curve["epoch"]:
        best = int(np.argmax(curve["pcc_top50"]))
        out.update(best_fixed_epoch=curve["epoch"][best], best_fixed_top50=curve["pcc_top50"][best],
                   best_fixed_hvg=curve["pcc_hvg"][int(np.argmax(curve["pcc_hvg"]))])
        if sd is not None:
            out["within_split_sd"] = bool(run["pcc_top50"] >= out["best_fixed_top50"] - sd[1]
                                          and run["pcc_hvg"] >= out["best_fixed_hvg"] - sd[0])
    return out


def measure(name: str, path: Path, seeds: list[int], args, old: dict | None) -> dict:
    """One section's row: the default run and (unless ``--no-curve``) the fixed-epoch curve per seed."""
    adata = read_spots(path)
    features = run_to_end(spot_features(adata, FeatureConfig()))
    sd = split_sd(name)
    splits = []
    for seed in seeds:
        run = default_run(adata, features, seed, args.holdout)
        curve = old_curve(old, seed, args) if args.reuse_curves else None
        if curve is None and not args.no_curve:
            curve = fixed_epoch_curve(adata, features, seed, args.holdout, args.epochs, args.every)
        splits.append({"seed": seed, "default": run, "curve": curve, **verdict(run, curve, sd)})
        print(f"{name} seed {seed}: kept {run['kept_epoch']} stopped {run['stopped_at']} "
              f"PCC {run['pcc_hvg']:.3f} / {run['pcc_top50']:.3f} (6-NN {run['baseline_top50']:.3f})"
              + ("" if curve is None else f"; best fixed {splits[-1]['best_fixed_epoch']}: "
                 f"{splits[-1]['best_fixed_hvg']:.3f} / {splits[-1]['best_fixed_top50']:.3f}"), flush=True)
    return {"section": name, "n_spots": int(adata.n_obs), "split_sd": sd, "splits": splits,
            "epochs": args.epochs, "every": args.every, "holdout": args.holdout}


def old_curve(old: dict | None, seed: int, args) -> dict | None:
    """The curve of ``seed`` in an earlier row, where it was measured with the same settings."""
    if old is None or (old.get("epochs"), old.get("every"), old.get("holdout")) != (args.epochs, args.every,
                                                                                   args.holdout):
        return None
    return next((s["curve"] for s in old["splits"] if s["seed"] == seed and s["curve"]), None)


def render(payload: dict) -> str:
    """One row per section: means over its splits of the default run and of the best fixed epoch count."""
    lines = [
        machine_line(payload["machine"]),
        f"HisToSGE with the `recover` defaults ({payload['holdout']:.0%} hidden, default features; early stopping "
        "where the validation share holds at least 50 spots, else every spot for the fixed schedule) against the "
        "same model trained on every training spot for a fixed number of epochs (scored on the hidden spots every "
        f"{payload['every']} epochs up to {payload['epochs']}; 'best fixed count' is the one count whose mean over the "
        "splits is highest, HVG and top-50 separately). Means over the splits (seeds) listed; SD: the split-to-split "
        "SD of the default's PCC. "
        + CEILING_NOTE,
        "",
        "| section | splits | train / val spots | rule: epochs kept per split | PCC HVG / top-50 | 6-NN top-50 "
        "| best fixed count HVG / top-50: epochs, PCC | SD HVG / top-50 | noise ceiling HVG / top-50 "
        "| trained, > half 6-NN, within SD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        splits = row["splits"]
        runs = [s["default"] for s in splits]
        sd = seed_sd(row) or row.get("split_sd")
        mean = {k: float(np.mean([r[k] for r in runs])) for k in ("pcc_hvg", "pcc_top50", "baseline_top50")}
        counts = best_fixed_counts(splits)
        best = None if counts is None else (counts["pcc_hvg"][1], counts["pcc_top50"][1])
        trained = all(r["kept_epoch"] is not None and r["kept_epoch"] >= 1 for r in runs)
        half = all(r["pcc_top50"] > 0.5 * r["baseline_top50"] for r in runs)
        within = None if best is None or sd is None else (mean["pcc_hvg"] >= best[0] - sd[0]
                                                           and mean["pcc_top50"] >= best[1] - sd[1])
        rule = runs[0].get("rule", "early stopping")
        checks = ", ".join("-" if v is None else ("yes" if v else "NO") for v in (trained, half, within))
        lines.append(
            f"| {row['section']} | {', '.join(str(s['seed']) for s in splits)} | {runs[0]['n_train_spots']} / "
            f"{runs[0]['n_validation_spots']} | {rule}: {', '.join(str(r['kept_epoch']) for r in runs)} "
            f"| {mean['pcc_hvg']:.3f} / {mean['pcc_top50']:.3f} | {mean['baseline_top50']:.3f} "
            f"| {'-' if counts is None else fixed_cell(counts)} "
            f"| {'-' if sd is None else f'{sd[0]:.3f} / {sd[1]:.3f}'} "
            f"| {ceiling_pair(row['section'], tuple(s['seed'] for s in splits[:1]))} | {checks} |")
    return "\n".join(lines)


def best_fixed_counts(splits: list[dict]) -> dict[str, tuple[int, float]] | None:
    """Per gene set, ``(epochs, mean PCC)`` of the fixed count best on the mean over ``splits``' curves.

    ``None`` unless every split has a curve scored at the same epochs.
    """
    curves = [s.get("curve") for s in splits]
    if not curves or any(not c or c["epoch"] != curves[0]["epoch"] for c in curves):
        return None
    out = {}
    for key in ("pcc_hvg", "pcc_top50"):
        mean = np.mean([c[key] for c in curves], axis=0)
        best = int(np.argmax(mean))
        out[key] = (int(curves[0]["epoch"][best]), float(mean[best]))
    return out


def fixed_cell(counts: dict[str, tuple[int, float]]) -> str:
    """``"40: 0.095 / 60: 0.344"``: the best count and its PCC, HVG then top-50."""
    return " / ".join(f"{counts[k][0]}: {counts[k][1]:.3f}" for k in ("pcc_hvg", "pcc_top50"))


def ordered(rows: list[dict], names: list[str]) -> list[dict]:
    """``rows`` in the order of ``names`` (the data folder's), unknown sections last."""
    rank = {n: i for i, n in enumerate(names)}
    return sorted(rows, key=lambda r: rank.get(r["section"], len(rank)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", help="section names (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=HisToSGEConfig.epochs, help="length of the fixed-epoch curve")
    parser.add_argument("--every", type=int, default=20, help="epochs between scores on the curve")
    parser.add_argument("--no-curve", action="store_true", help="measure the default runs only")
    parser.add_argument("--reuse-curves", action="store_true",
                        help="take the fixed-epoch curves of the last run (same section, seed and epochs)")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="re-render the saved results, run nothing")
    args = parser.parse_args(argv)
    previous = RESULTS / "early_stopping.json"
    if args.render_only:
        payload = json.loads(previous.read_text())
        if data_root().is_dir():
            payload["rows"] = ordered(payload["rows"], [n for n, _ in sections(data_root(), None)])
        publish("early_stopping", payload, render(payload), doc=not args.no_doc)
        return 0
    root = existing_data_root()
    kept = json.loads(previous.read_text())["rows"] if previous.is_file() else []
    old = {r["section"]: r for r in kept}
    rows = [measure(name, path, args.seeds, args, old.get(name)) for name, path in sections(root, args.sections)]
    measured = {r["section"] for r in rows}
    rows = ordered([r for r in kept if r["section"] not in measured] + rows, [n for n, _ in sections(root, None)])
    payload = {"machine": machine_info(), "holdout": args.holdout, "epochs": args.epochs, "every": args.every,
               "rows": rows}
    publish("early_stopping", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
