"""The ``histosge`` command line: the same steps as the plugin, for batches and clusters.

Every command checks all its options first, then drives a progress generator from
:mod:`napari_histosge.pipeline` with a terminal progress bar. A bad input prints one line
and exits with status 2 (no traceback); a cancelled or interrupted run exits with 130.
Warnings are one line each, and the harmless ones of libraries are not shown (:func:`cli_warnings`).
The commands live in :mod:`.training` (train, recover), :mod:`.prediction` (predict,
superresolve), :mod:`.evaluate`, :mod:`.regions` (region), :mod:`.nuclei`, :mod:`.figure` and :mod:`.demo`;
docs/cli.md is the reference.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import CancelledError, HistosgeError
from . import demo, evaluate, figure, nuclei, prediction, regions, training

__all__ = ["EXIT_CANCELLED", "EXIT_INPUT_ERROR", "build_parser", "main"]

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130

#: Library warnings that say nothing a user can act on (``(message regex, category)``): shown
#: to developers by Python's defaults, hidden on the command line. Deprecations are for the
#: developers of napari-histosge (the test suite shows them), never for its users.
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    ("", DeprecationWarning),
    ("", PendingDeprecationWarning),
    ("", FutureWarning),  # legacy_api_wrap's "no longer positional", pandas and anndata API notices
    (r"Transforming to str index", UserWarning),  # anndata: our ids are strings already
    (r".*of view, initializing view as actual", UserWarning),  # anndata: copy-on-write of a subset
    (r".*(nonconformant|not writing description)", UserWarning),  # tifffile writing test images
    (r"zarr v3 autosharding", UserWarning),  # zarr's notice of a future default, when a store is written
)
#: Libraries whose log messages below ERROR stay off the command line: tifffile's notes on
#: files it reads anyway, huggingface_hub's "Retrying in 1s" lines (the error that follows
#: says what failed).
QUIET_LOGGERS = ("tifffile", "huggingface_hub")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``histosge`` (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="histosge",
        description="Predict spatial gene expression from H&E histology and super-resolve it (HisToSGE).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the version of napari-histosge and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (training, prediction, evaluate, regions, nuclei, figure, demo):
        group.add_parsers(sub)
    return parser


def package_version() -> str:
    """The installed napari-histosge's version (the one pyproject.toml declares)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-histosge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``histosge``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        with cli_warnings():
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


@contextmanager
def cli_warnings() -> Iterator[None]:
    """Warnings as one ``histosge: warning: ...`` line each, without the harmless library ones.

    Our own warnings (a low-resolution image, a cache that cannot be written...) are kept;
    :data:`HARMLESS_WARNINGS` and the log messages of :data:`QUIET_LOGGERS` are dropped.
    ``python -W`` or ``$PYTHONWARNINGS`` still choose what is shown.
    """
    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())  # a multi-line library message stays one line
        print(f"histosge: warning: {text}", file=sys.stderr)

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        if not sys.warnoptions:
            for message, category in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
        warnings.showwarning = one_line
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels, strict=True):
                log.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
