"""The Detect nuclei widget: the built-in detector on a slide layer, its nuclei as a Labels layer.

The same detector and settings as ``histosge nuclei`` (the fields and defaults come from
:class:`~napari_histosge.cells.NucleusSettings`). It runs in a background thread with a
progress bar and can be cancelled; the result is a Labels layer at the slide's scale, whose
metadata holds the cell table (centroids in full-resolution pixels, areas, label ids).
StarDist or Cellpose labels from their own napari plugins are better segmentations; this is
for users without one.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton

from ...cells import NucleusSettings, Segmentation, detect_nuclei, segmentation_of_array
from ...cells.detect import raster_fits_in_memory
from ...cells.write import write_label_pyramid
from ...errors import InputError
from ...export.frame import META_KEY, world_frame
from ...progress import CancelToken
from ...slide.open import cache_root, open_slide
from .frame import ROLE_SLIDE, LayerDataTuple, image_transform
from .layers import histosge_meta, layers_with_role, um_per_px
from .status import set_status, status_label
from .worker import Outcome, start_job, status_text

if TYPE_CHECKING:
    import napari

#: Role of the Labels layer of detected nuclei.
ROLE_CELLS = "cells"
#: Settings the widget shows (the others keep their defaults, as on the command line without flags).
SHOWN_SETTINGS = ("nucleus_um", "min_area_um2", "expand_um")
#: Label stores in the cache older than this many days belong to no open session: they are pruned.
STORE_MAX_AGE_DAYS = 7


def slide_placement(layer) -> tuple[str, float, float | None, float | None]:
    """Where a slide layer's image is: its path, image px per full-res px, µm per full-res px, world mpp.

    A slide opened with its spots is placed in their frame (the section's pixel size); a slide
    opened alone in its own metadata's pixel size.
    """
    meta = histosge_meta(layer)
    adata = meta.get("adata")
    if adata is not None:
        from ...io import spot_image

        image = spot_image(adata)
        mpp = um_per_px(adata)
        if image is not None:
            return image[0], float(image[1]), mpp, mpp
    mpp = meta.get("mpp")
    return str(meta["path"]), 1.0, mpp, mpp


def labels_cache() -> Path:
    """A new folder under the cache for a large slide's label pyramid (the session's layer reads it).

    Folders left by earlier sessions (napari closed with the layer open, a crash) are pruned
    once they are :data:`STORE_MAX_AGE_DAYS` old.
    """
    import time
    import uuid

    folder = cache_root() / "nuclei"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.zarr"):
        try:
            if time.time() - old.stat().st_mtime > STORE_MAX_AGE_DAYS * 86400:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another session pruned it first
            pass
    return folder / f"{uuid.uuid4().hex}.zarr"


def labels_layer(segmentation: Segmentation, world_mpp: float | None, name: str,
                 levels: list[Any] | None = None, store: Path | None = None) -> LayerDataTuple:
    """A Labels layer of a segmentation on the full-resolution grid, in the world frame of ``world_mpp``.

    ``levels``: the raster and its coarser copies (a multiscale layer: napari reads only what
    is shown); ``store``: the cache folder holding them, deleted when the layer is removed.
    """
    multiscale = levels is not None and len(levels) > 1
    kwargs = {"name": name, "opacity": 0.6, "multiscale": multiscale,
              **image_transform(1.0 / segmentation.px_per_label_px, world_mpp), **world_frame(world_mpp),
              "metadata": {META_KEY: {"role": ROLE_CELLS, "cells": segmentation.table,
                                      "px_per_label_px": segmentation.px_per_label_px,
                                      "source": segmentation.source, "store": store}}}
    return (levels if multiscale else segmentation.labels), kwargs, "labels"


def remove_store(layer) -> None:
    """Delete the cache folder of a removed layer of detected nuclei (if it has one)."""
    store = histosge_meta(layer).get("store")
    if store is not None:
        shutil.rmtree(store, ignore_errors=True)


def layer_segmentation(labels, slide) -> Segmentation:
    """The cells of a Labels layer drawn over a slide layer (StarDist's, Cellpose's, a painted one, this widget's).

    See :func:`labels_in_frame`; the slide layer gives the frame.
    """
    path, image_scale, mpp, world_mpp = slide_placement(slide)
    with open_slide(path) as opened:
        shape = (round(opened.shape[0] / image_scale), round(opened.shape[1] / image_scale))
    return labels_in_frame(labels, shape, mpp, world_mpp, slide.name)


def labels_in_frame(labels, shape: tuple[int, int], mpp: float | None, world_mpp: float | None,
                    slide_name: str = "slide") -> Segmentation:
    """The cells of a Labels layer in the world frame of a slide of ``shape`` full-resolution px.

    The frame is in µm when ``world_mpp`` is set, else in full-resolution pixels (:mod:`.layers`).
    The layer's scale against it gives its full-resolution pixels per label pixel; a layer not
    placed on the slide (another scale on each axis, or shifted by more than a label pixel) is
    refused with one line, as an empty one is.
    """
    import numpy as np

    u = world_mpp or 1.0
    scale = np.asarray(labels.scale, np.float64)[-2:] / u
    if not np.isclose(scale[0], scale[1], rtol=1e-3):
        raise InputError(f"the labels layer '{labels.name}' has another scale along each axis ({scale[0]:g} x "
                         f"{scale[1]:g} slide pixels per label pixel)")
    f = float(scale.mean())
    expected = (0.5 * f - 0.5) * u
    if np.any(np.abs(np.asarray(labels.translate, np.float64)[-2:] - expected) > f * u):
        raise InputError(f"the labels layer '{labels.name}' is shifted against the slide '{slide_name}' "
                         "(by more than one of its pixels); place it on the slide first")
    data = labels.data[0] if labels.multiscale else labels.data
    return segmentation_of_array(data, shape, mpp=mpp, scale=f, source=f"labels layer {labels.name}")


class NucleiWidget(Container):
    """Detect nuclei on a slide layer in the background and show them as labels."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.slide = ComboBox(label="slide", choices=self._slides, nullable=True,
                              tooltip="the H&E to find nuclei in (a slide, or a section's image)")
        defaults = NucleusSettings()
        fields = {f.name: f for f in dataclasses.fields(NucleusSettings)}
        self.settings = {name: FloatSpinBox(label=name.replace("_um2", " µm²").replace("_um", " µm").replace("_", " "),
                                            value=getattr(defaults, name), min=0.0, max=1000.0, step=0.5,
                                            tooltip=fields[name].metadata["help"])
                         for name in SHOWN_SETTINGS}
        self.mpp = FloatSpinBox(label="slide µm/px", min=0.0, max=100.0, step=0.01, value=0.0,
                                tooltip="the slide's pixel size; 0: from the section or the file")
        self.tissue_only = CheckBox(text="tissue only", value=True,
                                    tooltip="skip bare glass (a tissue mask detected on a low-resolution level)")
        self.run_button = PushButton(text="Detect nuclei")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.extend([self.slide, *self.settings.values(), self.mpp, self.tissue_only, self.run_button,
                     self.cancel_button, self.status])
        self.worker = None
        self.token: CancelToken | None = None
        self.last_outcome: Outcome | None = None
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        napari_viewer.layers.events.inserted.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(lambda event: remove_store(event.value))
        self._layers_changed()

    def _layers_changed(self, *_: Any) -> None:
        self.reset_choices()
        if self.slide.value is None and self.slide.choices:  # the one slide open is the likely choice
            self.slide.value = self.slide.choices[-1]

    def _slides(self, *_: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_with_role(self.viewer.layers, ROLE_SLIDE)]

    def run(self, *_: Any) -> None:
        """Start the detector on the chosen slide in the background."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        layer = self.slide.value
        if layer is None:
            show_error("Open a slide or a section with its H&E first, then pick it.")
            return
        path, scale, mpp, world_mpp = slide_placement(layer)
        mpp = float(self.mpp.value) or mpp
        try:
            settings = NucleusSettings(**{n: float(w.value) for n, w in self.settings.items()}).check()
            if mpp is None:
                raise InputError("the slide records no pixel size; give it in 'slide µm/px'", path)
        except InputError as exc:
            show_error(str(exc))
            return
        self.token = token = CancelToken()
        tissue = bool(self.tissue_only.value)

        def make_gen():  # runs in the worker thread
            with open_slide(path) as slide:
                shape = (round(slide.shape[0] / scale), round(slide.shape[1] / scale))
                # a gigapixel slide's labels go to the cache as a zarr pyramid: napari shows them lazily
                store = None if raster_fits_in_memory(shape, mpp, settings) else labels_cache()
                try:
                    seg = yield from detect_nuclei(slide, mpp=mpp, scale=scale, settings=settings, tissue=tissue,
                                                   labels_store=None if store is None else store / "0",
                                                   cancel=token)
                    levels = None if store is None else write_label_pyramid(seg.labels, store)
                except BaseException:  # cancelled or failed: nothing will read the store
                    if store is not None:
                        shutil.rmtree(store, ignore_errors=True)
                    raise
                return seg, levels, store

        self._placement = (world_mpp, f"{layer.name} nuclei")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        set_status(self.status, f"finding nuclei in {layer.name}...")
        self.worker = start_job(make_gen, description="nuclei", on_event=lambda e: set_status(self.status,
                                                                                               status_text(e)),
                                on_done=self._on_done)

    def cancel(self, *_: Any) -> None:
        """Ask the running detection to stop at its next tile."""
        if self.token is not None:
            self.token.cancel()

    def _on_done(self, outcome: Outcome) -> None:
        from napari.utils.notifications import show_error

        self.last_outcome = outcome
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if outcome.cancelled:
            set_status(self.status, "cancelled")
            return
        if outcome.error is not None:
            set_status(self.status, str(outcome.error))
            show_error(str(outcome.error))
            return
        segmentation, levels, store = outcome.value
        world_mpp, name = self._placement
        data, kwargs, _ = labels_layer(segmentation, world_mpp, name, levels, store)
        self.viewer.add_labels(data, **kwargs)
        set_status(self.status, f"{segmentation.n_cells:,} nuclei")
