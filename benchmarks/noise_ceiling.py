"""Noise ceiling of every real section: the best held-out PCC any predictor could reach.

For each section in ``$HISTOSGE_DATA`` (default ``../shared/data``: her2st, DLPFC and the
STUtility mouse olfactory bulb) and each hold-out split of the recovery protocol (seeds
0, 1, ...; ``recovery.py`` uses seed 0, ``seeds.py`` seeds 0-4, ``split_noise.py`` 0-9), this
chooses the genes as the recovery protocol does (top-1000 HVGs and the 50 highest-mean genes
of the training half) and computes the per-gene noise ceiling over the HIDDEN spots
(:func:`napari_histosge.evaluation.noise_ceiling.split_half_reliability`: binomial
split-half correlation, Spearman-Brown to full depth, square root). No training. Writes
``benchmarks/results/noise_ceiling.json`` and the ``noise_ceiling`` block of
``docs/benchmarks.md``; the other accuracy tables read their ceiling column from the JSON
(:func:`ceiling`). Usage::

    python benchmarks/noise_ceiling.py                 # every section, seeds 0-9
    python benchmarks/noise_ceiling.py --seeds 1 --sections B4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, existing_data_root, machine_info, machine_line, publish  # noqa: E402

from napari_histosge.evaluation.metrics import holdout_split  # noqa: E402
from napari_histosge.evaluation.noise_ceiling import DEFAULT_SPLITS, split_half_reliability, summarize_ceiling  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import normalize_log1p, select_genes, top_mean_genes  # noqa: E402

#: The gene sets of the accuracy tables: key in the JSON -> column label.
GENE_SETS = {"hvg": "HVG", "top50": "top-50"}


def sections(root: Path, wanted: list[str] | None) -> list[tuple[str, Path]]:
    """Every section folder of the shared data (the recovery sections and the two MOB sections)."""
    found = [(p.name, p) for group in ("her2st", "dlpfc", "stutility_mob")
             for p in sorted((root / group).glob("*")) if p.is_dir()]
    return [s for s in found if not wanted or s[0] in wanted]


def measure(adata, seed: int, holdout: float, n_splits: int) -> dict:
    """Ceiling summaries over the hidden spots of one recovery split, per gene set."""
    log = normalize_log1p(adata)
    train_ids, test_ids = holdout_split(list(adata.obs_names), holdout, seed)
    gene_sets = {"hvg": select_genes(log[train_ids], n_top=1000), "top50": top_mean_genes(log[train_ids], n=50)}
    genes = list(dict.fromkeys(gene_sets["hvg"] + gene_sets["top50"]))
    reliability = split_half_reliability(adata, genes, spots=test_ids, n_splits=n_splits, seed=seed)
    # The same estimator with the halves' spots shuffled against each other: its floor from noise alone.
    control = split_half_reliability(adata, genes, spots=test_ids, n_splits=n_splits, seed=seed, shuffled=True)
    return {"seed": seed, "n_hidden": len(test_ids),
            **{key: summarize_ceiling(reliability, chosen) for key, chosen in gene_sets.items()},
            "shuffled": {key: summarize_ceiling(control, chosen) for key, chosen in gene_sets.items()}}


def ceiling(section: str, gene_set: str, seeds=(0,), holdout: float = 0.5) -> float | None:
    """Mean noise ceiling of ``section`` and ``gene_set`` ("hvg" or "top50") over the hold-out
    splits ``seeds``, from ``results/noise_ceiling.json``; ``None`` where it was not measured
    (another section, seed or hold-out fraction)."""
    path = RESULTS / "noise_ceiling.json"
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    if payload["holdout"] != holdout:
        return None
    rows = payload["rows"]
    row = next((r for r in rows if r["section"] == section), None)
    if row is None:
        return None
    by_seed = {s["seed"]: s[gene_set]["mean_ceiling"] for s in row["splits"]}
    if not all(s in by_seed for s in seeds):
        return None
    return float(np.mean([by_seed[s] for s in seeds]))


def ceiling_cell(section: str, gene_set: str, seeds=(0,)) -> str:
    """:func:`ceiling` as a table cell (empty where it was not measured)."""
    value = ceiling(section, gene_set, seeds)
    return "" if value is None else f"{value:.3f}"


def ceiling_pair(section: str, seeds=(0,)) -> str:
    """``"HVG / top-50"`` mean ceilings of ``section`` over the splits ``seeds``, for a table cell."""
    cells = [ceiling_cell(section, key, seeds) for key in GENE_SETS]
    return "" if not all(cells) else " / ".join(cells)


#: The sentence every accuracy table with a ceiling column adds to its legend.
CEILING_NOTE = ("'Noise ceiling HVG / top-50': the ceiling of the same hidden spots and genes "
                "(noise_ceiling block), the best mean PCC any predictor can reach against these measurements; "
                "one value per section, on its first row.")


def render(payload: dict) -> str:
    lines = [
        machine_line(payload["machine"]),
        f"Noise ceiling: per gene, each spot's counts split binomially in two halves ({payload['n_splits']} "
        "seeded splits averaged), both normalised as the targets (log1p of normalize_total 1e4), correlated "
        "across the HIDDEN spots of the recovery split, corrected to full depth (Spearman-Brown) and "
        "square-rooted; a negative reliability counts as a ceiling of 0 ('clipped'). 'Shuffled control': "
        "the same estimate with each spot's first half paired with another spot's second half, so no signal is "
        "shared: what sampling noise alone makes of the square root (seed 0). Genes are those of the "
        f"recovery protocol (top-1000 HVGs, 50 highest-mean genes, chosen on the training half). "
        f"Seed 0 is the split of the recovery table; mean and SD over the {len(payload['seeds'])} splits "
        f"(seeds {payload['seeds'][0]}-{payload['seeds'][-1]}).",
        "",
        "| section | spots | hidden | ceiling HVG: seed 0 | mean (SD) | HVGs clipped | "
        "ceiling top-50: seed 0 | mean (SD) | top-50 clipped | shuffled control HVG / top-50 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        first = r["splits"][0]
        cells = []
        for key in GENE_SETS:
            v = np.array([s[key]["mean_ceiling"] for s in r["splits"]])
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            cells += [f"{first[key]['mean_ceiling']:.3f}", f"{v.mean():.3f} ({sd:.3f})",
                      f"{first[key]['n_clipped']} of {first[key]['n_genes']}"]
        control = first.get("shuffled")
        cells.append("" if control is None else
                     f"{control['hvg']['mean_ceiling']:.3f} / {control['top50']['mean_ceiling']:.3f}")
        lines.append(f"| {r['section']} | {r['n_spots']} | {first['n_hidden']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_earlier(rows: list[dict], args) -> list[dict]:
    """``rows`` after the saved rows of sections not run now, when those were measured alike."""
    path = RESULTS / "noise_ceiling.json"
    if not path.exists():
        return rows
    old = json.loads(path.read_text())
    if (old["holdout"], old["n_splits"], old["seeds"]) != (args.holdout, args.n_splits, list(range(args.seeds))):
        return rows
    fresh = {r["section"]: r for r in rows}
    kept = [fresh.pop(r["section"], r) for r in old["rows"]]  # re-run sections keep their places
    return kept + list(fresh.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", help="section names (default: all)")
    parser.add_argument("--seeds", type=int, default=10, help="hold-out splits per section (seeds 0, 1, ...)")
    parser.add_argument("--n-splits", type=int, default=DEFAULT_SPLITS, help="binomial splits per ceiling")
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    info = machine_info()
    rows = []
    t0 = time.perf_counter()
    for name, path in sections(existing_data_root(), args.sections):
        adata = read_spots(path)
        splits = [measure(adata, seed, args.holdout, args.n_splits) for seed in range(args.seeds)]
        rows.append({"section": name, "n_spots": int(adata.n_obs), "splits": splits})
        print(f"[{name}] ceiling HVG {splits[0]['hvg']['mean_ceiling']:.3f}, "
              f"top-50 {splits[0]['top50']['mean_ceiling']:.3f} (seed 0)", flush=True)
    payload = {"machine": info, "holdout": args.holdout, "n_splits": args.n_splits,
               "seeds": list(range(args.seeds)), "rows": _with_earlier(rows, args), "wall_s": time.perf_counter() - t0}
    publish("noise_ceiling", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
