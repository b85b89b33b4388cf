"""The ``histosge`` command line: the same steps as the plugin, for batches and clusters.

Every command checks all its options first, then drives a progress generator from
:mod:`napari_histosge.pipeline` with a terminal progress bar. A bad input prints one line
and exits with status 2 (no traceback); a cancelled or interrupted run exits with 130.
The commands live in :mod:`.training` (train, recover), :mod:`.prediction` (predict,
superresolve), :mod:`.evaluate` and :mod:`.demo`; docs/cli.md is the reference.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import CancelledError, HistosgeError
from . import demo, evaluate, prediction, training

__all__ = ["EXIT_CANCELLED", "EXIT_INPUT_ERROR", "build_parser", "main"]

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``histosge`` (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="histosge",
        description="Predict spatial gene expression from H&E histology and super-resolve it (HisToSGE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training, prediction, evaluate, demo):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``histosge``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CancelledError:
        print("histosge: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except HistosgeError as exc:
        print(f"histosge: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("histosge: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
