"""Models trained in this napari session, shared between the Train and Super-resolve widgets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal


@dataclass
class SessionModel:
    """A trained model with where its checkpoint lives and the data it was trained on."""

    name: str
    model: Any  # napari_histosge.training.trained_model.TrainedModel
    checkpoint: Path | None
    adata: Any = None


class _Registry:
    changed = Signal()

    def __init__(self) -> None:
        self._models: dict[str, SessionModel] = {}

    def add(self, entry: SessionModel) -> str:
        """Register ``entry`` under a unique name (suffixes ``#2``, ``#3`` ... on clashes)."""
        name, k = entry.name, 2
        while name in self._models:
            name, k = f"{entry.name} #{k}", k + 1
        entry.name = name
        self._models[name] = entry
        self.changed.emit()
        return name

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> SessionModel | None:
        return self._models.get(name)

    def clear(self) -> None:
        self._models.clear()
        self.changed.emit()


#: The session's trained models.
SESSION_MODELS = _Registry()
