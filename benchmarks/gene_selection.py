"""Which genes each selection method picks: known markers, spatial structure and noise ceiling.

For each section in ``$HISTOSGE_DATA`` (default ``../shared/data``: her2st B4 C2 C3 C4,
DLPFC 151675 151676, STUtility MOB1 MOB2) and each method of
:func:`napari_histosge.io.preprocess.select_genes` (``hvg``, ``spatial``, ``hvg+spatial``),
the top 300 and top 1000 genes chosen on all spots of the section: which of a short list of
known markers are in, the mean Moran's I of the chosen genes (6-nearest-neighbour graph of
the spots), their mean noise ceiling (split-half reliability of the measurement, 5 binomial
splits: how well any predictor could match them), how many genes the methods share, and the
time each selection takes. No training. Writes ``benchmarks/results/gene_selection.json``
and the ``gene_selection`` block of ``docs/benchmarks-studies.md``. Usage::

    python benchmarks/gene_selection.py
    python benchmarks/gene_selection.py --sections B4 MOB1 --no-doc
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402

from napari_histosge.evaluation.noise_ceiling import ceiling_from_reliability, split_half_reliability  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import GENE_METHODS, morans_i, normalize_log1p, select_genes  # noqa: E402

SIZES = (300, 1000)
#: Known markers per data set: name shown -> name in the data (DLPFC's genes are Ensembl ids).
MARKERS = {
    "her2st": {"ERBB2": "ERBB2", "GRB7": "GRB7", "KRT19": "KRT19", "COL1A1": "COL1A1", "IGKC": "IGKC"},
    "dlpfc": {"MBP": "ENSG00000197971", "PCP4": "ENSG00000183036", "SNAP25": "ENSG00000132639",
              "GFAP": "ENSG00000131095"},
    # Olfactory bulb layers: granule cells (Penk), mitral cells (Slc17a7), Doc2g and Kctd12
    # (mitral / outer layers), as in the original ST paper and SpatialDE's mouse olfactory bulb.
    "stutility_mob": {"Penk": "Penk", "Slc17a7": "Slc17a7", "Doc2g": "Doc2g", "Kctd12": "Kctd12"},
}


def sections(root: Path, wanted: list[str] | None) -> list[tuple[str, str, Path]]:
    """``(data set, section, folder)`` of every shared section (or those ``wanted``)."""
    found = [(group, p.name, p) for group in MARKERS for p in sorted((root / group).glob("*")) if p.is_dir()]
    return [s for s in found if not wanted or s[1] in wanted]


def measure(group: str, folder: Path) -> list[dict]:
    """One row per method and size for one section."""
    log = normalize_log1p(read_spots(folder))
    moran = morans_i(log)
    chosen, seconds = {}, {}
    for method in GENE_METHODS:
        for n in SIZES:
            t0 = time.perf_counter()
            chosen[method, n] = select_genes(log, n_top=n, method=method)
            seconds[method, n] = time.perf_counter() - t0
    union = sorted({g for genes in chosen.values() for g in genes})
    ceiling = ceiling_from_reliability(split_half_reliability(read_spots(folder), union, seed=0))
    present = {shown: name for shown, name in MARKERS[group].items() if name in log.var_names}
    rows = []
    for (method, n), genes in chosen.items():
        idx = log.var_names.get_indexer(genes)
        rows.append({
            "method": method, "n_top": n, "n_genes": len(genes), "n_spots": int(log.n_obs),
            "n_genes_measured": int(log.n_vars),
            "markers_in": [shown for shown, name in present.items() if name in set(genes)],
            "markers_checked": list(present),
            "mean_morans_i": float(np.nanmean(moran[idx])),
            "mean_ceiling": float(np.nanmean(ceiling[genes].to_numpy())),
            "shared": {other: len(set(genes) & set(chosen[other, n])) for other in GENE_METHODS},
            "seconds": seconds[method, n],
        })
    return rows


def render(payload: dict) -> str:
    lines = [
        machine_line(payload["machine"]),
        "Genes chosen on all spots of each section (log1p of normalize_total 1e4) by each method of "
        "`select_genes`: 'hvg' (normalised dispersion, scanpy's seurat flavour), 'spatial' (Moran's I on the "
        "6-nearest-neighbour graph of the spots, among genes detected in at least 5% of the spots and 10 spots), "
        "'hvg+spatial' (the better of each gene's two ranks). 'Markers in': which known markers are among the "
        "chosen genes (her2st: ERBB2 GRB7 KRT19 COL1A1 IGKC; DLPFC: MBP PCP4 SNAP25 GFAP; MOB: Penk Slc17a7 "
        "Doc2g Kctd12). 'Moran's I' and 'ceiling': means over the chosen genes; the ceiling is the noise "
        "ceiling of the measurement (split-half reliability, 5 binomial splits, square root), the best PCC any "
        "predictor can reach on a gene. 'Shared with hvg': chosen genes also in the hvg list of the same size. "
        "'Time': one selection, Moran's I included. MOB1 and MOB2 hold 1,000 genes, so their top 1000 is every "
        "gene.",
        "",
        "| section | method | markers in top 300 | markers in top 1000 | Moran's I 300 / 1000 | "
        "ceiling 300 / 1000 | shared with hvg 300 / 1000 | time s 300 / 1000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for section in payload["sections"]:
        rows = [r for r in payload["rows"] if r["section"] == section]
        for method in GENE_METHODS:
            by_n = {r["n_top"]: r for r in rows if r["method"] == method}
            if not by_n:
                continue
            small, large = by_n[SIZES[0]], by_n[SIZES[1]]
            checked = len(small["markers_checked"])

            def markers(r: dict, checked: int = checked) -> str:
                names = f": {' '.join(r['markers_in'])}" if r["markers_in"] else ""
                return f"{len(r['markers_in'])}/{checked}{names}"

            lines.append(
                f"| {section} | {method} | {markers(small)} | {markers(large)} | "
                f"{small['mean_morans_i']:.3f} / {large['mean_morans_i']:.3f} | "
                f"{small['mean_ceiling']:.3f} / {large['mean_ceiling']:.3f} | "
                f"{small['shared']['hvg']} / {large['shared']['hvg']} | "
                f"{small['seconds']:.2f} / {large['seconds']:.2f} |")
    totals = []
    for method in GENE_METHODS:
        found = [sum(len(r["markers_in"]) for r in payload["rows"] if r["method"] == method and r["n_top"] == n)
                 for n in SIZES]
        checked = sum(len(r["markers_checked"]) for r in payload["rows"]
                      if r["method"] == method and r["n_top"] == SIZES[0])
        totals.append(f"{method}: {found[0]}/{checked} in the top 300, {found[1]}/{checked} in the top 1000")
    lines += ["", "Markers found over all sections: " + "; ".join(totals) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", help="section names (default: all)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    info = machine_info()
    rows, names = [], []
    t0 = time.perf_counter()
    for group, name, folder in sections(existing_data_root(), args.sections):
        section_rows = measure(group, folder)
        rows += [{"section": name, "dataset": group, **r} for r in section_rows]
        names.append(name)
        found = {r["method"]: len(r["markers_in"]) for r in section_rows if r["n_top"] == SIZES[0]}
        print(f"[{name}] markers in the top {SIZES[0]}: {found}", flush=True)
    payload = {"machine": info, "sizes": list(SIZES), "methods": list(GENE_METHODS), "markers": MARKERS,
               "sections": names, "rows": rows, "wall_s": time.perf_counter() - t0}
    publish("gene_selection", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
