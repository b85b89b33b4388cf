"""Cells of a slide: a built-in nucleus detector, users' segmentations, and the cell table.

:func:`detect_nuclei` finds nuclei on a slide tile by tile; :func:`read_segmentation` reads a
label image or GeoJSON polygons (StarDist, Cellpose, QuPath); both give a
:class:`Segmentation`: a label raster at a known scale and an AnnData of cells.

Each name loads its module on first use, so the command line reads the cells product's
declaration (which names :class:`Segmentation`) without loading the detector or the readers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .detect import detect_nuclei, haematoxylin, segment_tile
    from .nucleus_settings import NucleusSettings
    from .read import (
        read_cell_polygons,
        read_label_image,
        read_segmentation,
        segmentation_of_array,
        segmentation_of_polygons,
    )
    from .segmentation import CellUnits, Segmentation, cell_table, segmentation_from_labels
    from .source import SlideSource, slide_source
    from .write import write_segmentation

#: The module of each name loaded on first use.
_LAZY = {
    **dict.fromkeys(("detect_nuclei", "haematoxylin", "segment_tile"), "detect"),
    "NucleusSettings": "nucleus_settings",
    **dict.fromkeys(("read_cell_polygons", "read_label_image", "read_segmentation", "segmentation_of_array",
                     "segmentation_of_polygons"), "read"),
    **dict.fromkeys(("CellUnits", "Segmentation", "cell_table", "segmentation_from_labels"), "segmentation"),
    **dict.fromkeys(("SlideSource", "slide_source"), "source"),
    "write_segmentation": "write",
}

__all__ = [
    "CellUnits", "NucleusSettings", "Segmentation", "SlideSource", "cell_table", "detect_nuclei", "haematoxylin",
    "read_cell_polygons", "read_label_image", "read_segmentation", "segment_tile", "segmentation_from_labels",
    "segmentation_of_array", "segmentation_of_polygons", "slide_source", "write_segmentation",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
