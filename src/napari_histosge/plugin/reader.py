"""npe2 readers: spot data folders/files, saved predictions and slide images, as napari layers.

Each ``get_*_reader`` answers from names only (``detect_format`` lists at most one
folder) and returns ``None`` when the path is not ours, so napari moves on quickly.
A slide is read without importing the spot-data stack (anndata, pandas, scipy), so a
first File > Open of a slide is quick. The returned reader functions do the real work and raise
:class:`~napari_histosge.errors.InputError` with a clear message on bad input.
A ``.h5ad`` whose ``uns["histosge"]`` has a ``fold`` holds predictions
(``histosge predict``/``recover``, the plugin's writer): it opens as the Super-resolve
widget shows its result. A SpatialData ``.zarr`` store opens as its spots (or, for a store
of predictions, as predictions) over its image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..export.frame import um_per_px
from .widgets.frame import LayerDataTuple, slide_layer

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


def _one_path(path: PathLike | list[PathLike]) -> Path:
    """The single path a reader function was given (the get_*_reader functions checked it)."""
    p = _single(path)
    if p is None:
        raise InputError("napari-histosge reads one path at a time; open the files one by one")
    return p


def get_spots_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Return :func:`read_spots_layers` for a Space Ranger / ST v1 folder or an ``.h5ad``."""
    p = _single(path)
    # A slide image is never spot data: answer before importing the io stage (anndata).
    if p is None or p.name.lower().endswith(SLIDE_SUFFIXES):
        return None
    from ..io import detect_format

    if detect_format(p) is None:
        return None
    return read_spots_layers


def get_spatialdata_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Return :func:`read_spatialdata_layers` for a SpatialData zarr store (names only)."""
    from ..io.spatialdata_io import looks_like_spatialdata

    p = _single(path)
    if p is None or not looks_like_spatialdata(p):
        return None
    return read_spatialdata_layers


def read_spatialdata_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read a SpatialData store: its image under its spots, or its predictions as the widget shows them."""
    from ..io.spatialdata_io import prediction_info, read_spatialdata, read_spatialdata_prediction

    p = _one_path(path)
    if prediction_info(p) is not None:
        return prediction_to_layers(read_spatialdata_prediction(p), path=p)
    return spots_to_layers(read_spatialdata(p))


def get_slide_reader(path: PathLike | list[PathLike]) -> ReaderFunction | None:
    """Return :func:`read_slide_layers` for a slide image (by suffix only)."""
    p = _single(path)
    if p is None or not p.name.lower().endswith(SLIDE_SUFFIXES) or not p.is_file():
        return None
    return read_slide_layers


#: ``slide_layers(mpp=OWN_MPP)``: a slide opened alone, in its own metadata's pixel size.
OWN_MPP = "own"


def slide_layers(image_path: PathLike, *, image_scale: float = 1.0, name: str | None = None,
                 extra: dict[str, Any] | None = None, mpp: float | str | None = OWN_MPP) -> LayerDataTuple:
    """The multiscale image layer of one image file (lazy; never loaded whole).

    ``mpp`` sets the world frame: the micrometres per full-res pixel of the spot data the image
    belongs to (``None``: pixels, as those spots are), or :data:`OWN_MPP` for a slide opened
    alone, placed by its own metadata's pixel size when it has one.
    """
    from ..slide.open import open_slide

    slide = open_slide(image_path, background_cache=True)  # a new JPEG shows at once; its cache is written behind
    if mpp == OWN_MPP:
        frame_mpp = slide.mpp if image_scale == 1.0 else None
    else:
        frame_mpp = None if mpp is None else float(mpp)
    if slide.ready is not None and not slide.ready.is_set():  # shown from a preview while it is decoded
        follow_decode(slide, name or Path(image_path).stem)
    # The Slide object is kept in the metadata: its open file backs the levels.
    meta = {"slide": slide, "path": str(image_path), "mpp": slide.mpp, **(extra or {})}
    return slide_layer(slide.display_levels, image_scale=image_scale, name=name or Path(image_path).stem, metadata=meta,
                       mpp=frame_mpp)


