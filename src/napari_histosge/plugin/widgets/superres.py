"""The Super-resolve widget: a trained model + a spots layer -> N-fold heatmap and points."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox

from ...progress import CancelToken, Progress
from .layers import ROLE_HEATMAP, ROLE_PRED_SPOTS, histosge_meta, prediction_layers
from .state import SESSION_MODELS
from .train import DEVICES, scheduler_value, spots_layer_choices
from .worker import Outcome, start_job, status_text

if TYPE_CHECKING:
    import napari

FROM_FILE = "checkpoint file..."


def add_prediction_layers(viewer, pred, source_adata, *, gene: str | None = None) -> tuple[Any, Any]:
    """Add the layers of :func:`~napari_histosge.plugin.widgets.layers.prediction_layers` to ``viewer``.

    The source (measured) AnnData is kept in the metadata so the gene viewer can compare
    predictions with measurements. Returns the heatmap Image (``None`` at fold 1) and the
    predicted-spots Points.
    """
    import napari.layers

    added = [viewer.add_layer(napari.layers.Layer.create(data, kwargs, kind))
             for data, kwargs, kind in prediction_layers(pred, gene, source_adata=source_adata)]
    roles = [histosge_meta(layer)["role"] for layer in added]
    heat = added[roles.index(ROLE_HEATMAP)] if ROLE_HEATMAP in roles else None
    return heat, added[roles.index(ROLE_PRED_SPOTS)]


class SuperResolveWidget(Container):
    """Predict expression at N-fold denser positions and show it over the slide."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.data = ComboBox(label="data", choices=lambda _w: spots_layer_choices(viewer),
                             tooltip="spots layer whose slide is super-resolved")
        self.model = ComboBox(label="model", choices=lambda _w: SESSION_MODELS.names() + [FROM_FILE],
                              tooltip="a model trained in this session, or a checkpoint file")
        self.checkpoint = FileEdit(label="checkpoint", mode=FileDialogMode.EXISTING_FILE, value=None, filter="*.pt")
        self.fold = SpinBox(label="fold N", min=2, max=16, value=4,
                            tooltip="positions per measured spot (2..16)")
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.scheduler = LineEdit(label="dask scheduler", value="",
                                  tooltip="empty: features and prediction in napari's process; 'local': "
                                          "a dask LocalCluster; or a scheduler address such as tcp://host:8786")
        self.run_button = PushButton(text="Super-resolve")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.data, self.model, self.checkpoint, self.fold, self.device, self.scheduler,
                     self.run_button, self.cancel_button, self.status])
        self.worker = None
        self.token: CancelToken | None = None
        self.last_outcome: Outcome | None = None
        self.added_layers: tuple[Any, Any] | None = None
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.model.changed.connect(self._sync_visibility)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        SESSION_MODELS.changed.connect(self._models_changed)
        self._sync_visibility()

    def _models_changed(self) -> None:
        self.reset_choices()
        names = SESSION_MODELS.names()
        if names:  # the newest model is the likely next step
            self.model.value = names[-1]

    def _sync_visibility(self, *_: Any) -> None:
        self.checkpoint.visible = self.model.value == FROM_FILE

    def run(self, *_: Any) -> None:
        """Start super-resolution in the background."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        layer = self.data.value
        if layer is None:
            show_error("Open spot data first, then pick the spots layer to super-resolve.")
            return
        adata = histosge_meta(layer)["adata"]
        entry = SESSION_MODELS.get(self.model.value) if self.model.value != FROM_FILE else None
        path = Path(str(self.checkpoint.value))
        if entry is None and (str(self.checkpoint.value) in ("", ".") or not path.is_file()):
            show_error(f"Choose a trained model or an existing checkpoint file (got '{self.checkpoint.value}').")
            return
        fold, device = int(self.fold.value), self.device.value
        scheduler = scheduler_value(self.scheduler.value)
        self.token = token = CancelToken()

        def make_gen():  # runs in the worker thread, checkpoint loading included
            from ...models import load_model
            from ...pipeline.steps import superresolve

            model = entry.model if entry is not None else load_model(path, device=device)
            return superresolve(model, adata, fold, scheduler=scheduler, cancel=token)

        self._adata = adata
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"super-resolving {fold}x..."
        self.worker = start_job(make_gen, description=f"{fold}x super-resolution",
                                on_event=self._on_event, on_done=self._on_done, on_crash=self._on_crash)

    def cancel(self, *_: Any) -> None:
        """Ask the running super-resolution to stop at its next step."""
        if self.token is not None:
            self.token.cancel()

    def _on_event(self, event: Progress) -> None:
        self.status.value = status_text(event)

    def _finish(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _on_done(self, outcome: Outcome) -> None:
        from napari.utils.notifications import show_error, show_info

        self.last_outcome = outcome
        self._finish()
        if outcome.cancelled:
            self.status.value = "cancelled"
            show_info("Super-resolution cancelled.")
            return
        if outcome.error is not None:
            self.status.value = f"error: {outcome.error}"
            show_error(str(outcome.error))
            return
        pred = outcome.value
        self.added_layers = add_prediction_layers(self.viewer, pred, self._adata)
        self.status.value = f"{pred.n_obs} positions x {pred.n_vars} genes"

    def _on_crash(self, exc: Exception) -> None:
        self._finish()
        self.status.value = f"failed: {exc.__class__.__name__}: {exc}"

