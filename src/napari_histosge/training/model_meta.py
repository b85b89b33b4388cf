"""What a trained model records about its data and its training: the typed contract with the pipeline.

:class:`ModelMeta` holds the entries every model shares; a model that records more subclasses
it in its own subpackage (the sub-spot model's cells, the conditioned model's kriging) and
names the subclass in its trained class's ``meta_class``. A checkpoint stores the record as a
plain dict (:meth:`ModelMeta.to_dict`); :meth:`ModelMeta.from_dict` reads those of any
version: a missing entry takes its default, an entry this version does not know is kept in
:attr:`ModelMeta.extra` and written back unchanged (a newer version's or a toy model's own
entries survive a load and a save).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = ["ModelMeta", "meta_fields", "meta_table"]

MetaT = TypeVar("MetaT", bound="ModelMeta")


@dataclass
class ModelMeta:
    """What every trained model records: its training data, image features, input statistics and training run.

    Entries that are ``None`` are unknown or do not apply; they are left out of the checkpoint.
    """

    #: Path of the training section (the first one's, of several).
    source: str = ""
    #: One record per training section of a model trained on several, or of a cellridge prior
    #: (``name``, ``n_spots``, ``source``, ``platform``, ``mpp``, ``spot_diameter_px``...).
    sections: list[dict[str, Any]] | None = None
    #: Platform of the training section (``visium``, ``visium_hd``, ``st_v1``, ``unknown``...).
    platform: str | None = None
    #: Full-resolution microns per pixel of the training slide, if known.
    mpp: float | None = None
    #: Spot lattice of the training section (``hex`` or ``square``), if known.
    lattice: str | None = None
    #: Spot diameter on the training slide, full-res px (NaN where unknown).
    spot_diameter_px: float | None = None
    #: Centre-to-centre spacing of the training spots, full-res px, where recorded (else from ``lattice``).
    spot_spacing_px: float | None = None
    #: ``(min, max)`` box of all spots of a one-section model's section (tells its own section apart).
    section_box: list[list[float]] | None = None
    #: Image-feature settings (:meth:`napari_histosge.features.config.FeatureConfig.to_dict`).
    features: dict[str, Any] | None = None
    #: Which extractor and weights made the features (a prediction must read the same ones).
    feature_identity: str | None = None
    #: Image features per spot (0: a model trained without the image).
    n_features: int | None = None
    #: Width of the network's input rows (features plus the model's own extra columns).
    in_dim: int | None = None
    #: Side of the square patch the spot features were read from, full-res px.
    patch_size_px: float | None = None
    #: Share of the patch that is the spot's centre (the features' inner window).
    center_fraction: float | None = None
    #: How the target expression was normalised (``target_sum``, ``log1p``).
    normalisation: dict[str, Any] | None = None
    #: Training mean of each input column (image features then mean RGB).
    feature_mean: list[float] | None = None
    #: Training standard deviation of each input column (1 for a constant column).
    feature_std: list[float] | None = None
    #: Lower ``(x, y)`` corner of the training positions' box (the union of several sections' boxes).
    position_min: list[float] | None = None
    #: Upper ``(x, y)`` corner of the training positions' box.
    position_max: list[float] | None = None
    #: ``"per_section"`` when each training section's positions were scaled by its own box.
    position_frame: str | None = None
    #: ``(min, max)`` box of each training section, with ``position_frame="per_section"``.
    section_frames: list[list[list[float]]] | None = None
    #: Standard deviation of the random shift of positions in training, full-res px.
    position_jitter_px: float | None = None
    #: Training loss per epoch run.
    history: list[float] = field(default_factory=list)
    #: Epochs trained (a resumed run continues from here).
    epochs_done: int = 0
    #: Epoch at which early stopping ended the run, if it did.
    stopped_at: int | None = None
    #: Epochs of the fixed schedule that replaced early stopping, if one did.
    schedule_epochs: int | None = None
    #: ``[epoch, validation PCC]`` of each scored epoch.
    val_history: list[list[float]] = field(default_factory=list)
    #: Epoch whose weights were kept (best on the validation spots).
    best_epoch: int | None = None
    #: Validation PCC of the kept epoch (smoothed as the choice was made).
    best_val_pcc: float | None = None
    #: ``[first, last]`` epoch of the averaged weights, when weights were averaged.
    averaged_epochs: list[int] | None = None
    #: Spots the model was fitted on.
    n_train_spots: int = 0
    #: Spots held back to score epochs (0: none).
    n_validation_spots: int = 0
    #: Spots fitted on per section, of a model trained on several.
    n_train_spots_per_section: list[int] | None = None
    #: The model training started from (``path``, ``model``, ``sections``, ``epochs_done``), if any.
    init: dict[str, Any] | None = None
    #: Network sizes fixed by the data, passed to the network when the checkpoint is loaded.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Entries this version does not know (a newer version's, a toy model's own), kept as read.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls: type[MetaT], data: Mapping[str, Any]) -> MetaT:
        """The record of a checkpoint's plain dict: missing entries defaulted, unknown ones kept in :attr:`extra`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        extra = {**dict(data.get("extra") or {}), **{k: v for k, v in data.items() if k not in known | {"extra"}}}
        return cls(**values, extra=extra)

    @classmethod
    def of(cls: type[MetaT], meta: ModelMeta | Mapping[str, Any] | None) -> MetaT:
        """A new record of this class holding ``meta``'s entries (a copy; ``None``: the defaults)."""
        if meta is None:
            return cls()
        return cls.from_dict(meta.to_dict() if isinstance(meta, ModelMeta) else meta)

    def to_dict(self) -> dict[str, Any]:
        """The plain, JSON-serialisable dict a checkpoint stores (``None`` entries left out, :attr:`extra` merged)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


def meta_fields(cls: type[ModelMeta] = ModelMeta) -> list[tuple[str, str, str]]:
    """``(name, type, description)`` of each entry ``cls`` declares itself (not its base's), in order.

    The description is the ``#:`` comment above the field (what Sphinx documents), so the
    architecture page's table is generated from the class.
    """
    own = [f for f in fields(cls) if f.name in cls.__dict__.get("__annotations__", {})]
    comments = _field_comments(cls)
    return [(f.name, str(f.type), comments.get(f.name, "")) for f in own]


def _field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each annotated name of ``cls``'s body."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]  # a class at a module's top level: its source parses as it is
    for node in body.body if isinstance(body, ast.ClassDef) else []:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above: list[str] = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                above.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            out[node.target.id] = " ".join(above)
    return out


def meta_table(cls: type[ModelMeta]) -> str:
    """A Markdown table of the entries ``cls`` declares itself: name, type, meaning (the docs' generated block)."""
    def cell(text: str) -> str:  # Sphinx roles and literals as Markdown code; a bar would end the cell
        return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`").replace("|", "\\|")

    rows = ["| entry | type | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | `{cell(kind)}` | {cell(text)} |" for name, kind, text in meta_fields(cls)]
    return "\n".join(rows)