#: Timers following slides being decoded (a reference keeps each alive until it stops).
_DECODE_TIMERS: list[Any] = []


def follow_decode(slide, name: str) -> None:
    """Napari's progress bar while ``slide``'s full-resolution pixels are decoded behind its preview; then redraw.

    Polls from the event loop (the decode thread has none): once the slide is ready, every
    layer of the current viewer showing it is refreshed, now from the full-resolution levels.
    """
    from napari.utils import progress
    from qtpy.QtCore import QTimer

    bar = progress(total=0, desc=f"{name}: decoding the full-resolution image")
    timer = QTimer()
    timer.setInterval(DECODE_POLL_MS)

    def check() -> None:
        if slide.ready is not None and not slide.ready.is_set():
            return
        timer.stop()
        bar.close()
        _DECODE_TIMERS.remove(timer)
        import napari

        from .widgets.layers import histosge_meta

        viewer = napari.current_viewer()
        for layer in viewer.layers if viewer is not None else []:
            if histosge_meta(layer).get("slide") is slide:
                layer.refresh()

    timer.timeout.connect(check)
    _DECODE_TIMERS.append(timer)
    timer.start()


#: How often the event loop looks whether a slide's full decode has finished.
DECODE_POLL_MS = 200


def read_slide_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read a slide image (SVS, (OME-)TIFF, NDPI, JPEG, PNG) as a multiscale RGB layer."""
    p = _one_path(path)
    return [slide_layers(p)]


def spots_to_layers(adata, *, gene: str | None = None) -> list[LayerDataTuple]:
    """Layers for a spot AnnData: its image (if any) under the spots coloured by ``gene``."""
    from ..io import spot_image

    info = adata.uns.get("histosge", {})
    library = info.get("library_id") or "spots"
    layers: list[LayerDataTuple] = []
    image = spot_image(adata)
    if image is not None:
        image_path, scale = image
        layers.append(slide_layers(image_path, image_scale=scale, name=f"{library} H&E",
                                   extra={"adata": adata}, mpp=um_per_px(adata)))
        message = low_resolution_message(adata)
        if message is not None:  # napari shows a reader's warnings as notifications
            warnings.warn(message, UserWarning, stacklevel=2)
    from .widgets.layers import spots_layer

    layers.append(spots_layer(adata, gene, name=f"{library} spots"))
    return layers


def low_resolution_message(adata) -> str | None:
    """What to tell a user whose section's image is too coarse for image features, else ``None``.

    ``None`` also when the image's resolution is unknown. The threshold is the core's
    (:data:`napari_histosge.pipeline.section_features.LOW_RESOLUTION_PX`).
    """
    from ..pipeline.section_features import LOW_RESOLUTION_PX, image_pixels_per_spot

    px = image_pixels_per_spot(adata)
    if px is None or px >= LOW_RESOLUTION_PX:
        return None
    library = (adata.uns.get("histosge", {}) or {}).get("library_id") or "this section"
    message = (f"{library}: its image has only {px:.0f} px across a spot (image features want at least "
               f"{LOW_RESOLUTION_PX}), so a model sees colour more than morphology; attach the full-resolution "
               "H&E, or train with features = none to compare")
    return message


def read_spots_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read spot data (Space Ranger folder, ST v1 folder, ``.h5ad``) with its image.

    A predictions ``.h5ad`` is shown as predictions (:func:`read_prediction_layers`).
    """
    from ..io import read_spots
    from ..io.spatialdata_io import looks_like_spatialdata

    p = _one_path(path)
    if looks_like_spatialdata(p):
        return read_spatialdata_layers(p)
    if p.suffix.lower() == ".h5ad" and is_prediction_file(p):
        return read_prediction_layers(p)
    return spots_to_layers(read_spots(p))


