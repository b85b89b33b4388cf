"""``histosge demo``: the whole pipeline on a generated slide with known ground truth."""

from __future__ import annotations

import argparse

from .options import add_common_args, drive, require_int, require_output_folder


def add_parsers(sub) -> None:
    """Register ``demo`` on the subparsers ``sub``."""
    p = sub.add_parser("demo", help="run the whole pipeline on a generated slide with known ground truth")
    p.add_argument("--out", default="histosge-demo", help="output folder (default ./histosge-demo)")
    p.add_argument("--epochs", type=int, default=150, help="training epochs for the demo (default 150)")
    add_common_args(p)
    p.set_defaults(handler=cmd_demo)


def check_demo(args: argparse.Namespace) -> None:
    """Every ``demo`` option, before anything is generated."""
    require_output_folder(args.out, "demo folder (--out)")
    require_int(args.epochs, "--epochs", 1)


def cmd_demo(args: argparse.Namespace) -> int:
    """``histosge demo``: generate the slide, run recovery and super-resolution, print the report."""
    check_demo(args)
    from ..demo import run_demo  # heavy: after the checks

    summary = drive(run_demo(args.out, epochs=args.epochs, device=args.device), args)
    print(summary["report"])
    return 0
