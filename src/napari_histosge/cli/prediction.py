"""``histosge predict`` (at spots or given positions) and ``histosge superresolve`` (N-fold, or a grid of cells)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from ..pipeline import products as builtin_products  # noqa: F401 - registers the built-in products
from ..settings import declared_fields, setting_of
from ..slide.grid_size import MIN_GRID_UM
from ..training.products import choose_product, get_product, products_taking, registered_products
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
    require_positive,
    require_prediction_output,
    require_section,
    write_h5ad,
)


def add_parsers(sub) -> None:
    """Register ``predict`` and ``superresolve`` on the subparsers ``sub``."""
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

    p = sub.add_parser("superresolve", help="super-resolution: what the model makes of DATA between its measured "
                                            "spots (an N-fold lattice, a grid of cells, ...)")
    p.add_argument("model", help="checkpoint written by 'histosge train'")
    add_data_args(p)
    add_product_args(p)
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


def add_product_args(p: argparse.ArgumentParser) -> None:
    """``--product`` and a flag per option of every registered product (:mod:`~napari_histosge.pipeline.products`)."""
    products = registered_products()
    p.add_argument("--product", choices=[product.name for product in products],
                   help="what to make: " + "; ".join(f"{product.name}, the {product.label}: {product.help}"
                                                     for product in products)
                   + " (default: the first the model makes)")
    taken: set[str] = set()
    for product in products:
        for f in declared_fields(product.options):
            if f.name in taken:
                continue
            taken.add(f.name)
            spec = setting_of(f)
            default = product.options.default_of(f.name)
            shown = spec.none_means if default is None else default
            words = "; 'none': " + spec.none_means if spec.optional and default is not None else ""
            p.add_argument(_flag(f.name), dest=f.name, type=spec.kind if spec.kind in (int, float) else str,
                           choices=list(spec.choices) if spec.choices else None,
                           help=f"{', '.join(owner.name for owner in products_taking([f.name]))}: {spec.help}{words} "
                                f"(default: {shown})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given_options(args: argparse.Namespace) -> dict[str, object]:
    """The product options given on the command line; ``none`` is ``None`` for an option that may be none."""
    given: dict[str, object] = {}
    for product in registered_products():
        for f in declared_fields(product.options):
            value = getattr(args, f.name, None)
            if value is not None:
                given[f.name] = None if value == "none" and setting_of(f).optional else value
    return given


def _options_product(args: argparse.Namespace, given: dict[str, object]):
    """The product the options given are for: ``--product``, else one taking all of them (``None``: none given)."""
    if args.product is not None:
        return get_product(args.product)
    if not given:
        return None
    takers = products_taking(list(given))
    if not takers:
        owners = {name: [p.name for p in products_taking([name])] for name in given}
        parts = "; ".join(f"{_flag(name)} ({' or '.join(owner)})" for name, owner in owners.items())
        raise InputError(f"these options are for different products: {parts}: give one or the other")
    return takers[0]


def check_superresolve(args: argparse.Namespace) -> None:
    """Every ``superresolve`` option, before the model is loaded (each product option as its declared setting)."""
    _check_model_and_data(args)
    args.options = _given_options(args)
    product = _options_product(args, args.options)
    require_section(args.data, bin_um=args.bin_um)
    if product is not None:
        product.make_options(args.options, _flag)


def _model_product(model, args: argparse.Namespace):
    """The product asked of ``model``: ``--product``, else the first it makes that takes the options given."""
    if args.product is not None or not args.options:
        return choose_product(model, args.product)
    made = [get_product(name) for name in model.products]
    fits = [product for product in made if set(args.options) <= set(product.option_names())]
    if not fits:
        default = choose_product(model)
        flags = ", ".join(map(_flag, default.option_names())) or "no options"
        raise InputError(f"a {model.config.model} model makes the {default.label} ({default.name}): use {flags}, "
                         f"not {', '.join(map(_flag, args.options))}", args.model)
    return fits[0]


def cmd_superresolve(args: argparse.Namespace) -> int:
    """``histosge superresolve``: the model's product (its default, or ``--product``) of the section."""
    check_superresolve(args)
    from ..pipeline.section_features import warn_if_other_platform

    model = _load(args)
    product = _model_product(model, args)
    options = product.make_options(args.options, _flag)
    adata = read_section(args)
    warn_if_other_platform(model.meta, adata)
    gen = product.runner()(model, adata, options, scheduler=args.scheduler, n_workers=args.workers)
    result = drive(gen, args)
    _provenance(result, args)
    write_h5ad(result, args.out)
    spread = " (with per-gene uncertainty in layers['std'])" if "std" in result.layers else ""
    print(f"{product.summary(result)} x {result.n_vars} genes{spread} -> {args.out}")
    return 0