# ----------------------------------------------------------------------------- saved predictions
def _read_elem(node) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def prediction_info(path: PathLike) -> dict[str, Any] | None:
    """``uns["histosge"]`` of a predictions ``.h5ad``, or ``None`` when the file holds none.

    Reads only that group with h5py (never ``X``), so it is cheap enough for a reader
    to call on every ``.h5ad`` dropped on napari. A file is a prediction when
    ``uns["histosge"]`` has a ``fold`` (what :mod:`napari_histosge.pipeline.steps` writes) or a
    ``grid`` (grid cells of the sub-spot model, shown as a raster).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f.get("uns/histosge")
            if not isinstance(group, h5py.Group) or ("fold" not in group and "grid" not in group):
                return None
            return dict(_read_elem(group))
    except Exception:  # not HDF5, unreadable, foreign layout: the spots reader reports it
        return None


def is_prediction_file(path: PathLike) -> bool:
    """Whether ``path`` is an ``.h5ad`` of predictions (see :func:`prediction_info`)."""
    return prediction_info(path) is not None


def _h5_shape(f, key: str) -> tuple[int, ...] | None:
    """Shape of a dense or sparse matrix element written by anndata, or ``None``."""
    node = f.get(key)
    if node is None:
        return None
    # a dense array is a dataset; a sparse matrix is a group with a "shape" attribute
    shape = getattr(node, "shape", None) or node.attrs.get("shape")
    return None if shape is None else tuple(int(n) for n in shape)


def _h5_index_length(f, key: str) -> int | None:
    """Length of the index of the ``obs``/``var`` dataframe, or ``None`` for foreign layouts."""
    group = f.get(key)
    index = None if group is None else group.attrs.get("_index")
    if index is None or index not in group:
        return None
    return int(group[index].shape[0])


def _check_prediction_layout(path: Path) -> None:
    """Shapes checked with h5py first: anndata's own error for a mismatch is cryptic."""
    import h5py

    with h5py.File(path, "r") as f:
        n_obs, n_vars = _h5_index_length(f, "obs"), _h5_index_length(f, "var")
        if n_vars == 0:
            raise InputError("the predictions hold no genes (var is empty)", path)
        if n_obs == 0:
            raise InputError("the predictions hold no positions (obs is empty)", path)
        if "obsm/spatial" not in f:
            raise InputError("the predicted positions are missing (no obsm['spatial'])", path)
        for key in ("X", "layers/std"):
            shape = _h5_shape(f, key)
            if key == "X" and shape is None:
                raise InputError("the predicted values are missing (no X)", path)
            if shape is not None and None not in (n_obs, n_vars) and shape != (n_obs, n_vars):
                raise InputError(f"{key} has shape {shape} but the file lists {n_obs} positions x {n_vars} genes",
                                 path)


def read_prediction(path: PathLike):
    """Read a predictions ``.h5ad`` and check it can be shown.

    Parameters
    ----------
    path
        An ``.h5ad`` written by ``histosge predict``/``recover``, the plugin's writer, or
        :meth:`anndata.AnnData.write_h5ad` on a :mod:`napari_histosge.pipeline.steps` result.

    Returns
    -------
    anndata.AnnData
        The predictions as they were written; genes named by Ensembl id get their symbols
        (:func:`~napari_histosge.io.markers.attach_recorded_symbols`).

    Raises
    ------
    InputError
        If the file is not a prediction, has no genes or positions, or its ``X`` (or
        ``layers["std"]``) does not match the positions x genes it lists.
    """
    import anndata as ad
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise InputError("predictions file does not exist", path)
    if not is_prediction_file(path):
        raise InputError("not a napari-histosge predictions file (no uns['histosge']['fold'] or ['grid'])", path)
    _check_prediction_layout(path)
    try:
        pred = ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a bad file
        raise InputError(f"cannot read the predictions ({type(exc).__name__}: {exc})", path) from exc
    if pred.n_vars == 0:
        raise InputError("the predictions hold no genes (var is empty)", path)
    if pred.n_obs == 0:
        raise InputError("the predictions hold no positions (obs is empty)", path)
    xy = np.asarray(pred.obsm.get("spatial", np.empty((0, 0))))
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.issubdtype(xy.dtype, np.number):
        raise InputError(f"obsm['spatial'] must be numeric (x, y) positions, got shape {xy.shape}", path)
    if not np.isfinite(xy[:, :2]).all():
        raise InputError("obsm['spatial'] has missing (NaN) or infinite positions", path)
    from ..io.markers import attach_recorded_symbols

    attach_recorded_symbols(pred)  # genes named by id: the gene box finds MBP as `histosge figure` does
    return pred


