"""``histosge region``: the spots or grid cells inside drawn regions, and their expression, as CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .options import add_bin_arg, read_h5ad, require_file, require_measured_genes, require_output, require_section


def add_parsers(sub) -> None:
    """Register ``region`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "region", help="tables of the spots or grid cells inside regions (GeoJSON polygons)",
        description="Select the positions of DATA inside the polygons of a GeoJSON file (full-resolution "
                    "pixels, as QuPath exports them and the plugin's Regions widget saves them) and write "
                    "their values (one row per position) and, per region and gene, the mean inside against "
                    "the rest of the section.")
    p.add_argument("data", help="a section (Space Ranger, ST v1 or .h5ad) or predictions (.h5ad)")
    add_bin_arg(p)
    p.add_argument("--regions", required=True, help="GeoJSON file of the regions' polygons")
    p.add_argument("--out", required=True, help="CSV of the positions inside the regions and their values")
    p.add_argument("--summary", help="CSV of the mean per region and gene (default: OUT's name + _summary.csv)")
    p.add_argument("--genes", help="genes to report: names or gene ids, comma separated, or a text file "
                                   "of them (default: every gene)")
    p.set_defaults(handler=cmd_region)


def check_region(args: argparse.Namespace) -> None:
    """Every ``region`` option, before any data is read."""
    require_section(args.data, bin_um=args.bin_um)
    require_file(args.regions, "regions file (--regions)")
    out = require_output(args.out, ".csv", "region table (--out)")
    if args.summary is not None:
        summary = require_output(args.summary, ".csv", "region summary (--summary)")
        if summary.resolve() == out.resolve():
            raise InputError("--summary and --out name the same file", args.summary)
    if args.genes is not None:
        from ..gene_lists import parse_gene_names

        args.gene_names = parse_gene_names(args.genes)
        if not args.gene_names:
            raise InputError(f"--genes lists no name: {args.genes!r}")
        require_measured_genes(args.gene_names, [args.data], bin_um=args.bin_um)


def _read(data: str, bin_um: int | None):
    from ..io import read_spots

    if Path(data).suffix.lower() == ".h5ad":  # predictions, or a section saved as .h5ad
        return read_h5ad(data, need_positions=True)
    return read_spots(data, bin_um=bin_um)


def cmd_region(args: argparse.Namespace) -> int:
    """``histosge region``: read the regions and DATA, write the tables, print a line per region."""
    check_region(args)
    from ..export.regions import read_regions, region_tables, summary_path, write_region_outputs

    regions = read_regions(args.regions)
    genes = args.gene_names if args.genes is not None else None
    adata = _read(args.data, args.bin_um)
    positions, summary = region_tables(adata, regions, genes)
    write_region_outputs(args.out, positions, summary, summary_out=args.summary)
    counts = positions["region"].value_counts(sort=False)
    for region in counts.index:
        top = summary[summary["region"] == region].head(3)
        higher = ", ".join(f"{g} {d:+.2f}" for g, d in zip(top["gene"], top["difference"], strict=True))
        print(f"{region}: {counts[region]} of {adata.n_obs} positions; highest above the rest: {higher}")
    print(f"wrote {args.out} and {args.summary or summary_path(args.out)}")
    return 0
