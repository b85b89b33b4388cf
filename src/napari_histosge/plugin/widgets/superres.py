"""The Super-resolve widget: a trained model + a spots layer -> the model's product (N-fold heatmap, grid map, ...).

The positions are one of the products the chosen model makes
(:mod:`napari_histosge.training.products`): the N-fold lattice (HisToSGE, conditioned), a grid of
square cells of a chosen size in µm (``subspot``), shown as a raster heatmap masked to the
tissue, segmented cells (``subspot``: a Labels or Shapes layer of the viewer, detected nuclei or a file;
each cell painted over its own pixels), or a product a model brings. The options shown are the
chosen product's declared settings (:class:`~.settings_form.SettingsForm`); the cells' source is
chosen among the viewer's layers instead of typed. "Predict on this slide" predicts a slide
image opened without spots (an unmeasured H&E) on the model's spot lattice or a µm grid over its tissue.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, LineEdit, PushButton

from ...errors import InputError
from ...pipeline import products as builtin_products
from ...progress import CancelToken, Progress
from ...slide.grid_size import MIN_GRID_UM
from ...training.products import get_product, registered_products
from .cell_sources import CELLS_FILE, DETECT_NUCLEI, cells_choices, labels_layer_segmentation, shapes_layer_segmentation
from .layers import (
    ROLE_HEATMAP,
    ROLE_PRED_SPOTS,
    ROLE_SLIDE,
    grid_info,
    histosge_meta,
    is_cells,
    layers_with_role,
    prediction_layers,
)
from .models_panel import ModelPanel
from .settings_form import Control, SettingsForm
from .state import SESSION_MODELS, follow_session_models
from .status import set_status, status_label
from .train import DEVICES, scheduler_value, setting_tip, spots_layer_choices, warm_up_imports
from .worker import Outcome, start_job, status_text

if TYPE_CHECKING:
    import napari

FROM_FILE = "checkpoint file..."
#: The built-in products' names (:mod:`napari_histosge.pipeline.products`, a light module).
LATTICE, GRID = builtin_products.LATTICE.name, builtin_products.GRID.name
#: The option of a product that names its cells (:class:`~napari_histosge.pipeline.products.CellsOptions`).
CELLS_OPTION = "cells"
#: Positions on a bare slide: the model's spot lattice over the tissue, or a grid of µm cells.
SLIDE_LATTICE, SLIDE_GRID = "spot lattice", "µm grid"


def bare_slide_choices(viewer) -> list[tuple[str, Any]]:
    """``(name, layer)`` of the slide image layers opened without spots (no measurement behind them)."""
    return [(layer.name, layer) for layer in layers_with_role(viewer.layers, ROLE_SLIDE)
            if histosge_meta(layer).get("adata") is None and histosge_meta(layer).get("path")]


def shown_in_frame(pred, frame_mpp: float | None):
    """``pred`` as the slide layer shows it: in µm when that layer is, else in pixels (a copy when they differ).

    A slide whose file records no pixel size is shown in pixels, while its predictions may
    carry an assumed or stated one: they are drawn in the slide's frame so both line up.
    """
    info = pred.uns.get("histosge", {})
    if info.get("mpp") == frame_mpp:
        return pred
    shown = pred.copy()
    shown.uns["histosge"] = {**info, "mpp": frame_mpp}
    return shown


def slide_job(model, layer, positions: str, grid_um: float, um_per_px: float | None, cancel: CancelToken):
    """The core's bare-slide prediction on ``layer``'s image file, then its layers in the slide's frame.

    A generator for :func:`~.worker.start_job` (runs in the worker thread).
    """
    from ...pipeline.slide_prediction import predict_slide

    meta = histosge_meta(layer)
    pred = yield from predict_slide(model, meta["path"], grid_um=grid_um if positions == SLIDE_GRID else None,
                                    um_per_px=um_per_px, cancel=cancel)
    yield Progress("layers", 0, 1, "preparing the layers")
    layers = prediction_layers(shown_in_frame(pred, meta.get("mpp")))
    yield Progress("layers", 1, 1)
    return pred, layers


def add_prediction_layers(viewer, pred, source_adata, *, gene: str | None = None,
                          layers: list | None = None) -> tuple[Any, Any]:
    """Add the layers of :func:`~napari_histosge.plugin.widgets.layers.prediction_layers` to ``viewer``.

    The source (measured) AnnData is kept in the metadata so the gene viewer can compare
    predictions with measurements. ``layers`` are those layer data, when already made (in
    the worker thread). Returns the heatmap Image (``None`` at fold 1) and the
    predicted-spots Points (``None`` for grid cells, shown as a raster only).
    """
    import napari.layers

    if layers is None:
        layers = prediction_layers(pred, gene, source_adata=source_adata)
    added = [viewer.add_layer(napari.layers.Layer.create(data, kwargs, kind)) for data, kwargs, kind in layers]
    roles = [histosge_meta(layer)["role"] for layer in added]
    heat = added[roles.index(ROLE_HEATMAP)] if ROLE_HEATMAP in roles else None
    return heat, added[roles.index(ROLE_PRED_SPOTS)] if ROLE_PRED_SPOTS in roles else None


def with_layers(job, adata):
    """Run the prediction generator ``job``, then make its layer data in the same (worker) thread.

    Returns ``(predictions, layer data)``: building rasters and tables is pure and the
    slowest part of showing a result, so the GUI thread only adds the finished layers.
    """
    pred = yield from job
    yield Progress("layers", 0, 1, "preparing the layers")
    layers = prediction_layers(pred, source_adata=adata)
    yield Progress("layers", 1, 1)
    return pred, layers


def product_job(model, adata, product: str, options: dict[str, Any], scheduler: str | None, cancel: CancelToken):
    """The core's super-resolution: ``model``'s ``product`` of ``adata`` with the ``options`` the user set.

    A generator for :func:`~.worker.start_job` (runs in the worker thread); a product the model
    does not make, or an option it does not take, is the library's one-line error.
    """
    from ...pipeline.steps import superresolve

    return (yield from superresolve(model, adata, product=product, scheduler=scheduler, cancel=cancel, **options))


def cells_job(model, adata, cells, options: dict[str, Any], scheduler: str | None, cancel: CancelToken):
    """The cells product with its segmentation kept for the layers: found or read, predicted, then painted.

    ``cells`` is ``"nuclei"``, a file path, or a Labels or Shapes layer (read in this worker
    thread). A generator for :func:`~.worker.start_job`; returns ``(predictions, layer data)``.
    """
    import napari.layers

    from ...pipeline.cell_maps import as_cell_model, check_measured_genes, section_cells

    as_cell_model(model)  # a model of whole spots, or one missing genes, is refused before any cell is found
    check_measured_genes(model, adata)
    if isinstance(cells, napari.layers.Shapes):
        cells = shapes_layer_segmentation(cells, adata)
    elif not isinstance(cells, str):
        cells = labels_layer_segmentation(cells, adata)
    seg = yield from section_cells(cells, adata, label_scale=options.pop("label_scale", None), cancel=cancel)
    pred = yield from product_job(model, adata, builtin_products.CELLS.name, {**options, CELLS_OPTION: seg},
                                  scheduler, cancel)
    yield Progress("layers", 0, 1, "painting the cells")
    layers = prediction_layers(pred, source_adata=adata, segmentation=seg)
    yield Progress("layers", 1, 1)
    return pred, layers


def product_choices(model) -> list[tuple[str, str]]:
    """``(label, name)`` of the products ``model`` makes, or of every registered product when it is not loaded."""
    products = registered_products() if model is None else [get_product(name) for name in model.products]
    return [(product.label, product.name) for product in products]


class SuperResolveWidget(Container):
    """Predict expression at N-fold denser positions and show it over the slide."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.data = ComboBox(label="data", choices=lambda _w: spots_layer_choices(viewer),
                             tooltip="spots layer whose slide is super-resolved")
        self.models_panel = ModelPanel()
        self.model = ComboBox(label="model", choices=lambda _w: SESSION_MODELS.names() + [FROM_FILE],
                              tooltip="a model of this session (the panel above lists them), or a checkpoint file")
        self.checkpoint = FileEdit(label="checkpoint", mode=FileDialogMode.EXISTING_FILE, value=None, filter="*.pt")
        self.positions = ComboBox(label="positions", choices=lambda _w: product_choices(self._chosen_model()),
                                  tooltip="what the model makes: " + "; ".join(
                                      f"{p.label}: {p.help}" for p in registered_products()))
        #: The chosen product's options, generated from its declared settings.
        self.product_options = SettingsForm(what="option", skip=frozenset({CELLS_OPTION}))
        self.cells_from = ComboBox(label="cells from", choices=lambda _w: cells_choices(viewer),
                                   tooltip="the cells: a Labels layer of the viewer (StarDist, Cellpose, painted), "
                                           "a Shapes layer of cell outlines, "
                                           "nuclei detected on the slide, or a label image / GeoJSON file")
        self.cells_file = FileEdit(label="cells file", mode=FileDialogMode.EXISTING_FILE, value=None,
                                   filter="*.tif *.tiff *.png *.npy *.geojson *.json",
                                   tooltip="a label image (0 = background) or GeoJSON polygons in the slide's "
                                           "full-resolution pixels")
        self.device = ComboBox(label="device", choices=DEVICES, value="auto", tooltip=setting_tip("device"))
        self.scheduler = LineEdit(label="dask scheduler", value="",
                                  tooltip="empty: features and prediction in napari's process; 'local': "
                                          "a dask LocalCluster; or a scheduler address such as tcp://host:8786")
        self.run_button = PushButton(text="Super-resolve", tooltip="predict the chosen spots layer's section at the "
                                                                   "chosen positions in the background; the map "
                                                                   "opens on the Gene viewer's gene")
        self.slide = ComboBox(label="bare slide", choices=lambda _w: bare_slide_choices(viewer),
                              tooltip="a slide image opened without spots (an unmeasured H&E) to predict on")
        self.slide_positions = ComboBox(label="slide positions", choices=[SLIDE_LATTICE, SLIDE_GRID],
                                        value=SLIDE_LATTICE,
                                        tooltip="spot lattice: the model's training spots (spacing, kind, diameter) "
                                                "over the tissue; µm grid: square cells of a size in µm")
        self.slide_grid_um = FloatSpinBox(label="slide cell µm", min=MIN_GRID_UM, max=1000.0, step=5.0, value=50.0,
                                          tooltip="side of a grid cell in µm; each is predicted from the model's "
                                                  "spot-sized patch centred on it")
        self.slide_mpp = FloatSpinBox(label="slide µm/px", min=0.0, max=100.0, step=0.01, value=0.0,
                                      tooltip="the slide's pixel size; 0: from its file (unknown: the training "
                                              "slides')")
        self.predict_button = PushButton(text="Predict on this slide",
                                         tooltip="predict the chosen bare slide (no spots) with the chosen model at "
                                                 "the slide positions in the background")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.extend([self.data, self.model, self.checkpoint, self.positions, self.cells_from, self.cells_file,
                     self.product_options, self.device,
                     self.scheduler, self.run_button, self.slide, self.slide_positions, self.slide_grid_um,
                     self.slide_mpp, self.predict_button, self.cancel_button, self.status])
        self.native.layout().addWidget(self.models_panel.native)  # full width, below the form
        self.worker = None
        self.token: CancelToken | None = None
        self.last_outcome: Outcome | None = None
        self.added_layers: tuple[Any, Any] | None = None
        self._model_path: str | None = None
        self.run_button.changed.connect(self.run)
        self.predict_button.changed.connect(self.predict_slide)
        self.cancel_button.changed.connect(self.cancel)
        self.model.changed.connect(self._sync_products)
        self.positions.changed.connect(self._sync_visibility)
        self.cells_from.changed.connect(self._sync_visibility)
        self.slide_positions.changed.connect(self._sync_visibility)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        follow_session_models(self.native, self._models_changed)
        warm_up_imports()  # a click on Super-resolve then starts at once
        self._sync_products()

    def _chosen_model(self):
        """The chosen session model when it is loaded (its products are known), else ``None``."""
        entry = SESSION_MODELS.get(self.model.value) if self.model.value != FROM_FILE else None
        return None if entry is None else entry.model

    def _sync_products(self, *_: Any) -> None:
        """Offer the chosen model's products, its default first and chosen."""
        self.positions.reset_choices()
        model = self._chosen_model()
        if model is not None and model.products:
            self.positions.value = model.products[0]
        self._sync_visibility()

    def option(self, name: str) -> Control:
        """The control of the chosen product's option ``name`` (e.g. ``fold``)."""
        return self.product_options.control(name)

    @property
    def fold(self) -> Control:
        """The lattice's fold (its control while the lattice is chosen)."""
        return self.option("fold")

    def _models_changed(self) -> None:
        self.reset_choices()
        names = [n for n in SESSION_MODELS.names() if not SESSION_MODELS.get(n).note]  # type: ignore[union-attr]
        if names:  # the newest finished model is the likely next step (not a cancelled run's file)
            self.model.value = names[-1]

    def _sync_visibility(self, *_: Any) -> None:
        self.checkpoint.visible = self.model.value == FROM_FILE
        options = None if self.positions.value is None else get_product(self.positions.value).options
        if options is not None and options is not self.product_options.settings_class:
            self.product_options.show_class(options)  # the chosen product's own options
        takes_cells = options is not None and CELLS_OPTION in get_product(self.positions.value).option_names()
        self.cells_from.visible = takes_cells
        self.cells_file.visible = takes_cells and self.cells_from.value == CELLS_FILE
        if "label_scale" in self.product_options.fields:  # a label image file's scale; a layer has its own
            self.option("label_scale").visible = self.cells_file.visible
        self.slide_grid_um.visible = self.slide_positions.value == SLIDE_GRID

    def run(self, *_: Any) -> None:
        """Start super-resolution in the background: the chosen product with the options set."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        layer = self.data.value
        if layer is None:
            show_error("Open spot data first, then pick the spots layer to super-resolve.")
            return
        adata = histosge_meta(layer)["adata"]
        load = self._model_loader()
        if load is None:
            return
        if self.positions.value is None:  # e.g. a cellridge model: a prior for subspot, no map of its own
            show_error("The chosen model makes no map of a section itself: choose another model.")
            return
        product = get_product(self.positions.value)
        try:
            options = self.product_options.given_values()
        except InputError as exc:
            show_error(str(exc))
            return
        scheduler = scheduler_value(self.scheduler.value)
        cells = self._cells_choice(product, options)
        if cells is False:
            return
        self.token = token = CancelToken()

        def make_gen():  # runs in the worker thread, checkpoint loading included
            if cells is not None:
                return cells_job(load(), adata, cells, options, scheduler, token)
            return with_layers(product_job(load(), adata, product.name, options, scheduler, token), adata)

        self._adata = adata
        what = product.label + "".join(f", {name.replace('_', ' ')} {value}" for name, value in options.items())
        self._start(make_gen, f"super-resolving: {what}...", f"super-resolution ({what})")

    def _cells_choice(self, product, options: dict[str, Any]):
        """The cells the chosen product is asked for (``None``: it takes none), or ``False`` after telling why not.

        A file or the detector is checked with the other options at once, as the command line does.
        """
        from napari.utils.notifications import show_error

        if CELLS_OPTION not in product.option_names():
            return None
        choice = self.cells_from.value
        if choice != CELLS_FILE:  # a scale typed for a file, now hidden: a layer has its own, the detector none
            options.pop("label_scale", None)
        if choice == CELLS_FILE:
            text = "" if self.cells_file.value is None else str(self.cells_file.value)
            choice = "" if text in ("", ".") else text
        elif choice == DETECT_NUCLEI:
            choice = builtin_products.NUCLEI
        if isinstance(choice, str):
            if not choice:
                show_error("Choose the cells' label image or GeoJSON file, a Labels layer, or detect nuclei.")
                return False
            try:
                product.make_options({**options, CELLS_OPTION: choice})
            except InputError as exc:
                show_error(str(exc))
                return False
        return choice

    def _model_loader(self):
        """A zero-argument loader of the chosen model (run in the worker), or ``None`` after telling why not."""
        from napari.utils.notifications import show_error

        entry = SESSION_MODELS.get(self.model.value) if self.model.value != FROM_FILE else None
        path = Path(str(self.checkpoint.value))
        if entry is None and (str(self.checkpoint.value) in ("", ".") or not path.is_file()):
            show_error(f"Choose a trained model or an existing checkpoint file (got '{self.checkpoint.value}').")
            return None
        device = self.device.value
        # Outputs say where they came from, as the CLI's do (a model trained in this session and
        # never saved has no file).
        if entry is not None:
            self._model_path = None if entry.checkpoint is None else str(Path(entry.checkpoint).resolve())
        else:
            self._model_path = str(path.resolve())

        def load():
            from ...models import load_model

            return entry.load(device) if entry is not None else load_model(path, device=device)

        return load

    def _start(self, make_gen, status: str, description: str) -> None:
        self.run_button.enabled = self.predict_button.enabled = False
        self.cancel_button.enabled = True
        set_status(self.status, status)
        self.worker = start_job(make_gen, description=description, on_event=self._on_event, on_done=self._on_done,
                                on_crash=self._on_crash)

    def predict_slide(self, *_: Any) -> None:
        """Predict the chosen bare slide in the background: the model's spot lattice or a µm grid over its tissue."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        layer = self.slide.value
        if layer is None:
            show_error("Open a slide image without spots first (SVS, TIFF, NDPI, JPEG, PNG), then pick it.")
            return
        load = self._model_loader()
        if load is None:
            return
        positions, grid_um = str(self.slide_positions.value), float(self.slide_grid_um.value)
        um_per_px = float(self.slide_mpp.value) or None
        self.token = token = CancelToken()

        def make_gen():  # runs in the worker thread, checkpoint loading included
            return slide_job(load(), layer, positions, grid_um, um_per_px, token)

        self._adata = None
        what = f"a grid of {grid_um:g} µm cells" if positions == SLIDE_GRID else "the spot lattice"
        self._start(make_gen, f"predicting {layer.name} on {what}...", f"slide prediction ({what})")

    def cancel(self, *_: Any) -> None:
        """Ask the running super-resolution to stop at its next step."""
        if self.token is not None:
            self.token.cancel()

    def _on_event(self, event: Progress) -> None:
        set_status(self.status, status_text(event))

    def _finish(self) -> None:
        self.worker = None
        self.run_button.enabled = self.predict_button.enabled = True
        self.cancel_button.enabled = False

    def _on_done(self, outcome: Outcome) -> None:
        from napari.utils.notifications import show_error, show_info

        self.last_outcome = outcome
        self._finish()
        if outcome.cancelled:
            set_status(self.status, "cancelled; nothing was added")
            show_info("Super-resolution cancelled.")
            return
        if outcome.error is not None:
            set_status(self.status, f"error: {outcome.error}")
            show_error(str(outcome.error))
            return
        pred, layers = outcome.value
        if self._model_path is not None:
            pred.uns["histosge"]["model_path"] = self._model_path
        self.added_layers = add_prediction_layers(self.viewer, pred, self._adata, layers=layers)
        kind = "grid cells" if grid_info(pred) is not None else "cells" if is_cells(pred) else "positions"
        set_status(self.status, f"{pred.n_obs} {kind} x {pred.n_vars} genes")

    def _on_crash(self, exc: Exception) -> None:
        self._finish()
        set_status(self.status, f"failed: {exc.__class__.__name__}: {exc}")

