"""Where the Super-resolve widget's cells come from: a napari Labels or Shapes layer, the detector, a file.

A layer is translated into the core's :class:`~napari_histosge.cells.Segmentation` through the
same readers as files (:func:`~napari_histosge.cells.segmentation_of_array` for a label array,
:func:`~napari_histosge.cells.segmentation_of_polygons` for polygons), at the layer's place in
the section's world frame (:mod:`.layers`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError

#: Where the cells come from besides the viewer's Labels layers.
DETECT_NUCLEI, CELLS_FILE = "detect nuclei", "label image or GeoJSON file..."


def cells_choices(viewer) -> list[tuple[str, Any]]:
    """``(name, value)`` of the cells' sources: the detector, each Labels and Shapes layer of the viewer, a file."""
    import napari.layers

    labels = [(f"Labels: {layer.name}", layer) for layer in viewer.layers if isinstance(layer, napari.layers.Labels)]
    shapes = [(f"Shapes: {layer.name}", layer) for layer in viewer.layers if isinstance(layer, napari.layers.Shapes)]
    return [(DETECT_NUCLEI, DETECT_NUCLEI), *labels, *shapes, (CELLS_FILE, CELLS_FILE)]


#: Shape types that outline a cell; lines and paths do not.
CELL_SHAPES = ("polygon", "rectangle", "ellipse")
#: Points of the polygon an ellipse is drawn as.
ELLIPSE_POINTS = 32


def shapes_layer_segmentation(layer, adata):
    """A napari Shapes layer's polygons, rectangles and ellipses as cells, read as GeoJSON polygons are.

    Vertices go from the layer's data to the world (its scale and translate) and on to the
    section's full-resolution pixels, whose pixel ``i`` is centred at world ``i`` (times the µm
    per pixel), then to the polygon readers' corner coordinates.

    Raises
    ------
    InputError
        If the layer holds no such shape, or lines or paths (not cells), or none lies on the slide.
    """
    from ...cells import segmentation_of_polygons
    from ...export.frame import um_per_px
    from ...pipeline.cell_maps import slide_shape_of

    kinds = list(layer.shape_type)
    if any(kind not in CELL_SHAPES for kind in kinds):
        raise InputError(f"the Shapes layer {layer.name!r} holds lines or paths; cells are polygons, rectangles "
                         "or ellipses")
    unit = um_per_px(adata) or 1.0
    scale, translate = np.asarray(layer.scale[-2:], np.float64), np.asarray(layer.translate[-2:], np.float64)
    polygons = []
    for kind, data in zip(kinds, layer.data, strict=True):
        rc = np.asarray(data, np.float64)[:, -2:]
        if kind == "ellipse":  # four corners of its box: centre and the two half-axes
            t = np.linspace(0, 2 * np.pi, ELLIPSE_POINTS, endpoint=False)[:, None]
            centre, a, b = rc.mean(axis=0), (rc[1] - rc[0]) / 2, (rc[3] - rc[0]) / 2
            rc = centre + np.cos(t) * a + np.sin(t) * b
        polygons.append((rc * scale + translate)[:, ::-1] / unit + 0.5)
    return segmentation_of_polygons(polygons, slide_shape_of(adata), mpp=(adata.uns.get("histosge", {}) or {}).get(
        "mpp"), source=f"napari Shapes layer {layer.name!r}")


def labels_layer_segmentation(layer, adata):
    """A napari Labels layer as cells on ``adata``'s slide, at the layer's place in the section's frame.

    Raises
    ------
    InputError
        If the layer is not placed on the slide (:func:`.nuclei.labels_in_frame`), or its data
        are not cells on it (:func:`~napari_histosge.cells.segmentation_of_array`).
    """
    from ...export.frame import um_per_px
    from ...pipeline.cell_maps import slide_shape_of
    from .nuclei import labels_in_frame

    return labels_in_frame(layer, slide_shape_of(adata), (adata.uns.get("histosge", {}) or {}).get("mpp"),
                           um_per_px(adata))
