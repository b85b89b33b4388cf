"""What the default gene choice keeps on every shared section: the tissue found, its known markers kept.

For each section in ``$HISTOSGE_DATA`` (default ``../shared/data``: her2st B4 C2 C3 C4,
DLPFC 151675 151676, STUtility MOB1 MOB2), the genes a default training run would predict
(:func:`napari_histosge.pipeline.gene_choice.training_genes` with the default settings, on
every spot of the section) for 300 genes (the Train widget's default) and 1000 (the command
line's): the tissue ``markers="auto"`` finds, the markers it keeps, and which of them the
spatial ranking alone (``markers="none"``) would have left out. No training. Writes
``benchmarks/results/marker_genes.json`` and the ``marker_genes`` block of
``docs/benchmarks-studies.md``. Usage::

    python benchmarks/marker_genes.py
    python benchmarks/marker_genes.py --sections B4 MOB1 --no-doc
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402

from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.markers import choose_tissue, marker_genes, tissue_markers  # noqa: E402
from napari_histosge.io.preprocess import normalize_log1p  # noqa: E402
from napari_histosge.models import train_config  # noqa: E402
from napari_histosge.pipeline.gene_choice import training_genes  # noqa: E402

SIZES = (300, 1000)
SECTIONS = {"B4": "her2st/B4", "C2": "her2st/C2", "C3": "her2st/C3", "C4": "her2st/C4",
            "151675": "dlpfc/151675", "151676": "dlpfc/151676", "MOB1": "stutility_mob/MOB1",
            "MOB2": "stutility_mob/MOB2"}


def symbols(adata_log, genes: list[str], tissue: str | None) -> list[str]:
    """``genes`` by marker symbol (data named by Ensembl id show the table's symbol)."""
    if tissue is None:
        return list(genes)
    by_id = {m.ensembl_id: m.symbol for m in tissue_markers(tissue) if m.ensembl_id}
    return [by_id.get(g, g) for g in genes]


def measure(name: str, path: Path) -> dict:
    adata = read_spots(path)
    log = normalize_log1p(adata)
    tissue = choose_tissue(log)
    row: dict = {"section": name, "spots": adata.n_obs, "genes": adata.n_vars, "tissue": tissue}
    for n in SIZES:
        t0 = time.perf_counter()
        chosen = training_genes(adata, train_config("histosge", n_top_genes=n))
        seconds = time.perf_counter() - t0
        plain = set(training_genes(adata, train_config("histosge", n_top_genes=n, markers="none")))
        kept = marker_genes(log, "auto", n_top=n)
        assert set(kept) <= set(chosen) and len(chosen) == min(n, adata.n_vars)
        row[f"n{n}"] = {"n_chosen": len(chosen), "markers": symbols(log, kept, tissue),
                        "added": symbols(log, [g for g in kept if g not in plain], tissue),
                        "ERBB2": "ERBB2" in chosen, "GRB7": "GRB7" in chosen,
                        "ERBB2_without_markers": "ERBB2" in plain, "GRB7_without_markers": "GRB7" in plain,
                        "seconds": seconds}
    return row


def render(payload: dict) -> str:
    lines = [machine_line(payload["machine"]),
             "Default settings (spatial ranking, `markers=auto`) on every spot of each section; markers kept = "
             "the tissue's known markers detected in at least 5% of the spots (and 10), at most a quarter of the "
             "genes and 24; added = those the spatial ranking alone leaves out.", "",
             "| section | spots | tissue found | genes | markers kept | added by the marker rule | ERBB2, GRB7 "
             "(without markers) |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        for n in SIZES:
            m = r[f"n{n}"]
            her2 = (f"{'yes' if m['ERBB2'] else 'no'}, {'yes' if m['GRB7'] else 'no'} "
                    f"({'yes' if m['ERBB2_without_markers'] else 'no'}, "
                    f"{'yes' if m['GRB7_without_markers'] else 'no'})") if r["tissue"] == "breast" else "-"
            lines.append(f"| {r['section']} | {r['spots']} | {r['tissue'] or 'none'} | {n} | {len(m['markers'])}: "
                         f"{', '.join(m['markers'])} | {', '.join(m['added']) or '-'} | {her2} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    root = existing_data_root()
    rows = [measure(name, root / SECTIONS[name]) for name in args.sections]
    payload = {"machine": machine_info(), "sizes": list(SIZES), "rows": rows}
    publish("marker_genes", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
