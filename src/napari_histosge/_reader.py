"""npe2 readers: spot data folders/files and slide images, as napari layers.

Each ``get_*_reader`` answers from names only (``detect_format`` lists at most one
folder) and returns ``None`` when the path is not ours, so napari moves on quickly.
The returned reader functions do the real work and raise
:class:`~napari_histosge.errors.InputError` with a clear message on bad input.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._widgets.layers import LayerDataTuple, slide_layer, spots_layer

PathLike = str | os.PathLike
ReaderFunction = Callable[[PathLike], list[LayerDataTuple]]

#: Image suffixes the slide reader claims (``.ome.tif`` ends in ``.tif``).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".jpg", ".jpeg", ".png")


def _single(path: PathLike | list[PathLike]) -> Path | None:
    # napari passes a list when several files are dropped at once; we read one at a time.
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


def get_spots_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Return :func:`read_spots_layers` for a Space Ranger / ST v1 folder or an ``.h5ad``."""
    from .io import detect_format

    p = _single(path)
    if p is None or detect_format(p) is None:
        return None
    return read_spots_layers


def get_slide_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Return :func:`read_slide_layers` for a slide image (by suffix only)."""
    p = _single(path)
    if p is None or not p.name.lower().endswith(SLIDE_SUFFIXES) or not p.is_file():
        return None
    return read_slide_layers


def slide_layers(image_path: PathLike, *, image_scale: float = 1.0, name: str | None = None,
                 extra: dict[str, Any] | None = None) -> LayerDataTuple:
    """The multiscale image layer of one image file (lazy; never loaded whole)."""
    from .slide import open_slide

    slide = open_slide(image_path)
    # The Slide object is kept in the metadata: its open file backs the dask levels.
    meta = {"slide": slide, "path": str(image_path), "mpp": slide.mpp, **(extra or {})}
    return slide_layer(slide.levels, image_scale=image_scale, name=name or Path(image_path).stem, metadata=meta)


def read_slide_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read a slide image (SVS, (OME-)TIFF, NDPI, JPEG, PNG) as a multiscale RGB layer."""
    p = _single(path)
    return [slide_layers(p)]


def spots_to_layers(adata, *, gene: str | None = None) -> list[LayerDataTuple]:
    """Layers for a spot AnnData: its image (if any) under the spots coloured by ``gene``."""
    from .io import spot_image

    info = adata.uns.get("histosge", {})
    library = info.get("library_id") or "spots"
    layers: list[LayerDataTuple] = []
    image = spot_image(adata)
    if image is not None:
        image_path, scale = image
        layers.append(slide_layers(image_path, image_scale=scale, name=f"{library} H&E",
                                   extra={"adata": adata}))
    layers.append(spots_layer(adata, gene, name=f"{library} spots"))
    return layers


def read_spots_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read spot data (Space Ranger folder, ST v1 folder, ``.h5ad``) with its image."""
    from .io import read_spots

    return spots_to_layers(read_spots(_single(path)))
