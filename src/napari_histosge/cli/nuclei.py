"""``histosge nuclei``: nuclei found on a slide (or cells read from a segmentation) as labels and a cell table.

The detector's flags are built from :class:`~napari_histosge.cells.NucleusSettings`, the
declaration the Detect nuclei widget reads its fields and defaults from too.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from ..errors import InputError
from .options import add_bin_arg, drive, require_data, require_file, require_output_folder, require_positive


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parsers(sub) -> None:
    """Register ``nuclei`` on the subparsers ``sub``."""
    from ..cells.nucleus_settings import NucleusSettings

    p = sub.add_parser(
        "nuclei", help="detect nuclei on a slide (or read a segmentation) into labels.zarr and cells.h5ad",
        description="Find nuclei on the H&E of a slide or section with the built-in detector (haematoxylin by "
                    "colour deconvolution, blob seeds and a watershed, tile by tile at the slide's pixel size), "
                    "or read a user's segmentation (--segmentation: a label image or GeoJSON polygons from "
                    "StarDist, Cellpose or QuPath), and write OUT/labels.zarr (label raster, 0 = background) "
                    "and OUT/cells.h5ad (one row per cell: centroid in full-resolution pixels, area, label id).")
    p.add_argument("data", help="a slide (SVS, TIFF, JPEG, PNG, OME-Zarr) or a section with an H&E "
                                "(Space Ranger, ST v1, .h5ad, SpatialData)")
    p.add_argument("--out", required=True, help="output folder (made if missing)")
    p.add_argument("--mpp", type=float, help="micrometres per full-resolution pixel, when the file does not "
                                             "record it (or records it wrongly)")
    p.add_argument("--segmentation", help="read cells from this label image (TIFF/OME-TIFF, PNG, .npy, zarr; "
                                          "0 = background) or GeoJSON of polygons instead of detecting nuclei")
    p.add_argument("--label-scale", type=float,
                   help="full-resolution pixels per pixel of the --segmentation label image, when its size "
                        "differs from the slide's")
    p.add_argument("--nuclei-geometry", action="store_true",
                   help="a QuPath cell export (--segmentation GeoJSON): each cell's nucleus outline "
                        "(nucleusGeometry) instead of its cell outline")
    p.add_argument("--no-tissue-mask", action="store_true",
                   help="search the whole slide, glass included (default: tissue only)")
    add_bin_arg(p)
    g = p.add_argument_group("detector (sizes in µm)")
    defaults = NucleusSettings()
    for f in dataclasses.fields(NucleusSettings):
        default = getattr(defaults, f.name)
        shown = "" if default is None else f" (default {default:g})"
        g.add_argument(_flag(f.name), dest=f.name, type=float, default=default, help=f.metadata["help"] + shown)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_nuclei)


def check_nuclei(args: argparse.Namespace):
    """Every ``nuclei`` option before any image is read; the detector's settings."""
    from ..cells.nucleus_settings import NucleusSettings

    require_data(args.data)
    require_output_folder(args.out, "output folder (--out)")
    require_positive(args.mpp, "--mpp")
    require_positive(args.label_scale, "--label-scale")
    if args.segmentation is not None:
        if not Path(args.segmentation).is_dir():  # a zarr label image is a folder
            require_file(args.segmentation, "segmentation (--segmentation)")
        # the detector's flags would be silently ignored: say so instead
        defaults = NucleusSettings()
        given = [_flag(f.name) for f in dataclasses.fields(NucleusSettings)
                 if getattr(args, f.name) != getattr(defaults, f.name)]
        given += ["--no-tissue-mask"] if args.no_tissue_mask else []
        if given:
            raise InputError(f"{given[0]} applies to the detector, not to a --segmentation")
    elif args.label_scale is not None or args.nuclei_geometry:
        raise InputError(f"{'--label-scale' if args.label_scale is not None else '--nuclei-geometry'} applies to "
                         "a --segmentation")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(NucleusSettings)}
    return NucleusSettings(**values).check()


def cmd_nuclei(args: argparse.Namespace) -> int:
    """``histosge nuclei``: detect (or read) the cells, write them, print a line."""
    settings = check_nuclei(args)
    from ..cells import detect_nuclei, read_segmentation, slide_source, write_segmentation
    from ..cells.detect import raster_fits_in_memory
    from ..slide.open import open_slide

    source = slide_source(args.data, mpp=args.mpp, bin_um=args.bin_um)
    out = Path(args.out)
    if args.segmentation is not None:
        seg = read_segmentation(args.segmentation, source.shape, mpp=source.mpp, scale=args.label_scale,
                                nuclei=args.nuclei_geometry)
    else:
        if source.mpp is None:
            raise InputError("the slide records no pixel size; give it with --mpp (µm per pixel)", source.image)
        out.mkdir(parents=True, exist_ok=True)
        # a gigapixel slide's raster stays on disk
        store = None if raster_fits_in_memory(source.shape, source.mpp, settings) else out / ".labels-work.zarr"
        try:
            with open_slide(source.image) as slide:
                seg = drive(detect_nuclei(slide, mpp=source.mpp, scale=source.scale, settings=settings,
                                          tissue=not args.no_tissue_mask, labels_store=store,
                                          source=str(args.data)), args)
            labels_path, cells_path = write_segmentation(seg, out)
        finally:
            if store is not None:
                shutil.rmtree(store, ignore_errors=True)
        print(f"{seg.n_cells:,} nuclei; wrote {labels_path} and {cells_path}")
        return 0
    labels_path, cells_path = write_segmentation(seg, out)
    print(f"{seg.n_cells:,} cells from {args.segmentation}; wrote {labels_path} and {cells_path}")
    return 0
