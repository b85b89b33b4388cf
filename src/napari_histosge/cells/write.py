"""Writing a segmentation: its label raster as a zarr array and its cell table as ``.h5ad``.

The label raster keeps its ids (int32, or the label image's own wider integer type) and its
scale in the array's attributes (``px_per_label_px``, ``mpp``, ``source``), so
:func:`~napari_histosge.cells.read.read_label_image` places it on the slide again without a
stated scale. Both outputs are written atomically: a failed write leaves an
earlier output as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import atomic_path, write_h5ad
from .segmentation import BLOCK, Segmentation

__all__ = ["CELLS_FILE", "LABELS_FILE", "PYRAMID_SMALLEST", "write_label_pyramid", "write_segmentation"]

LABELS_FILE = "labels.zarr"
#: A label pyramid stops at the first level at most this many pixels on its longer side.
PYRAMID_SMALLEST = 1024
CELLS_FILE = "cells.h5ad"


def write_segmentation(segmentation: Segmentation, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``labels.zarr`` and ``cells.h5ad`` into ``folder`` (made if missing); their paths."""
    import zarr

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    labels = segmentation.labels
    h, w = labels.shape
    # the ids of the cell table: a label image's own dtype, so ids past int32 (Cellpose on a whole slide,
    # ids made of tile and object numbers) stay what they were
    dtype = np.dtype(labels.dtype) if np.dtype(labels.dtype).itemsize >= 4 else np.dtype(np.int32)
    with atomic_path(out / LABELS_FILE, what="label image", folder=True) as tmp:
        array = zarr.open_array(str(tmp), mode="w", shape=(h, w), chunks=(min(h, BLOCK), min(w, BLOCK)),
                                dtype=dtype, fill_value=0)
        for r0 in range(0, h, BLOCK):
            for c0 in range(0, w, BLOCK):
                block = np.asarray(labels[r0:r0 + BLOCK, c0:c0 + BLOCK])
                if block.any():
                    array[r0:r0 + block.shape[0], c0:c0 + block.shape[1]] = block
        info = segmentation.table.uns["histosge"]["cells"]
        array.attrs.update({"px_per_label_px": float(segmentation.px_per_label_px), "mpp": info.get("mpp"),
                            "source": segmentation.source})
    write_h5ad(out / CELLS_FILE, segmentation.table, what="cell table")
    return out / LABELS_FILE, out / CELLS_FILE


def write_label_pyramid(labels: Any, folder: str | os.PathLike) -> list[Any]:
    """Coarser copies of a label raster, each every second pixel of the one before, as zarr arrays.

    Nearest-pixel halving keeps ids ids (an average of two ids is no cell). The levels
    ``folder/1``, ``folder/2``, ... are written block by block, so a viewer shows a gigapixel
    raster whole without reading it whole.

    Returns
    -------
    list
        ``labels`` followed by the coarser levels, finest first (one entry when it is small).
    """
    import zarr

    levels = [labels]
    while max(levels[-1].shape) > PYRAMID_SMALLEST:
        finer = levels[-1]
        h, w = (finer.shape[0] + 1) // 2, (finer.shape[1] + 1) // 2
        coarser = zarr.open_array(str(Path(folder) / str(len(levels))), mode="w", shape=(h, w),
                                  chunks=(min(h, BLOCK), min(w, BLOCK)), dtype=finer.dtype, fill_value=0)
        for r0 in range(0, h, BLOCK):
            for c0 in range(0, w, BLOCK):
                block = np.asarray(finer[2 * r0:2 * (r0 + BLOCK):2, 2 * c0:2 * (c0 + BLOCK):2])
                if block.any():
                    coarser[r0:r0 + block.shape[0], c0:c0 + block.shape[1]] = block
        levels.append(coarser)
    return levels
