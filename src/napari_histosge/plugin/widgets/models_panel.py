"""The model panel: every model of the session with its kind, genes, sections and file.

Trained, opened, or a cancelled run's file; open a checkpoint, save a model as a new file,
rename it. It sits in the Super-resolve widget, below the model choice it feeds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton

from .state import SESSION_MODELS, SessionModel, follow_session_models
from .status import set_status, status_label

#: The checkpoint files the dialogs offer.
CHECKPOINT_FILTER = "histosge model (*.pt)"


def session_name(model, stem: str) -> str:
    """The name a model gets in the session: where it came from, its kind and its genes."""
    return f"{stem} {model.config.model} ({len(model.genes)} genes)"


class ModelPanel(Container):
    """The session's models with their details; open, save as and rename."""

    def __init__(self) -> None:
        super().__init__(labels=False)
        self.models = ComboBox(choices=lambda _w: SESSION_MODELS.names(),
                               tooltip="the models of this session: trained, opened, or a cancelled run's file")
        self.details = status_label()
        self.new_name = LineEdit(value="", tooltip="a new name for the chosen model (Enter or Rename)")
        self.new_name.native.setPlaceholderText("new name...")
        self.rename_button = PushButton(text="Rename", tooltip="give the chosen model the name typed beside")
        self.open_button = PushButton(text="Open model...", tooltip="add a checkpoint file (.pt) to the session's "
                                                                     "models (read in the background)")
        self.save_button = PushButton(text="Save as...", tooltip="write the chosen model to a new checkpoint file "
                                                                  "(it is then that model's file)")
        row: Container = Container(layout="horizontal", labels=False)
        row.extend([self.new_name, self.rename_button])
        buttons: Container = Container(layout="horizontal", labels=False)
        buttons.extend([self.open_button, self.save_button])
        for box in (row, buttons):
            box.margins = (0, 0, 0, 0)
        self.extend([Label(value="<b>Models of this session</b>"), self.models, self.details, row, buttons])
        self.worker: Any = None
        self.models.changed.connect(self._show_details)
        self.rename_button.changed.connect(lambda *_: self.rename())
        self.new_name.native.returnPressed.connect(self.rename)
        self.open_button.changed.connect(lambda *_: self.open_model())
        self.save_button.changed.connect(lambda *_: self.save_as())
        follow_session_models(self.native, self._models_changed)
        self._models_changed()

    def _models_changed(self) -> None:
        self.models.reset_choices()
        names = SESSION_MODELS.names()
        view = self.models.native.view()
        if view is not None and names:  # the list shows whole names, however narrow the dock
            metrics = self.models.native.fontMetrics()
            view.setMinimumWidth(max(metrics.horizontalAdvance(n) for n in names) + 40)
        for i, name in enumerate(names):
            entry = SESSION_MODELS.get(name)
            if entry is not None:
                self.models.native.setItemData(i, entry.describe(), _tooltip_role())
        self._show_details()

    def _show_details(self, *_: Any) -> None:
        entry = self.chosen()
        set_status(self.details, entry.describe() if entry is not None else "no model yet: train one, or open a "
                                                                              "checkpoint file")

    def chosen(self) -> SessionModel | None:
        """The model chosen in the panel, or ``None``."""
        return SESSION_MODELS.get(self.models.value) if self.models.value else None

    def rename(self, new: str | None = None) -> str | None:
        """Rename the chosen model to ``new`` (the typed name when ``None``); the name given, or ``None``."""
        entry = self.chosen()
        new = self.new_name.value if new is None else new
        if entry is None or not new.strip():
            return None
        name = SESSION_MODELS.rename(entry.name, new)
        self.models.value = name
        self.new_name.value = ""
        return name

    def save_as(self, path: str | None = None) -> Path | None:
        """Write the chosen model to ``path`` (asked for when ``None``); it becomes the model's file."""
        from ...errors import HistosgeError

        entry = self.chosen()
        if entry is None:
            set_status(self.details, "no model to save: train one, or open a checkpoint file")
            return None
        path = path if path is not None else _ask_path(self.native, save=True, start=f"{entry.name}.pt")
        if path is None:
            return None
        target = Path(path)
        try:
            if entry.model is not None:
                entry.model.save(target)
            elif entry.checkpoint is not None:  # a file not loaded: copied as it is
                shutil.copy2(entry.checkpoint, target)
        except (OSError, HistosgeError) as exc:
            set_status(self.details, f"not saved: {exc}")
            return None
        entry.checkpoint = target
        self._models_changed()
        return target

    def open_model(self, path: str | None = None) -> None:
        """Read the checkpoint at ``path`` (asked for when ``None``) in the background and add it."""
        from napari.qt.threading import create_worker

        path = path if path is not None else _ask_path(self.native, save=False)
        if path is None or self.worker is not None:
            return
        file = Path(path)
        set_status(self.details, f"reading {file.name}...")

        def read():
            from ...models import load_model

            return load_model(file, device="cpu")

        self.worker = worker = create_worker(read, _ignore_errors=True)  # errors: _open_failed, not a traceback
        worker.returned.connect(lambda model: self._opened(model, file))
        worker.errored.connect(lambda exc: self._open_failed(exc, file))
        worker.start()

    def _opened(self, model, file: Path) -> None:
        self.worker = None
        name = SESSION_MODELS.add(SessionModel(name=session_name(model, file.stem), model=model, checkpoint=file))
        self.models.value = name

    def _open_failed(self, exc: Exception, file: Path) -> None:
        self.worker = None
        set_status(self.details, f"could not open {file}: {exc}")


def _tooltip_role():
    from qtpy.QtCore import Qt

    return Qt.ItemDataRole.ToolTipRole


def _ask_path(parent, *, save: bool, start: str = "") -> str | None:
    from qtpy.QtWidgets import QFileDialog

    ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
    path, _ = ask(parent, "Save model as" if save else "Open model", start, CHECKPOINT_FILTER)
    return path or None