def _find_image(recorded: str, where: Path) -> Path | None:
    """Find the recorded image, else one at the same relative path or name beside the predictions.

    The second case covers data moved together to another folder or machine.
    """
    from ..slide.open import is_ome_zarr_image

    candidates = [Path(recorded)]
    if not Path(recorded).is_absolute():
        candidates.append(where.parent / recorded)
    candidates.append(where.parent / Path(recorded).name)
    # an image inside a SpatialData store is a folder (OME-Zarr)
    return next((c for c in candidates if c.is_file() or is_ome_zarr_image(c)), None)


def prediction_to_layers(pred, *, path: PathLike | None = None, gene: str | None = None) -> list[LayerDataTuple]:
    """Layers of a predictions AnnData: its slide (if found) under the widget's prediction layers.

    Parameters
    ----------
    pred
        Predictions (``uns["histosge"]["fold"]`` set), e.g. from :func:`read_prediction`.
    path
        The file they were read from: names the file in warnings, and an image that
        moved along with it is looked for beside it.
    gene
        Gene to show first (default: highest mean).

    Returns
    -------
    list of LayerDataTuple
        The slide image (when found) then :func:`~.widgets.layers.prediction_layers`.

    Warns
    -----
    UserWarning
        When the recorded slide image is missing or unreadable (napari shows it as a
        notification); the predictions are still shown, in full-resolution pixels.
    """
    from ..io import spot_image

    where = Path(path) if path is not None else Path(".")
    info = pred.uns.get("histosge", {}) or {}
    library = info.get("library_id") or where.stem
    layers: list[LayerDataTuple] = []
    image = spot_image(pred)
    if image is not None:
        recorded, scale = image
        found = _find_image(recorded, where)
        if found is None:
            warnings.warn(f"{where}: the slide image {recorded} was not found; showing the predictions "
                          f"without it ({frame_words(pred)}); put the image beside the file to see both",
                          UserWarning, stacklevel=2)
        else:
            try:
                layers.append(slide_layers(found, image_scale=scale, name=f"{library} H&E", extra={"adata": pred},
                                           mpp=um_per_px(pred)))
            except InputError as exc:
                warnings.warn(f"{where}: the slide image could not be opened ({exc}); showing the predictions "
                              "without it", UserWarning, stacklevel=2)
    else:
        warnings.warn(f"{where}: the predictions record no slide image; showing them without it "
                      f"({frame_words(pred)}); open the spot data they came from to see the slide under them",
                      UserWarning, stacklevel=2)
    from .widgets.layers import prediction_layers

    layers.extend(prediction_layers(pred, gene))
    return layers


def frame_words(adata) -> str:
    """How the layers of ``adata`` are placed, in words (for messages)."""
    return ("in micrometres, from the pixel size the file records" if um_per_px(adata)
            else "in full-resolution pixel coordinates")


def read_prediction_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read a predictions ``.h5ad`` as the Super-resolve widget shows a result, over its slide."""
    p = _one_path(path)
    return prediction_to_layers(read_prediction(p), path=p)
