"""The Train widget: settings -> ``pipeline.fit`` in a background thread, with live feedback.

No model logic here: the widget builds ``FeatureConfig`` and the model's settings from the form,
runs the core generator through :func:`._worker.start_job` and shows what it yields.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)

from ...errors import HistosgeError, InputError
from ...progress import CancelToken, Progress
from ..reader import low_resolution_message
from .layers import ROLE_SPOTS, histosge_meta, layers_with_role
from .loss_curve import LossCurve
from .models_panel import session_name
from .settings_form import Control, SettingsForm
from .state import SESSION_MODELS, SessionModel, viewed_genes
from .status import set_status, status_label
from .worker import Outcome, start_job, status_text, warm_up_in_background

if TYPE_CHECKING:
    import napari

DEVICES = ["auto", "cpu", "cuda", "mps"]
EXTRACTORS = ["default", "nuclei", "default+nuclei", "uni", "timm", "hub", "none"]
#: The genes choices: ranked by a method of ``select_genes`` (its name), or the user's own list.
GENES_SPATIAL, GENES_HVG, GENES_BOTH, GENES_LIST = ("spatially variable", "highly variable", "both",
                                                    "my gene list")
GENE_METHOD = {GENES_SPATIAL: "spatial", GENES_HVG: "hvg", GENES_BOTH: "hvg+spatial"}
#: Gene names shown in the preview before "and N more".
PREVIEW_GENES = 24
DEFAULT_OUT = Path.home() / "histosge-models"


#: The genes section and the device control show these settings; the model section shows the others.
FORM_SETTINGS = frozenset({"n_top_genes", "genes", "include_genes", "gene_selection", "device"})
#: What the epochs control does besides the setting's help: the rule for a number typed.
EPOCHS_TIP = ("Left alone (not edited), a model may train fewer: it stops early on its held-back spots, or "
              "trains a shorter fixed schedule on a section too small to hold spots back (the status says "
              "'epoch k/N'). A number you type, the default too, runs as typed on a small section (as --epochs)")

#: What a click on Start imports: imported when the widget opens, so the click itself stays quick.
START_IMPORTS = ("napari.qt.threading", "napari_histosge.features", "napari_histosge.models")


def setting_tip(name: str) -> str:
    """The declared help of the shared training setting ``name`` (one text for the form, the CLI and the docs)."""
    from ...training.config import TrainConfig, setting_of

    return setting_of(TrainConfig.__dataclass_fields__[name]).help


def warm_up_imports(modules=START_IMPORTS, on_ready=None):
    """Import ``modules`` and torch's compiler stack now (when a widget opens) rather than on its first click.

    The optimiser's first use imports ``torch._dynamo`` (:func:`.worker.preload_torch`), which
    otherwise froze the viewer for seconds on the first Start; the imports run in a background
    thread (:func:`.worker.warm_up_in_background`), so opening the widget does not freeze it either.
    """
    return warm_up_in_background(modules, on_ready)


def spots_layer_choices(viewer) -> list[tuple[str, Any]]:
    """``(name, layer)`` of the viewer's spots layers made by this plugin."""
    return [(layer.name, layer) for layer in layers_with_role(viewer.layers, ROLE_SPOTS)]


def gene_preview_text(genes: list[str], how: str, markers: list[str]) -> str:
    """What the preview says: how many genes, how they were chosen, the markers kept and the first names."""
    shown = ", ".join(genes[:PREVIEW_GENES]) + (f" and {len(genes) - PREVIEW_GENES} more"
                                               if len(genes) > PREVIEW_GENES else "")
    kept = f"; always included: {', '.join(markers)}" if markers else ""
    return f"{len(genes)} genes ({how}{kept}): {shown}"


