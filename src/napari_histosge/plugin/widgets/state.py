"""Models trained in this napari session, shared between the Train and Super-resolve widgets."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    from ...training.model_meta import ModelMeta


@dataclass
class SessionModel:
    """A trained (or opened) model with where its checkpoint lives and the data it was trained on.

    ``model`` is ``None`` for a file offered but not loaded yet (a cancelled run's last
    finished epoch): :meth:`load` reads it when it is first used.
    """

    name: str
    model: Any  # napari_histosge.training.trained_model.TrainedModel
    checkpoint: Path | None
    adata: Any = None
    note: str = ""  # e.g. "cancelled at epoch 12/60"

    def load(self, device: str = "auto"):
        """The model, read from :attr:`checkpoint` the first time when only the file is known."""
        if self.model is None:
            from ...models import load_model

            self.model = load_model(self.checkpoint, device=device)
        return self.model

    def describe(self) -> str:
        """Model kind, genes, sections and file, in one text (the model panel's details)."""
        lines = [self.name + (f" ({self.note})" if self.note else "")]
        if self.model is not None:
            genes = list(self.model.genes)
            meta: ModelMeta = self.model.meta
            sections = [str(s.get("name")) for s in meta.sections or []] or (
                [Path(str(meta.source)).name] if meta.source else [])
            lines += [f"model: {self.model.config.model}",
                      f"genes: {len(genes)} ({', '.join(genes[:8])}{', ...' if len(genes) > 8 else ''})",
                      f"sections: {', '.join(sections) or 'unknown'}"]
        else:
            lines.append("not loaded yet: read from its file when used")
        lines.append(f"file: {self.checkpoint}" if self.checkpoint is not None
                     else "file: none (Save as... writes one)")
        return "\n".join(lines)


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

    def rename(self, old: str, new: str) -> str:
        """Give model ``old`` the name ``new`` (suffixed ``#2`` ... on a clash); returns the name given."""
        wanted = new.strip() or old
        name, k = wanted, 2
        while name in self._models and name != old:
            name, k = f"{wanted} #{k}", k + 1
        self._models = {(name if key == old else key): entry for key, entry in self._models.items()}
        self._models[name].name = name
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


#: Genes each viewer's Gene viewer showed at the user's request, oldest first: the next training run keeps them.
_VIEWED_GENES: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def note_viewed_gene(viewer: Any, gene: str) -> None:
    """Remember that the user asked ``viewer``'s Gene viewer for ``gene`` (a training run keeps it)."""
    genes = _VIEWED_GENES.setdefault(viewer, [])
    if gene not in genes:
        genes.append(gene)


def viewed_genes(viewer: Any, adatas: Any = ()) -> list[str]:
    """The genes the user asked ``viewer``'s Gene viewer for, among those every one of ``adatas`` measures."""
    return [g for g in _VIEWED_GENES.get(viewer, []) if all(g in a.var_names for a in adatas)]


def follow_session_models(native: Any, callback: Any) -> None:
    """Call the bound method ``callback`` when the session's models change, while the Qt widget ``native`` lives.

    The registry outlives every dock widget: once a widget is closed and its Qt side deleted, its
    callback is dropped at the next change instead of calling into deleted controls. Both are held
    weakly, so the registry keeps no closed widget alive.
    """
    method, widget = weakref.WeakMethod(callback), weakref.ref(native)

    def on_change() -> None:
        target, qt_widget = method(), widget()
        if target is None or qt_widget is None or not _qt_alive(qt_widget):
            SESSION_MODELS.changed.disconnect(on_change)
            return
        target()

    SESSION_MODELS.changed.connect(on_change)


def _qt_alive(qt_object: Any) -> bool:
    """Whether the C++ side of a Qt wrapper still exists (a deleted one raises on any call)."""
    try:
        qt_object.objectName()
    except RuntimeError:
        return False
    return True
