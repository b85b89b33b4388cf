"""Readers that turn spot data (Space Ranger, Visium HD bins, ST v1, .h5ad, SpatialData) into the spot AnnData.

Every reader returns raw float32 CSR counts in ``X``, positions in full-resolution
pixels in ``obsm["spatial"]`` and ``uns["histosge"]`` as described in
docs/architecture.md. Bad input raises :class:`~napari_histosge.errors.InputError`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .detect import FORMATS, SUPPORTED, detect_format
from .gene_names import attach_gene_names, find_gene_table, read_gene_table
from .markers import attach_marker_symbols

if TYPE_CHECKING:
    import anndata

    from ._common import image_size

#: The readers, imported on first use: importing ``napari_histosge.io`` (or its light
#: :mod:`.detect` and :mod:`.gene_header`) must not cost pandas and anndata, so the command
#: line refuses a folder that is no section, or an unknown gene, before any of them loads.
_READERS = {
    "h5ad": ("h5ad", "read_h5ad_spots"),
    "spaceranger": ("spaceranger", "read_spaceranger"),
    "visium_hd": ("visium_hd", "read_visium_hd"),
    "spatialdata": ("spatialdata_io", "read_spatialdata"),
    "st_v1": ("st_v1", "read_st_v1"),
}


def __getattr__(name: str) -> Any:
    if name == "image_size":
        return importlib.import_module(f"{__name__}._common").image_size
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _reader(format: str):
    module, function = _READERS[format]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)

__all__ = ["FORMATS", "detect_format", "image_size", "read_spots", "require_spot_image", "spot_image"]


def read_spots(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    image: str | os.PathLike | None = None,
    bin_um: int | None = None,
    gene_names: str | os.PathLike | None = None,
) -> anndata.AnnData:
    """Read spot-level spatial transcriptomics data.

    Parameters
    ----------
    path
        A Space Ranger output folder, a Visium HD output folder (or one of its
        ``binned_outputs/square_XXXum`` folders), an ST v1 section folder or an ``.h5ad`` file.
    format
        ``"spaceranger"``, ``"visium_hd"``, ``"st_v1"``, ``"h5ad"`` or ``"spatialdata"``; detected
        from names when ``None``.
    image
        Optional full-resolution image (scale 1.0), attached as ``images["fullres"]``.
    bin_um
        Visium HD only: the bin size to read, 8 or 16 µm (default 16 when present, else 8).
    gene_names
        A table of Ensembl ids and gene symbols (:func:`~napari_histosge.io.gene_names.read_gene_table`);
        default: the one shipped with the data, if any (``<section>_genes.tsv``, ``gene_names.tsv``...).
        Each gene's other name goes to ``var`` (``gene_symbols`` or ``gene_ids``).

    Returns
    -------
    anndata.AnnData
        Spots under tissue with raw counts, following docs/architecture.md.

    Raises
    ------
    InputError
        If the path is missing, unsupported, or its content is bad.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path)
    if image is not None and not Path(image).is_file():
        raise InputError("image file does not exist", image)
    if format is None:
        format = detect_format(path)
        if format is None:
            raise InputError(f"unsupported input; {SUPPORTED}", path)
    elif format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}", path)
    if bin_um is not None and format != "visium_hd":
        raise InputError(f"a bin size applies to Visium HD outputs only, and this is {format!r}", path)
    table = read_gene_table(gene_names) if gene_names is not None else None  # a bad table fails first
    if format == "h5ad":
        if not path.is_file():
            raise InputError("format 'h5ad' needs an .h5ad file, not a folder", path)
        adata = _reader(format)(path, image=image)
    elif not path.is_dir():
        raise InputError(f"format {format!r} needs a folder; {SUPPORTED}", path)
    elif format == "visium_hd":
        adata = _reader(format)(path, bin_um=bin_um, image=image)
    else:
        adata = _reader(format)(path, image=image)
    if table is None and format != "h5ad" and (shipped := find_gene_table(path)) is not None:
        try:
            table = read_gene_table(shipped)
        except InputError:  # a features file of another layout: the data are read without symbols
            table = None
    if table:
        attach_gene_names(adata, table)
    else:  # data named by id with no table: the known markers' symbols at least (MBP for ENSG00000197971)
        attach_marker_symbols(adata)
    return adata


def spot_image(adata: anndata.AnnData) -> tuple[str, float] | None:
    """The largest image recorded for a spot AnnData.

    Parameters
    ----------
    adata
        A spot AnnData from :func:`read_spots`.

    Returns
    -------
    tuple or None
        ``(path, scale)`` with ``scale`` = image px per full-res px, or ``None``
        when no image is recorded.
    """
    info: Any = adata.uns.get("histosge", {}) or {}
    images = info.get("images") or {}
    if not images:
        return None
    name = info.get("image")
    if name not in images:
        name = max(images, key=lambda n: float(images[n]["scale"]))
    return str(images[name]["path"]), float(images[name]["scale"])


def require_spot_image(adata: anndata.AnnData) -> tuple[str, float]:
    """:func:`spot_image`, or an :class:`InputError` naming the data when no image is recorded."""
    found = spot_image(adata)
    if not found or not found[0]:
        source = (adata.uns.get("histosge", {}) or {}).get("source")
        raise InputError("no histology image is attached to these spots", source)
    return found
