"""``histosge predict`` (at spots or given positions) and ``histosge superresolve`` (N-fold, or a grid of cells)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .options import (
    add_common_args,
    add_data_args,
    add_scale_args,
    check_scale_args,
    drive,
    read_section,
    require_data,
    require_file,
    require_int,
    require_output,
    require_positive,
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
    p.add_argument("--out", required=True, help="output .h5ad")
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
                   help="subspot model: side of the grid cells in µm (default: the model's own cell size)")
    p.add_argument("--mask",
                   help="subspot model: tissue mask, a label image (nonzero = tissue) or GeoJSON polygons in "
                        "full-resolution pixels; 'auto' (default) detects the tissue, 'none' keeps every cell "
                        "near a spot")
    p.add_argument("--consistency", choices=["exact", "counting", "none"],
                   help="subspot model: scale the cells under each measured spot so their mean is its measurement "
                        "(exact, default), the measurement read through its counting noise (counting), or not at "
                        "all (none)")
    p.add_argument("--out", required=True, help="output .h5ad")
    add_scale_args(p)
    add_common_args(p)
    p.set_defaults(handler=cmd_superresolve)


def _check_model_and_data(args: argparse.Namespace) -> None:
    require_output(args.out, ".h5ad", "output (--out)")
    require_file(args.model, "model checkpoint")
    require_data(args.data)
    require_file(args.image, "--image file")
    check_scale_args(args)


def check_predict(args: argparse.Namespace):
    """Every ``predict`` option, before the model is loaded; returns the positions read (or ``None``)."""
    from ..prediction.positions import read_positions_csv

    _check_model_and_data(args)
    require_positive(args.diameter, "--diameter")
    return None if args.positions is None else read_positions_csv(args.positions)


def _load(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.model, device=args.device)


def _provenance(result, args: argparse.Namespace) -> None:
    result.uns["histosge"]["model_path"] = str(Path(args.model).resolve())


def cmd_predict(args: argparse.Namespace) -> int:
    """``histosge predict``: predictions at the measured spots or at the CSV's positions."""
    positions = check_predict(args)
    from ..pipeline.steps import predict_spots  # heavy: after the checks

    model = _load(args)
    adata = read_section(args)
    gen = predict_spots(model, adata, positions=None if positions is None else positions.xy,
                        position_ids=None if positions is None else positions.ids, diameter=args.diameter,
                        scheduler=args.scheduler, n_workers=args.workers)
    result = drive(gen, args)
    _provenance(result, args)
    if positions is not None:
        result.uns["histosge"]["positions_file"] = str(Path(args.positions).resolve())
    write_h5ad(result, args.out)
    where = f"positions from {args.positions}" if positions is not None else "measured spots"
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
    if args.fold is not None:
        require_int(args.fold, "--fold", MIN_FOLD, MAX_FOLD)
    require_positive(args.grid_um, "--grid-um")
    if args.mask is not None and args.mask not in ("auto", "none"):
        require_file(args.mask, "--mask file")


def cmd_superresolve(args: argparse.Namespace) -> int:
    """``histosge superresolve``: predictions at N positions per measured spot, or on a grid of cells."""
    check_superresolve(args)
    from ..pipeline.grid_maps import superresolve_grid  # heavy: after the checks
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
    if on_grid:
        mask = {None: "auto", "none": None}.get(args.mask, args.mask)
        gen = superresolve_grid(model, adata, grid_um=args.grid_um, mask=mask,
                                consistency=args.consistency or "exact")
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
