"""``histosge evaluate``: score a predictions file against the measured spots (the library does the scoring)."""

from __future__ import annotations

import argparse

from ..outputs import write_csv
from .options import (
    add_data_args,
    read_h5ad,
    read_section,
    require_file,
    require_output,
    require_predictions,
    require_section,
)


def add_parsers(sub) -> None:
    """Register ``evaluate`` on the subparsers ``sub``."""
    p = sub.add_parser("evaluate", help="score predictions (.h5ad) against measured spots")
    p.add_argument("predictions", help=".h5ad of predictions at measured spots (from 'recover' or 'predict')")
    add_data_args(p)
    p.add_argument("--layers", help="layer annotation TSV (barcode, layer) for spatial-domain ARI")
    p.add_argument("--metrics", help="write per-gene metrics to this CSV")
    p.set_defaults(handler=cmd_evaluate)


def check_evaluate(args: argparse.Namespace) -> None:
    """Every ``evaluate`` option, before any file is read."""
    require_predictions(args.predictions)
    require_section(args.data, bin_um=args.bin_um)
    require_file(args.image, "--image file")
    require_file(args.layers, "layer annotation file (--layers)")
    if args.metrics is not None:
        require_output(args.metrics, ".csv", "metrics file (--metrics)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``histosge evaluate``: read both files, score with the library, print the numbers."""
    check_evaluate(args)
    from ..evaluation.metrics import read_layer_annotations  # heavy: after the checks
    from ..evaluation.predictions import evaluate_predictions
    from ..evaluation.uncertainty import format_uncertainty

    layers = read_layer_annotations(args.layers) if args.layers else None
    predictions = read_h5ad(args.predictions)
    result = evaluate_predictions(predictions, read_section(args), layers=layers)
    s = result.summary
    n_left_out = result.n_unmatched_spots
    unmatched = f" ({n_left_out} predicted ids not measured, left out)" if n_left_out else ""
    print(f"{len(result.spots)} spots x {len(result.genes)} genes{unmatched}: PCC {s['mean_pcc']:.3f} "
          f"(median {s['median_pcc']:.3f}), MSE {s['mse']:.4f}, MAE {s['mae']:.4f}")
    if result.uncertainty is not None:
        print(format_uncertainty(result.uncertainty))
    if args.metrics:
        write_csv(args.metrics, result.metrics, what="metrics file (--metrics)")
    if result.ari is not None:
        print(f"spatial-domain ARI (k-means vs layers): predicted {result.ari['predicted']:.3f}, "
              f"measured {result.ari['measured']:.3f}")
    return 0