def checkpoint_name(library: str, model: str = "histosge", stamp: str = "") -> str:
    """A file name for a checkpoint of ``library`` (safe characters only), ``stamp`` naming the run."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", library).strip("_") or "model"
    return f"{safe}_{model}{'_' + stamp if stamp else ''}.pt"


def new_checkpoint_path(out_dir: Path, library: str, model: str, now: datetime | None = None) -> Path:
    """A checkpoint path for a new run that no file has yet: ``<section>_<model>_<date-time>[-k].pt``.

    Every run writes its own file, so a cancelled run can never overwrite a finished model.
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    path, k = out_dir / checkpoint_name(library, model, stamp), 2
    while path.exists():
        path, k = out_dir / checkpoint_name(library, model, f"{stamp}-{k}"), k + 1
    return path


def scheduler_value(text: str) -> str | None:
    """The form's dask scheduler field: empty means in this process, 'local' a LocalCluster."""
    text = text.strip()
    return text or None


def _path_of(field: FileEdit) -> str | None:
    """The path a file field holds, ``None`` when it is empty."""
    return str(field.value) if field.value is not None and str(field.value) not in ("", ".") else None


def training_job(adata, *, train_config, given: dict[str, Any], feature_config, init_path: Path | None,
                 checkpoint: Path, scheduler: str | None, cancel: CancelToken):
    """The training run of a Start, for :func:`.worker.start_job`: everything slow happens in its thread.

    The feature extractor is checked there (a hub model's probe may wait on the network), the
    model to start from is read there, and the run then takes that model's network settings
    where the form gave none (:func:`~napari_histosge.pipeline.run_settings.run_settings`).
    """

    def make_gen():
        from ...features import check_extractor
        from ...models import load_model
        from ...outputs import output_lock
        from ...pipeline.run_settings import run_settings
        from ...pipeline.steps import fit

        if feature_config.extractor != "none":
            check_extractor(feature_config.extractor, feature_config.checkpoint)  # the command line's check
        init = None if init_path is None else load_model(init_path)
        config = train_config if init is None else run_settings(train_config.model, given, init)
        # One run per checkpoint file, as on the command line (a second writer is refused).
        with output_lock(checkpoint, what="checkpoint"):
            return (yield from fit(adata, train_config=config, feature_config=feature_config,
                                   checkpoint_path=checkpoint, scheduler=scheduler, cancel=cancel, init=init))

    return make_gen


