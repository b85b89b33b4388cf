"""Pooled super-resolution: train on bins of summed spots, predict every real spot, score against the real spots.

For every shared section (``$HISTOSGE_DATA``, default ``../shared/data``) the spots are summed
into square bins of side sqrt(F) spot spacings (F = 4 on ST arrays, 7 and 16 on Visium;
:func:`napari_histosge.pipeline.pooled.pool_spots`), each bin's footprint is its square, and
every model is trained on the bins only. Each real spot is then predicted with its real
diameter and scored against its own measurement: mean per-gene PCC over the 50 highest-mean
genes and the 1000 HVGs of the bins, within-bin PCC (prediction minus its bin's mean against
truth minus its bin's mean, bins of >= 2 spots), SSIM of per-gene maps on the spot array, and
MSE. Baselines in the same run: each spot gets its own bin's value (copy), inverse-distance
interpolation of the bins (4 nearest), and the noise ceiling of the real spots. Writes
``benchmarks/results/superres_pooled.json`` and its block of ``docs/benchmarks.md``::

    python benchmarks/superres_pooled.py                          # every section, every model
    python benchmarks/superres_pooled.py --sections B4 --models subspot,copy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, existing_data_root, machines_line, measure_sections, publish  # noqa: E402

import napari_histosge as hs  # noqa: E402
from napari_histosge.evaluation.metrics import gene_metrics, knn_baseline, within_bin_pcc  # noqa: E402
from napari_histosge.evaluation.noise_ceiling import split_half_reliability, summarize_ceiling  # noqa: E402
from napari_histosge.io.preprocess import dense_targets, normalize_log1p, select_genes, top_mean_genes  # noqa: E402
from napari_histosge.pipeline.pooled import own_bin_copy, pool_spots  # noqa: E402

#: Model label -> (registered model, training settings) of the trained models compared.
TRAINED = {
    "subspot": ("subspot", {}),
    "subspot-with-image": ("subspot", {"image_modulation": True}),
    "histosge": ("histosge", {}),
    "conditioned": ("conditioned", {}),
}
BASELINES = ("copy", "interpolation")
GENE_SETS = ("top50", "hvg")


def sections(root: Path, wanted: list[str] | None) -> dict[str, Path]:
    found = {p.name: p for group in ("her2st", "dlpfc", "stutility_mob")
             for p in sorted((root / group).glob("*")) if p.is_dir()}
    return {k: v for k, v in found.items() if not wanted or k in wanted}


def factors(adata) -> tuple[int, ...]:
    """Spots per bin: 4 on ST arrays, 7 and 16 on Visium."""
    return (7, 16) if adata.uns["histosge"].get("platform") == "visium" else (4,)


def array_maps(adata, values: np.ndarray) -> np.ndarray:
    """``(G, rows, cols)`` maps of per-spot ``values`` on the spot array (holes: each gene's mean)."""
    row = np.asarray(adata.obs["array_row"], int)
    col = np.asarray(adata.obs["array_col"], int)
    row, col = row - row.min(), col - col.min()
    if np.all((row + col) % 2 == (row[0] + col[0]) % 2):  # hexagonal / diagonal arrays: every other column
        col = col // 2
    maps = np.repeat(values.mean(axis=0)[:, None, None], row.max() + 1, 1).repeat(col.max() + 1, 2)
    maps[:, row, col] = values.T
    return maps


def ssim(adata, pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM of the per-gene maps (each gene's range from its truth)."""
    from skimage.metrics import structural_similarity

    p, t = array_maps(adata, pred), array_maps(adata, truth)
    scores = []
    for pg, tg in zip(p, t, strict=True):
        span = float(tg.max() - tg.min())
        if span > 0 and min(tg.shape) >= 7:
            scores.append(structural_similarity(pg, tg, data_range=span))
    return float(np.mean(scores)) if scores else float("nan")


def scores(adata, pred: np.ndarray, truth: np.ndarray, spot_bin: np.ndarray, cols: dict) -> dict:
    out = {}
    for key, idx in cols.items():
        p, t = pred[:, idx], truth[:, idx]
        metrics = gene_metrics(t, p, [str(i) for i in idx])
        out[key] = {"pcc": float(metrics["pcc"].fillna(0.0).mean()),
                    "within_bin_pcc": float(within_bin_pcc(p, t, spot_bin).mean()), "mse": float(metrics["mse"].mean())}
    out["top50"]["ssim"] = ssim(adata, pred[:, cols["top50"]], truth[:, cols["top50"]])
    return out


def trained_prediction(label: str, pooled, adata, genes: list[str]) -> tuple[np.ndarray, float]:
    model_name, settings = TRAINED[label]
    config = hs.train_config(model_name, genes=genes, **settings)
    t0 = time.perf_counter()
    model = hs.run(hs.fit(pooled.bins, train_config=config))
    diameter = float(adata.uns["histosge"]["spot_diameter_px"])
    pred = hs.run(hs.predict_spots(model, adata, positions=np.asarray(adata.obsm["spatial"]),
                                   position_ids=list(adata.obs_names), diameter=diameter))
    return np.asarray(pred[:, genes].X, np.float64), time.perf_counter() - t0


def measure_factor(adata, factor: int, models: list[str]) -> dict:
    pooled = pool_spots(adata, factor)
    log_bins = normalize_log1p(pooled.bins)
    hvg = select_genes(log_bins, n_top=1000)
    top = top_mean_genes(log_bins, n=50)
    genes = list(dict.fromkeys(hvg + top))
    cols = {"top50": [genes.index(g) for g in top], "hvg": [genes.index(g) for g in hvg]}
    truth = dense_targets(normalize_log1p(adata), genes).astype(np.float64)
    bin_values = dense_targets(log_bins, genes).astype(np.float64)
    ceiling = split_half_reliability(adata, genes)
    row = {"factor": factor, "bins": int(pooled.bins.n_obs), "spots": int(adata.n_obs),
           "side_px": pooled.side_px, "mean_spots_per_bin": float(pooled.bin_sizes().mean()),
           "noise_ceiling": {"top50": summarize_ceiling(ceiling, top)["mean_ceiling"],
                             "hvg": summarize_ceiling(ceiling, hvg)["mean_ceiling"]},
           "models": {}}
    for label in models:
        t0 = time.perf_counter()
        if label == "copy":
            pred, seconds = own_bin_copy(pooled, bin_values), 0.0
        elif label == "interpolation":
            pred = knn_baseline(pooled.bins.obsm["spatial"], bin_values, np.asarray(adata.obsm["spatial"]), k=4)
            seconds = time.perf_counter() - t0
        else:
            pred, seconds = trained_prediction(label, pooled, adata, genes)
        row["models"][label] = {**scores(adata, pred, truth, pooled.spot_bin, cols), "seconds": seconds}
        print(f"  F={factor} {label}: " + ", ".join(f"{k} {v['pcc']:.3f}/{v['within_bin_pcc']:.3f}"
                                                   for k, v in row["models"][label].items() if k in GENE_SETS),
              flush=True)
    return row


def render(payload: dict) -> str:
    labels = [m for m in BASELINES + tuple(TRAINED)
              if any(m in row["models"] for rows in payload["results"].values() for row in rows)]
    lines = [
        "Pooled super-resolution: spots summed into square bins of about F spots, each model trained on the "
        "bins only, every real spot predicted with its real diameter and scored against its own measurement. "
        "Cells: mean per-gene PCC over the spots, top-50 / HVG (the 50 highest-mean genes and 1000 HVGs of the "
        "bins). 'within': PCC of each prediction's deviation from its bin's mean against the truth's (bins of "
        ">= 2 spots; a copy scores 0), top-50 / HVG. SSIM: the top-50 genes' maps on the spot array. 'copy' "
        "gives each spot its own bin's value, 'interpolation' the inverse-distance mean of the 4 nearest bins; "
        "'ceiling' is the noise ceiling of the real spots, top-50 / HVG (a copy can pass it: the spot's own "
        "counts are in its bin).",
        "",
    ]
    lines.append(machines_line(list(payload["machines"].values())))
    head = " | ".join(labels)
    lines += ["", f"| section | F | bins | {head} | within: {' / '.join(m for m in labels if m != 'copy')} | "
              "SSIM: copy / subspot | ceiling |",
              "|" + "---|" * (len(labels) + 6)]
    for section, rows in payload["results"].items():
        for row in rows:
            models = row["models"]

            def cell(label: str, key: str, models: dict = models) -> str:
                m = models.get(label)
                return "" if m is None else f"{m['top50'][key]:.3f} / {m['hvg'][key]:.3f}"

            within = "; ".join(cell(m, "within_bin_pcc") for m in labels if m != "copy")
            ssim = " / ".join(f"{models[m]['top50']['ssim']:.3f}" for m in ("copy", "subspot") if m in models)
            ceiling = f"{row['noise_ceiling']['top50']:.3f} / {row['noise_ceiling']['hvg']:.3f}"
            lines.append(f"| {section} | {row['factor']} | {row['bins']} | "
                         + " | ".join(cell(m, "pcc") for m in labels) + f" | {within} | {ssim} | {ceiling} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="*")
    parser.add_argument("--models", default=",".join(BASELINES + tuple(TRAINED)))
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="re-render the saved results, run nothing")
    parser.add_argument("--merge", action="store_true",
                        help="keep the saved results of the models not given in --models")
    args = parser.parse_args()
    if args.render_only:
        payload = json.loads((RESULTS / "superres_pooled.json").read_text())
        publish("superres_pooled", payload, render(payload), doc=not args.no_doc)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in BASELINES and m not in TRAINED]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(BASELINES) + list(TRAINED)}")
    items = sections(existing_data_root(), args.sections)

    previous = json.loads((RESULTS / "superres_pooled.json").read_text()) if args.merge else {"results": {}}

    def measure(path: Path) -> list[dict]:
        adata = hs.read_spots(path)
        rows = [measure_factor(adata, f, models) for f in factors(adata)]
        # --merge keeps the earlier run's models that this run did not measure.
        for row in rows:
            old = next((r for r in previous["results"].get(path.name, []) if r["factor"] == row["factor"]), None)
            if old is not None:
                row["models"] = {k: row["models"].get(k, old["models"].get(k))
                                 for k in dict.fromkeys([*old["models"], *row["models"]])}
        return rows

    measure_sections("superres_pooled", items, measure, render, doc=not args.no_doc)


if __name__ == "__main__":
    main()
