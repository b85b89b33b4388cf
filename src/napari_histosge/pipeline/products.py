"""The products the built-in models make: an N-fold lattice of spots, a grid of square cells, segmented cells.

Declared here with their options (the command line's flags and the Super-resolve widget's form
are built from them); the functions that make them are named, not imported, so the command
line reads these declarations before anything heavy loads. :func:`superresolve` is the one
entry that asks a model for a product.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cells.segmentation import GEOJSON_SUFFIXES, Segmentation
from ..errors import InputError
from ..prediction.grid import MAX_FOLD, MIN_FOLD
from ..progress import CancelToken, ProgressGenerator
from ..settings import setting
from ..slide.grid_size import MIN_GRID_UM, check_grid_um
from ..training.products import Product, ProductOptions, choose_product, register_product
from .map_modes import CONSISTENCY, DEFAULT_CONSISTENCY, DETECT, NO_MASK

#: Where :class:`~napari_histosge.slide.mask.TissueMask` is defined (a grid's mask may be one).
TISSUE_MASK_MODULE = "napari_histosge.slide.mask"


@dataclass
class LatticeOptions(ProductOptions):
    """Options of the N-fold lattice."""

    fold: int = setting(4, f"positions per measured spot on the spot lattice, {MIN_FOLD}..{MAX_FOLD}",
                        least=MIN_FOLD, most=MAX_FOLD, meaning=f"an integer between {MIN_FOLD} and {MAX_FOLD}")


@dataclass
class GridOptions(ProductOptions):
    """Options of the grid of cells."""

    grid_um: float | None = setting(None, f"side of the grid cells in µm, at least {MIN_GRID_UM:g}", kind=float,
                                    optional=True, none_means="the model's own cell size")
    mask: Any = setting(DETECT, "tissue mask: 'auto' detects the tissue, or a label image (nonzero = tissue) "
                        "or GeoJSON polygons in full-resolution pixels", kind=str, optional=True,
                        none_means="keep every cell near a spot")
    consistency: str = setting(DEFAULT_CONSISTENCY, "scale the cells under each measured spot so their mean is its "
                               "measurement (exact), the measurement read through its counting noise (counting), "
                               "correct the map by a smooth field that agrees with the spots in expectation, with no "
                               "disc at their edges (smooth), or not at all (none)", choices=CONSISTENCY)

    @classmethod
    def check_option(cls, name: str, value: Any, label: str) -> Any:
        """Option ``name``; the mask as :func:`~.grid_maps.superresolve_grid` takes it.

        A path is kept as text, ``"none"`` is ``None`` (no mask), a
        :class:`~napari_histosge.slide.mask.TissueMask` is taken as it is.
        """
        if name == "mask":
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if isinstance(value, str) and value == NO_MASK:
                return None
            # A TissueMask exists only once its module is loaded: looked up there, so the command line's
            # parser, which reads these declarations, does not load it (numpy, scipy).
            made = sys.modules.get(TISSUE_MASK_MODULE)
            if made is not None and isinstance(value, made.TissueMask):
                return value
        return super().check_option(name, value, label)


#: The ``cells`` option that asks for the built-in nucleus detector on the section's slide.
NUCLEI = "nuclei"


@dataclass
class CellsOptions(ProductOptions):
    """Options of the segmented cells."""

    cells: str = setting(NUCLEI, "the cells: a label image (TIFF/OME-TIFF, PNG, .npy or zarr; 0 = background) or "
                         "GeoJSON polygons (QuPath) in the slide's full-resolution pixels, or 'nuclei' to detect "
                         "nuclei on the slide", kind=str, accepts=(Segmentation,),
                         meaning="a label image or GeoJSON file, or 'nuclei'")
    expand_um: float = setting(0.0, "each cell stands for its outline grown by this many µm (a nucleus as its "
                               "cell: its area; it is predicted at its centroid either way)", least=0.0,
                               meaning="zero or more µm")
    label_scale: float | None = setting(None, "full-resolution pixels per label-image pixel, for a label image "
                                        "of another size than the slide", kind=float, optional=True, above=0.0,
                                        none_means="the label image's size or pixel size")
    consistency: str = setting(DEFAULT_CONSISTENCY, "as the grid's: make each measured spot the mean of the cells "
                               "it holds (exact, counting), correct by a smooth field (smooth) or not (none)",
                               choices=CONSISTENCY)


def check_cells(options: CellsOptions, label) -> None:
    """The segmentation file exists (or is the detector, or one in memory); a scale is for a label image file."""
    cells = options.cells
    if isinstance(cells, Segmentation):
        if options.label_scale is not None:
            raise InputError(f"{label('label_scale')} is for a label image file; a segmentation in memory "
                             "has its scale")
        return
    if cells == NUCLEI and not Path(cells).exists():
        if options.label_scale is not None:
            raise InputError(f"{label('label_scale')} is for a label image file, not the nucleus detector")
        return
    path = Path(cells).expanduser()
    if not path.exists():
        raise InputError(f"{label('cells')} file not found (a label image, a GeoJSON file or 'nuclei')", cells)
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise InputError(f"{label('cells')} is a folder, not a label image or GeoJSON file", cells)
    if options.label_scale is not None:
        if path.suffix.lower() in GEOJSON_SUFFIXES:
            raise InputError(f"{label('label_scale')} is for a label image file; GeoJSON polygons are in the "
                             "slide's full-resolution pixels", cells)


def check_grid(options: GridOptions, label) -> None:
    """The grid's cell size, and its mask file where one is named."""
    check_grid_um(options.grid_um, label("grid_um"))
    mask = options.mask
    if isinstance(mask, str) and mask != DETECT and not Path(mask).is_file():
        raise InputError(f"{label('mask')} file not found" if not Path(mask).is_dir()
                         else f"{label('mask')} file is a folder, not a file", mask)


