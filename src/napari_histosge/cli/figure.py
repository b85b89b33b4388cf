"""``histosge figure``: one gene's map over the H&E, with its legend and a scale bar, as PNG, SVG or PDF."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import InputError
from .options import add_gene_names_arg, read_h5ad, require_output, require_predictions


def add_parsers(sub) -> None:
    """Register ``figure`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "figure", help="a gene's map over the slide, with legend and scale bar (PNG, SVG or PDF)",
        description="Paint one gene of a predictions file (or spot data) over its H&E as the plugin's heatmap "
                    "shows it, and write it with the gene's colour bar and a scale bar. The format follows "
                    "--out's suffix; in SVG and PDF the legend and scale bar stay text and paths.")
    p.add_argument("predictions", help=".h5ad of predictions (superresolve, predict) or of spots")
    p.add_argument("--gene", required=True, help="the gene to show (a name or a gene id)")
    p.add_argument("--out", required=True, help="the figure: .png, .svg or .pdf")
    p.add_argument("--limits", nargs=2, type=float, metavar=("LO", "HI"),
                   help="the colour scale's ends (default: the 1st and 99th percentile of the gene's values)")
    p.add_argument("--slide", help="the H&E to paint over (default: the image the file records, or one of that "
                                   "name beside it; white when none is found)")
    p.add_argument("--title", help="a line above the map (default: none)")
    p.add_argument("--size", type=int, default=1600, help="longest side of the map in pixels (default 1600)")
    add_gene_names_arg(p)
    p.set_defaults(handler=cmd_figure)


def check_figure(args: argparse.Namespace) -> None:
    """Every ``figure`` option, before any file is read."""
    from ..export.figure import figure_format

    require_predictions(args.predictions)
    if not str(args.gene).strip():
        raise InputError("--gene is empty; name the gene to show")
    figure_format(args.out)
    require_output(args.out, None, "figure (--out)")
    if args.limits is not None:
        lo, hi = args.limits
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise InputError(f"--limits must be two finite numbers, LO below HI; got {lo:g} {hi:g}")
    if args.slide is not None and not Path(args.slide).exists():
        raise InputError("slide image (--slide) not found", args.slide)
    if not 16 <= args.size <= 20000:
        raise InputError(f"--size must be between 16 and 20000 pixels, got {args.size}")
    if args.gene_name_table is not None:
        from ..io.gene_names import read_gene_table

        read_gene_table(args.gene_name_table)  # a bad table: one line, before the predictions are read


def cmd_figure(args: argparse.Namespace) -> int:
    """``histosge figure``: read the file, render the gene over its slide, write the figure."""
    check_figure(args)
    from ..export.figure import write_figure  # heavy: after the checks
    from ..export.render import find_slide, pick_gene, render_map
    from ..io.gene_names import gene_label
    from ..io.markers import attach_recorded_symbols

    adata = read_h5ad(args.predictions, need_positions=True)
    attach_recorded_symbols(adata, args.gene_name_table)  # genes named by id: MBP finds ENSG00000197971
    gene = pick_gene(adata, args.gene, source=args.predictions)
    slide = Path(args.slide) if args.slide else None
    if slide is None:
        found = find_slide(adata, near=args.predictions)
        if found is None:
            print("histosge: warning: no slide image found (none recorded, or not on disk); drawing on white "
                  "(give --slide IMAGE)", file=sys.stderr)
        else:
            slide = found[0]
    limits = (args.limits[0], args.limits[1]) if args.limits is not None else None
    image, um_per_px, legend = render_map(adata, gene, background=slide, limits=limits, near=args.predictions,
                                          max_size=args.size)
    out = write_figure(args.out, image, legend=legend, um_per_image_px=um_per_px, title=args.title)
    over = f"over {slide.name}" if slide is not None else "on white"
    print(f"wrote {out}: {gene_label(adata, gene)} {legend.vmin:.3g} .. {legend.vmax:.3g} {legend.units}, {over}"
          + ("" if um_per_px else "; pixel size unknown, no scale bar"))
    return 0