class TrainWidget(Container):
    """Train a HisToSGE model on one or more spots layers; Start/Cancel, progress, loss curve."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self._add_data_controls(viewer)
        self._add_feature_controls()
        self._add_gene_controls()
        self._add_run_controls()
        self.extend([self.data, self.model_name, self.extractor, self.timm_name, self.weights, self.hub_name,
                     self.hub_folder, self.stain,
                     self.genes_mode, self.n_genes, self.markers, self.gene_list, self.gene_file,
                     self.preview_button, self.preview, self.init, self.model_settings, self.device, self.out_dir,
                     self.scheduler, self.start_button, self.cancel_button, self.notice, self.status])
        self.loss_curve = LossCurve()
        self.native.layout().addWidget(self.loss_curve)

        self.worker = None
        self.preview_worker: Any = None
        self.start_settings_worker: Any = None  # reads the start model's network settings to show them
        self.token: CancelToken | None = None
        self.checkpoint_path: Path | None = None
        self.last_model = None
        self.last_outcome: Outcome | None = None
        self.events_seen: list[Progress] = []
        self._connect(viewer)
        warm_up_imports(on_ready=self.list_models)
        self._refresh_data()
        self._sync_visibility()
        self._check_data()

    def _add_data_controls(self, viewer) -> None:
        """The sections to train on and the model (the registered models' settings load without torch)."""
        from ... import models  # noqa: F401  (registers every model's settings)
        from ...training.config import offered_models

        self.data = Select(label="data", choices=lambda _w: spots_layer_choices(viewer),
                           tooltip="spots layers to train on (open a Space Ranger / ST folder or .h5ad); "
                                   "ctrl/shift-click to train one model on several sections")
        self.data.native.setMaximumHeight(110)
        self.model_name = ComboBox(label="model", choices=offered_models(), value="histosge",
                                   tooltip="histosge: image + position (the paper); other models from the "
                                           "registry; the settings below are the chosen model's")

    def _add_feature_controls(self) -> None:
        """How image features are extracted."""
        self.extractor = ComboBox(label="features", choices=EXTRACTORS, value="default",
                                  tooltip="default: weight-free colour/texture; nuclei: nucleus morphometrics "
                                          "(needs the pixel size); default+nuclei: both; uni: UNI checkpoint; "
                                          "timm: any timm backbone; hub: a timm model of the Hugging Face hub "
                                          "(e.g. bioptimus/H-optimus-0), from its folder on disk or the hub; "
                                          "none: positions only")
        self.timm_name = LineEdit(label="timm model", value="resnet18",
                                  tooltip="timm model name (used when features = timm)")
        self.weights = FileEdit(label="weights", mode=FileDialogMode.EXISTING_FILE, value=None,
                                filter="*.pt *.pth *.bin *.safetensors",
                                tooltip="local checkpoint file for UNI or the timm model")
        self.hub_name = LineEdit(label="hub model", value="",
                                 tooltip="<org>/<name> of a timm model on the Hugging Face hub, e.g. "
                                         "bioptimus/H-optimus-0 (used when features = hub)")
        self.hub_folder = FileEdit(label="hub folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
                                   tooltip="the model's folder copied from the hub (config.json and "
                                           "model.safetensors or pytorch_model.bin); empty: the Hugging Face "
                                           "cache, else a download")
        self.stain = ComboBox(label="stain", choices=["none", "macenko"], value="none",
                              tooltip="stain normalisation. macenko: every slide's patches re-rendered with "
                                      "reference stains estimated once per slide, for a model meant for slides "
                                      "stained or scanned elsewhere (no gain on sections of one lab)")

    def _add_gene_controls(self) -> None:
        """Which genes are predicted (the settings of :data:`FORM_SETTINGS` about genes)."""
        from ...training.config import TrainConfig

        self.genes_mode = ComboBox(label="genes", choices=[GENES_SPATIAL, GENES_HVG, GENES_BOTH, GENES_LIST],
                                   value=GENES_SPATIAL,
                                   tooltip="spatially variable: Moran's I, the genes with tissue structure (a "
                                           "section's markers); highly variable: dispersion, as the paper; both: "
                                           "the best of each gene's two ranks; my gene list: exactly the genes "
                                           "entered below")
        self._genes_default = TrainConfig.default_of("n_top_genes")
        self.n_genes = SpinBox(label="n genes", min=1, max=20000, value=self._genes_default,
                               tooltip=setting_tip("n_top_genes"))
        self.markers = LineEdit(label="always include", value="",
                                tooltip="genes always predicted besides the ranked ones (e.g. ERBB2, GRB7), "
                                        "separated by commas")
        self.gene_list = LineEdit(label="gene list", value="", tooltip="the genes to predict, separated by commas")
        self.gene_file = FileEdit(label="genes from file", mode=FileDialogMode.EXISTING_FILE, value=None,
                                  filter="*.txt *.csv *.tsv *.list",
                                  tooltip="optional: a text file of gene names (one per line or comma-separated; "
                                          "# starts a comment), added to the names above")
        self.preview_button = PushButton(text="Show genes")
        self.preview = status_label()  # the genes the next run will use, once asked for
        self.preview.visible = False

    def _add_run_controls(self) -> None:
        """The model to start from, the chosen model's settings, where it runs and the Start/Cancel buttons."""
        from ...training.config import config_class

        self.init = FileEdit(label="start from", mode=FileDialogMode.EXISTING_FILE, value=None, filter="*.pt",
                             tooltip="optional: a trained histosge model (e.g. of other sections of the tissue) to "
                                     "fine-tune on this section (the conditioned model starts its image "
                                     "companion from it); its genes, features and network settings are kept")
        self.model_settings = SettingsForm(skip=FORM_SETTINGS, tips={"epochs": EPOCHS_TIP})
        self.model_settings.show_class(config_class(str(self.model_name.value)))
        self.device = ComboBox(label="device", choices=DEVICES, value="auto", tooltip=setting_tip("device"))
        self.out_dir = FileEdit(label="output folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=DEFAULT_OUT,
                                tooltip="where each run writes its own checkpoint (.pt), named after the data, "
                                        "the model and the time; a finished model is never overwritten")
        self.scheduler = LineEdit(label="dask scheduler", value="",
                                  tooltip="empty: extract features in napari's process; 'local': a dask "
                                          "LocalCluster; or a scheduler address such as tcp://host:8786")
        self.start_button = PushButton(text="Start training",
                                       tooltip="extract features, rank the genes and train in the background; "
                                               "progress and the loss curve below; Cancel keeps the last finished "
                                               "epoch in this run's own file")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.notice = status_label()  # warnings about the chosen data (low resolution), kept in view
        self.notice.visible = False

    def _connect(self, viewer) -> None:
        self.start_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.extractor.changed.connect(self._sync_visibility)
        self.extractor.changed.connect(self._check_data)
        self.data.changed.connect(self._check_data)
        self.model_name.changed.connect(self._model_changed)
        self.genes_mode.changed.connect(self._sync_visibility)
        self.preview_button.changed.connect(self.show_genes)
        self.init.changed.connect(self._show_start_settings)
        for control in (self.data, self.genes_mode, self.n_genes, self.markers, self.gene_list, self.gene_file,
                        self.init, self.model_name):
            control.changed.connect(self._clear_preview)  # a shown list is stale once its inputs change
        viewer.layers.events.inserted.connect(self._refresh_data)
        viewer.layers.events.removed.connect(self._refresh_data)

    @property
    def epochs(self) -> Control:
        """The epochs control of the model section."""
        return self.model_settings.control("epochs")

    @property
    def lr(self) -> Control:
        """The learning-rate control of the model section."""
        return self.model_settings.control("lr")

    def list_models(self) -> None:
        """Offer every registered model (also any registered by the background warm-up), keeping the one chosen."""
        from ...training.config import offered_models

        with self.model_name.changed.blocked():
            value, self.model_name.choices = self.model_name.value, offered_models()
            self.model_name.value = value

    def _refresh_data(self, *_: Any) -> None:
        """Refresh the layer choices; with nothing selected, select the newest spots layer."""
        self.reset_choices()
        choices = [layer for layer in self.data.choices if layer is not None]
        if choices and not self.data.value:
            self.data.value = [choices[-1]]

    def data_warnings(self) -> list[str]:
        """Warnings about the selected sections for the chosen features (e.g. a low-resolution image)."""
        if self.extractor.value == "none":
            return []
        adatas = [histosge_meta(layer).get("adata") for layer in (self.data.value or [])]
        return [m for a in adatas if a is not None and (m := low_resolution_message(a)) is not None]

    def _check_data(self, *_: Any) -> None:
        messages = self.data_warnings()
        set_status(self.notice, "\n".join(f"warning: {m}" for m in messages))
        self.notice.visible = bool(messages)

    def set_status(self, text: str) -> None:
        """Show ``text`` in the status line (wrapped inside the dock, full text as tooltip)."""
        set_status(self.status, text)

    # ------------------------------------------------------------------ form -> core configs
    def _model_changed(self, *_: Any) -> None:
        """The model section shows the chosen model's settings, with its defaults."""
        from ...training.config import config_class

        cls = config_class(str(self.model_name.value))
        self.model_settings.show_class(cls)
        # The gene count follows the model's own default (cellridge fits more genes) unless typed.
        default_genes = cls.default_of("n_top_genes")
        if self.n_genes.value == self._genes_default:
            self.n_genes.value = default_genes
        self._genes_default = default_genes
        if self.init_path_text():
            self._show_start_settings()  # the start model's network settings for this model's controls

    def _show_start_settings(self, *_: Any) -> None:
        """Show the start model's network settings in the model section (read in a thread), or the defaults again.

        They are shown, not given: a run from the model keeps them unless the user edits one.
        """
        from napari.qt.threading import create_worker

        from ...models import model_spec

        keys = model_spec(str(self.model_name.value)).hparam_keys
        cls = self.model_settings.settings_class
        try:
            path = self.init_path()
        except InputError:
            path = None
        if path is None:
            self.model_settings.show_values({k: cls.default_of(k) for k in keys})
            return

        def work():
            from ...models import load_model

            config = load_model(path, device="cpu").config
            return {k: getattr(config, k) for k in keys if hasattr(config, k)}

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(self._shown_start_settings)
        worker.errored.connect(self._unreadable_start)  # Start reports an unreadable model in one line
        self.start_settings_worker = worker
        worker.start()

    def _shown_start_settings(self, values: dict[str, Any]) -> None:
        self.start_settings_worker = None
        self.model_settings.show_values(values)

    def _unreadable_start(self, _exc: Exception) -> None:
        self.start_settings_worker = None

    def _sync_visibility(self, *_: Any) -> None:
        self.timm_name.visible = self.extractor.value == "timm"
        self.weights.visible = self.extractor.value in ("uni", "timm")
        self.hub_name.visible = self.hub_folder.visible = self.extractor.value == "hub"
        self.stain.visible = self.extractor.value != "none"
        own_list = self.genes_mode.value == GENES_LIST
        self.n_genes.visible = self.markers.visible = not own_list
        self.gene_list.visible = own_list

    def feature_config(self):
        """The :class:`~napari_histosge.features.FeatureConfig` the form describes."""
        from ...features import FeatureConfig

        spec = self.extractor.value
        if spec == "timm":
            name = self.timm_name.value.strip()
            if not name:
                raise InputError("enter a timm model name (e.g. resnet18) or pick another feature extractor")
            spec = f"timm:{name}"
        if spec == "hub":
            spec = f"hf:{self.hub_name.value.strip()}"
        chosen = self.extractor.value
        weights = _path_of(self.hub_folder) if chosen == "hub" else _path_of(self.weights) if chosen in (
            "uni", "timm") else None
        stain = str(self.stain.value) if spec != "none" else "none"
        return FeatureConfig(extractor=spec, checkpoint=weights, device=self.device.value, stain=stain)

    def given_settings(self) -> dict[str, Any]:
        """The settings the form gives: those edited in the model section, the genes and the device.

        A setting whose control was not edited is not given, so the model's own rules for it
        hold (e.g. HisToSGE's shorter schedule on a small section); a number typed is given
        (:meth:`~napari_histosge.training.config.TrainConfig.implied`).
        """
        mode = self.genes_mode.value
        names = self.gene_names()
        if mode == GENES_LIST and not names:
            raise InputError("the gene list is empty; enter gene names separated by commas, or pick a file of them")
        if mode != GENES_LIST:  # the genes the user looked at in the Gene viewer are predicted too
            adatas = [histosge_meta(layer).get("adata") for layer in (self.data.value or [])]
            names = list(dict.fromkeys(names + viewed_genes(self.viewer, [a for a in adatas if a is not None])))
        return {**self.model_settings.given_values(), "device": self.device.value,
                "n_top_genes": int(self.n_genes.value), "genes": names if mode == GENES_LIST else None,
                "include_genes": names if mode != GENES_LIST and names else None,
                "gene_selection": GENE_METHOD.get(mode, "spatial")}

    def train_config(self):
        """The chosen model's settings (:mod:`napari_histosge.training.config`) the form describes."""
        from ...models import train_config

        return train_config(str(self.model_name.value), **self.given_settings())

    def gene_names(self) -> list[str]:
        """The names typed (the gene list, or the genes always included) plus those of the gene file."""
        from ...gene_lists import parse_gene_names

        typed = self.gene_list.value if self.genes_mode.value == GENES_LIST else self.markers.value
        names = parse_gene_names(typed)
        path = str(self.gene_file.value) if self.gene_file.value is not None else ""
        if path not in ("", "."):
            if not Path(path).is_file():
                raise InputError("the gene file does not exist", path)
            names += parse_gene_names(path)
        return list(dict.fromkeys(names))

    # ------------------------------------------------------------------ the genes preview
    def _clear_preview(self, *_: Any) -> None:
        set_status(self.preview, "")
        self.preview.visible = False

    def show_genes(self, *_: Any) -> None:
        """Show the genes the next run will use on the selected data (ranked in a background thread)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        layers = list(self.data.value or [])
        if not layers:
            show_error("Select the spots layers to train on first; the genes are ranked on them.")
            return
        adatas = [histosge_meta(layer)["adata"] for layer in layers]
        try:
            config, init_path = self.train_config(), self.init_path()
        except HistosgeError as exc:
            show_error(str(exc))
            return
        how = str(self.genes_mode.value)
        self.preview.visible = True
        set_status(self.preview, "ranking genes...")
        self.preview_button.enabled = False

        def work():
            from ...pipeline.gene_choice import training_genes

            if init_path is not None:  # a run that starts from a model predicts its genes
                from ...models import load_model

                return list(load_model(init_path, device="cpu").genes), "the genes of the model to start from"
            return training_genes(adatas if len(adatas) > 1 else adatas[0], config), how

        def done(result) -> None:
            self.preview_button.enabled = True
            genes, how = result
            set_status(self.preview, gene_preview_text(genes, how, config.include_genes or []))

        def failed(exc: Exception) -> None:
            self.preview_button.enabled = True
            set_status(self.preview, f"error: {exc}")

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(done)
        worker.errored.connect(failed)
        self.preview_worker = worker
        worker.start()

    def init_path_text(self) -> str:
        """The "start from" field's text, ``""`` when it is empty."""
        text = str(self.init.value) if self.init.value is not None else ""
        return "" if text == "." else text

    def init_path(self) -> Path | None:
        """The "start from" model file, or ``None``."""
        text = self.init_path_text()
        if not text:
            return None
        if not Path(text).is_file():
            raise InputError("the model to start from does not exist", text)
        return Path(text)

    # ------------------------------------------------------------------ actions
    def start(self, *_: Any) -> None:
        """Start training in a background thread (errors become notifications)."""
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:
            return
        layers = self._chosen_layers()
        if not layers:
            return
        adatas = [histosge_meta(layer)["adata"] for layer in layers]
        try:  # the form's settings checked now: one line, before any work
            feature_config, given, train_config = self.feature_config(), self.given_settings(), self.train_config()
            init_path = self.init_path()
            out_dir = Path(str(self.out_dir.value)).expanduser()
            out_dir.mkdir(parents=True, exist_ok=True)
        except (HistosgeError, OSError) as exc:
            show_error(str(exc))
            return
        library = "+".join(str(a.uns.get("histosge", {}).get("library_id") or layer.name)
                           for a, layer in zip(adatas, layers, strict=True))
        self.checkpoint_path = new_checkpoint_path(out_dir, str(library), train_config.model)
        self.token = CancelToken()
        self.events_seen = []
        self.loss_curve.clear()
        self.set_status("starting...")
        for message in self.data_warnings():  # a notification too: the status line changes soon
            show_warning(message)
        self.start_button.enabled, self.cancel_button.enabled = False, True
        job = training_job(adatas if len(adatas) > 1 else adatas[0], train_config=train_config, given=given,
                           feature_config=feature_config, init_path=init_path, checkpoint=self.checkpoint_path,
                           scheduler=scheduler_value(self.scheduler.value), cancel=self.token)
        # The session keeps the (first) section as the model's data.
        self._library, self._adata = str(library), adatas[0]
        self.worker = start_job(job, description=f"training on {library}", on_event=self._on_event,
                                on_done=self._on_done, on_crash=self._on_crash)

    def _chosen_layers(self) -> list:
        """The spots layers chosen to train on; none shows what to do instead."""
        from napari.utils.notifications import show_error

        layers = list(self.data.value or [])
        if not layers and not self.data.choices:
            show_error("Open spot data first (a Space Ranger or ST v1 folder, or an .h5ad), then pick it here.")
        elif not layers:
            show_error("No data selected: select one or more spots layers to train on "
                       "(ctrl/shift-click selects several sections).")
        return layers

    def cancel(self, *_: Any) -> None:
        """Ask the running training to stop at the next batch."""
        if self.token is not None:
            self.token.cancel()
            self.set_status("cancelling...")

    # ------------------------------------------------------------------ worker callbacks
    def _on_event(self, event: Progress) -> None:
        self.events_seen.append(event)
        if event.stage == "train" and "loss" in event.metrics:
            val = event.metrics.get("val_pcc")
            self.loss_curve.append(float(event.metrics["loss"]), event.step,
                                   None if val is None else float(val))
            text = f"epoch {event.step}/{event.total}  loss {event.metrics['loss']:.4g}"
            if "val_pcc" in event.metrics:  # early stopping's score on the held-back spots
                text += f"  validation PCC {event.metrics['val_pcc']:.3f}"
            self.set_status(text)
        else:
            self.set_status(status_text(event))

    def _finish(self) -> None:
        self.worker = None
        self.start_button.enabled, self.cancel_button.enabled = True, False

    def _on_done(self, outcome: Outcome) -> None:
        from napari.utils.notifications import show_error, show_info

        self.last_outcome = outcome
        self._finish()
        if outcome.cancelled:
            self._offer_cancelled_file()
            self.set_status(self.cancelled_text())
            show_info(f"Training {self.cancelled_text()}")
            return
        if outcome.error is not None:
            self.set_status(f"error: {outcome.error}")
            show_error(str(outcome.error))
            return
        model = outcome.value
        self.last_model = model
        name = SESSION_MODELS.add(SessionModel(name=session_name(model, self._library), model=model,
                                               checkpoint=self.checkpoint_path, adata=self._adata))
        self.set_status(f"done: {name}; saved to {self.checkpoint_path}\n{model.training_summary()}")
        show_info(f"Trained '{name}'; checkpoint {self.checkpoint_path}")

    def _on_crash(self, exc: Exception) -> None:
        self._finish()
        self.set_status(f"failed: {exc.__class__.__name__}: {exc}")

    def _reached(self) -> str:
        epochs = [e for e in self.events_seen if e.stage == "train"]
        return f"at epoch {epochs[-1].step}/{epochs[-1].total}" if epochs else "before training began"

    def _offer_cancelled_file(self) -> None:
        """Offer a cancelled run's file (its last finished epoch) among the session's models, read when used."""
        path = self.checkpoint_path
        if path is not None and path.is_file():
            self._cancelled_name = SESSION_MODELS.add(SessionModel(
                name=f"{self._library} {self.model_name.value} (cancelled)", model=None, checkpoint=path,
                adata=self._adata, note=f"cancelled {self._reached()}"))

    def cancelled_text(self) -> str:
        """What a cancel left: how far the run got, and the file that keeps its last finished epoch."""
        reached = self._reached()
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return f"cancelled {reached}; no epoch had finished, so nothing was saved"
        return (f"cancelled {reached}; its last finished epoch is kept in {path} (this run's own file), offered "
                f"in Super-resolve's models as '{getattr(self, '_cancelled_name', path.name)}'")
