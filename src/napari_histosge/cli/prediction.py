"""``histosge predict`` (at spots or given positions) and ``histosge superresolve`` (N-fold, or a grid of cells)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from ..pipeline.map_modes import CONSISTENCY, DEFAULT_CONSISTENCY
from ..slide.grid_size import MIN_GRID_UM
from .options import (
    add_common_args,
    add_data_args,
    add_scale_args,
    check_scale_args,
    drive,
    read_section,
    require_data,
    require_file,
    require_grid_um,
    require_int,
    require_positive,
    require_prediction_output,
    require_section,
    write_h5ad,
)


def add_parsers(sub) -> None:
    """Register ``predict`` and ``superresolve`` on the subparsers ``sub``."""
    from ..prediction.grid import MAX_FOLD, MIN_FOLD

    p = sub.add_parser("predict", help="predict expression at DATA's measured spots or at positions from a CSV "
                                       "(also on a section the model was not trained on)")
    p.add_argument("model", help="checkpoint written by 'histosge train'")
    add_data_args(p)
    p.add_argument("--positions",
                   help="CSV with columns id,x,y (full-resolution image pixels of DATA) to predict at instead of "
                        "DATA's spots; the output keeps its ids in file order")
    p.add_argument("--diameter", type=float,
                   help="full-resolution pixels across the disc each prediction stands for; the patch read "
                        "around it follows it as in training (default: the model's training spot)")
    g = p.add_argument_group("a bare slide image as DATA (SVS, TIFF, NDPI, JPEG, PNG: no spots, no counts)")
    g.add_argument("--grid-um", type=float,
                   help=f"predict square cells of this side in µm (at least {MIN_GRID_UM:g}) over the tissue "
                        "(default: the model's spot lattice over the tissue)")
    g.add_argument("--mask",
                   help="tissue mask: a label image (nonzero = tissue) or GeoJSON polygons in full-resolution "
                        "pixels; 'auto' (default) detects the tissue, 'none' takes the whole slide")
    g.add_argument("--um-per-px", type=float,
                   help="the slide's pixel size in µm (default: from its metadata; unknown: the training slides')")
    p.add_argument("--out", required=True, help="output .h5ad, or .zarr for a SpatialData store")
    add_scale_args(p)
    add_common_args(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("superresolve", help="super-resolution: expression between measured spots (N-fold "
                                            "lattice), or on a grid of cells (subspot model)")
    p.add_argument("model", help="checkpoint written by 'histosge train'")
    add_data_args(p)
    p.add_argument("--fold", type=int,
                   help=f"N: positions per measured spot on the spot lattice, {MIN_FOLD}..{MAX_FOLD} "
                        "(default 4; not for a subspot model)")
    p.add_argument("--grid-um", type=float,
                   help=f"subspot model: side of the grid cells in µm, at least {MIN_GRID_UM:g} (default: the "
                        "model's own cell size)")
    p.add_argument("--mask",
                   help="subspot model: tissue mask, a label image (nonzero = tissue) or GeoJSON polygons in "
                        "full-resolution pixels; 'auto' (default) detects the tissue, 'none' keeps every cell "
                        "near a spot")
    p.add_argument("--consistency", choices=list(CONSISTENCY),
                   help="subspot model: scale the cells under each measured spot so their mean is its measurement "
                        "(exact), the measurement read through its counting noise (counting), correct the map by a "
                        "smooth field that agrees with the spots in expectation, with no disc at their edges "
                        f"(smooth), or not at all (none); default {DEFAULT_CONSISTENCY}")
    p.add_argument("--out", required=True, help="output .h5ad, or .zarr for a SpatialData store")
    add_scale_args(p)
    add_common_args(p)
    p.set_defaults(handler=cmd_superresolve)


def _check_model_and_data(args: argparse.Namespace) -> None:
    require_prediction_output(args.out)
    require_file(args.model, "model checkpoint")
    require_data(args.data)
    require_file(args.image, "--image file")
    check_scale_args(args)


#: ``predict`` options for a bare slide image only.
SLIDE_OPTIONS = ("grid_um", "mask", "um_per_px")


def check_predict(args: argparse.Namespace):
    """Every ``predict`` option, before the model is loaded; returns the positions read (or ``None``)."""
    _check_model_and_data(args)  # before the imports below (seconds): a wrong --out fails at once
    require_positive(args.diameter, "--diameter")
    from ..slide.open import is_slide_image

    args.slide = is_slide_image(args.data)
    if not args.slide:
        require_section(args.data, bin_um=args.bin_um)
    given = [f"--{name.replace('_', '-')}" for name in SLIDE_OPTIONS if getattr(args, name) is not None]
    if not args.slide and given:
        raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a bare slide image as DATA; "
                         "a section's positions and pixel size come from its spots (superresolve predicts "
                         "between them)", args.data)
    if args.slide:
        if args.image is not None:
            raise InputError("DATA is already a slide image: --image attaches an image to spots", args.image)
        if args.positions is not None and (args.grid_um is not None or args.mask is not None):
            raise InputError("--grid-um and --mask place positions over the tissue, --positions gives them: "
                             "give one or the other")
        require_grid_um(args.grid_um)
        require_positive(args.um_per_px, "--um-per-px")
        if args.mask is not None and args.mask not in ("auto", "none"):
            require_file(args.mask, "--mask file")
    if args.positions is None:
        return None
    from ..prediction.positions import read_positions_csv

    return read_positions_csv(args.positions)


def _load(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.model, device=args.device)


def _provenance(result, args: argparse.Namespace) -> None:
    result.uns["histosge"]["model_path"] = str(Path(args.model).resolve())


@contextmanager
def _warning_lines() -> Iterator[None]:
    """Warnings printed as one ``histosge: warning: ...`` line each (not Python's two-line format)."""
    shown = warnings.showwarning

    def one_line(message, *_args, **_kwargs) -> None:
        print(f"histosge: warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = shown


def _predict_slide(model, positions, args: argparse.Namespace):
    """The prediction on a bare slide image (``DATA``)."""
    from ..pipeline.slide_prediction import predict_slide

    mask = {None: "auto", "none": None}.get(args.mask, args.mask)
    with _warning_lines():
        return drive(predict_slide(model, args.data, positions=None if positions is None else positions.xy,
                                   position_ids=None if positions is None else positions.ids, grid_um=args.grid_um,
                                   mask=mask, um_per_px=args.um_per_px, diameter=args.diameter,
                                   scheduler=args.scheduler, n_workers=args.workers), args)


def cmd_predict(args: argparse.Namespace) -> int:
    """``histosge predict``: predictions at the measured spots, at the CSV's positions, or over a bare slide."""
    positions = check_predict(args)
    from ..pipeline.section_features import warn_if_other_platform
    from ..pipeline.steps import predict_spots  # heavy: after the checks

    model = _load(args)
    if args.slide:
        result = _predict_slide(model, positions, args)
    else:
        adata = read_section(args)
        warn_if_other_platform(model.meta, adata)
        gen = predict_spots(model, adata, positions=None if positions is None else positions.xy,
                            position_ids=None if positions is None else positions.ids, diameter=args.diameter,
                            scheduler=args.scheduler, n_workers=args.workers)
        result = drive(gen, args)
    _provenance(result, args)
    if positions is not None:
        result.uns["histosge"]["positions_file"] = str(Path(args.positions).resolve())
    write_h5ad(result, args.out)
    placed = result.uns["histosge"].get("positions")
    where = (f"positions from {args.positions}" if positions is not None else "measured spots" if not args.slide
             else f"grid cells of {args.grid_um:g} µm" if placed == "grid" else "spot lattice sites on the tissue")
    spread = " (with per-gene uncertainty in layers['std'])" if "std" in result.layers else ""
    print(f"{result.n_obs} {where} x {result.n_vars} genes{spread} "
          f"(discs of {result.uns['histosge']['spot_diameter_px']:.4g} px) -> {args.out}")
    return 0


def check_superresolve(args: argparse.Namespace) -> None:
    """Every ``superresolve`` option, before the model is loaded."""
    from ..prediction.grid import MAX_FOLD, MIN_FOLD

    _check_model_and_data(args)
    grid = args.grid_um is not None or args.mask is not None or (args.consistency is not None)
    if grid and args.fold is not None:
        raise InputError("--fold places positions on the spot lattice; --grid-um, --mask and --consistency "
                         "are for a grid of cells: give one or the other")
    require_section(args.data, bin_um=args.bin_um)
    if args.fold is not None:
        require_int(args.fold, "--fold", MIN_FOLD, MAX_FOLD)
    require_grid_um(args.grid_um)
    if args.mask is not None and args.mask not in ("auto", "none"):
        require_file(args.mask, "--mask file")


def cmd_superresolve(args: argparse.Namespace) -> int:
    """``histosge superresolve``: predictions at N positions per measured spot, or on a grid of cells."""
    check_superresolve(args)
    from ..pipeline.grid_maps import superresolve_grid  # heavy: after the checks
    from ..pipeline.section_features import warn_if_other_platform
    from ..pipeline.steps import superresolve

    model = _load(args)
    on_grid = model.aggregates_cells
    if on_grid and args.fold is not None:
        raise InputError(f"a {model.config.model} model predicts a grid of cells: use --grid-um, not --fold",
                         args.model)
    if not on_grid and (args.grid_um is not None or args.mask is not None or (args.consistency is not None)):
        raise InputError(f"a {model.config.model} model predicts on the spot lattice (--fold); a grid of cells "
                         "needs a model trained with --model subspot", args.model)
    adata = read_section(args)
    warn_if_other_platform(model.meta, adata)
    if on_grid:
        mask = {None: "auto", "none": None}.get(args.mask, args.mask)
        gen = superresolve_grid(model, adata, grid_um=args.grid_um, mask=mask,
                                consistency=args.consistency or DEFAULT_CONSISTENCY)
    else:
        gen = superresolve(model, adata, args.fold or 4, scheduler=args.scheduler, n_workers=args.workers)
    result = drive(gen, args)
    _provenance(result, args)
    write_h5ad(result, args.out)
    spread = " (with per-gene uncertainty in layers['std'])" if "std" in result.layers else ""
    if on_grid:
        grid = result.uns["histosge"]["grid"]
        where = f"grid cells of {grid['cell_px']:.4g} px"
    else:
        where = f"positions ({args.fold or 4}-fold of {adata.n_obs} spots)"
    print(f"{result.n_obs} {where} x {result.n_vars} genes{spread} -> {args.out}")
    return 0
