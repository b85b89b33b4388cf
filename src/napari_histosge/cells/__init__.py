"""Cells of a slide: a built-in nucleus detector, users' segmentations, and the cell table.

:func:`detect_nuclei` finds nuclei on a slide tile by tile; :func:`read_segmentation` reads a
label image or GeoJSON polygons (StarDist, Cellpose, QuPath); both give a
:class:`Segmentation`: a label raster at a known scale and an AnnData of cells.
"""

from .detect import NucleusSettings, detect_nuclei, haematoxylin, segment_tile
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

__all__ = [
    "CellUnits", "NucleusSettings", "Segmentation", "SlideSource", "cell_table", "detect_nuclei", "haematoxylin",
    "read_cell_polygons", "read_label_image", "read_segmentation", "segment_tile", "segmentation_from_labels",
    "segmentation_of_array", "segmentation_of_polygons", "slide_source", "write_segmentation",
]