def lattice_summary(result) -> str:
    """``"N positions (4-fold)"``."""
    return f"{result.n_obs} positions ({result.uns['histosge']['fold']}-fold)"


def grid_summary(result) -> str:
    """``"N grid cells of 30 px"``."""
    return f"{result.n_obs} grid cells of {result.uns['histosge']['grid']['cell_px']:.4g} px"


def cells_summary(result) -> str:
    """``"N segmented cells from SOURCE"``."""
    return f"{result.n_obs} segmented cells from {result.uns['histosge']['cells']['source']}"


LATTICE = register_product(Product(
    name="lattice", label="N-fold lattice", help="N positions per measured spot on the spot lattice",
    options=LatticeOptions, run="napari_histosge.pipeline.steps:lattice_product", summary=lattice_summary,
))
GRID = register_product(Product(
    name="grid", label="grid of cells", help="square cells of a size in µm over the measured tissue",
    options=GridOptions, run="napari_histosge.pipeline.grid_maps:grid_product", summary=grid_summary,
    check=check_grid,
))
CELLS = register_product(Product(
    name="cells", label="segmented cells", help="each segmented cell (a label image, GeoJSON or detected nuclei)",
    options=CellsOptions, run="napari_histosge.pipeline.cell_maps:cells_product", summary=cells_summary,
    check=check_cells,
))


def superresolve(model, adata, fold: int | None = None, *, product: str | None = None, scheduler: str | None = None,
                 n_workers: int | None = None, cancel: CancelToken | None = None,
                 **options: Any) -> ProgressGenerator[Any]:
    """Predict ``adata`` as one of the products ``model`` makes (its default when ``product`` is ``None``).

    Parameters
    ----------
    model
        A trained model; ``model.products`` lists what it makes (HisToSGE and the conditioned
        model: ``"lattice"``; subspot: ``"grid"`` and ``"cells"``).
    adata
        A section (spots, counts, its image).
    fold
        The lattice's positions per measured spot (``fold=`` among ``options`` too).
    product
        The product's name; the model is asked first, so one it does not make is refused
        before any work.
    scheduler, n_workers, cancel
        Where features are read and predicted (lattice), and the cancel token.
    **options
        The product's options: ``fold`` (lattice); ``grid_um``, ``mask``, ``consistency`` (grid:
        ``mask`` as :func:`~.grid_maps.superresolve_grid` takes it, a path, a
        :class:`~napari_histosge.slide.mask.TissueMask`, ``"auto"``, or ``None``/``"none"`` for none);
        ``cells`` (a path, ``"nuclei"`` or a :class:`~napari_histosge.cells.Segmentation`),
        ``expand_um``, ``label_scale``, ``consistency`` (cells).

    Returns
    -------
    AnnData
        The product: one row per position (lattice), grid cell (grid) or segmented cell (cells),
        X log1p(counts per 1e4).

    Raises
    ------
    InputError
        If the model does not make ``product`` or the product does not take an option (one line).
    """
    if fold is not None:
        options["fold"] = fold
    chosen = choose_product(model, product)
    checked = chosen.make_options(options)
    return (yield from chosen.runner()(model, adata, checked, scheduler=scheduler, n_workers=n_workers,
                                       cancel=cancel))
