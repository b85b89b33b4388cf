"""Where predicted positions sit for a model: the box that scales them and the patch around each.

A model trained on one section scaled that section's positions by the box of its training
spots, so predictions on that section use the same box. Any other section is scaled by
the box of its own measured spots, as a several-section model scales each of its
sections: positions keep their place relative to the tissue, not their pixel values.

Each predicted position stands for a disc of a given diameter (full-res px); the patch
read around it follows that diameter exactly as training followed the spot diameter
(:func:`napari_histosge.features.patch_size_px`).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import InputError
from ..export.scanpy_spatial import add_scanpy_spatial
from ..features import FeatureConfig, patch_size_px, spot_center_fraction
from ..training.grouping import median_spacing
from ..training.inputs import section_frame
from ..training.trained_model import TrainedModel

#: How a prediction's positions were scaled (``uns["histosge"]["position_frame"]``).
TRAINING_BOX, OWN_BOX = "training spots' box", "the section's own spot box"


def section_box(adata) -> list[list[float]]:
    """``[[min x, min y], [max x, max y]]`` of all of ``adata``'s spots (JSON-friendly)."""
    lo, hi = section_frame(adata.obsm["spatial"])
    return [lo.tolist(), hi.tolist()]


def _same_path(a: str, b: str) -> bool:
    if not a or not b:
        return False
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def is_training_section(model: TrainedModel, adata) -> bool:
    """Whether ``adata`` is the section a one-section ``model`` was trained on (or a part of it).

    The same source file or folder, or exactly the same box of spots, identifies it.
    Always ``False`` for a model trained on several sections (each is scaled by its own box).
    """
    if model.per_section:
        return False
    source = str(adata.uns.get("histosge", {}).get("source", ""))
    if _same_path(source, str(model.meta.source)):
        return True
    box = model.meta.section_box
    return box is not None and np.allclose(np.asarray(box, np.float64), section_box(adata), rtol=0, atol=1e-6)


def position_frame(model: TrainedModel, adata) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(min, max)`` box that scales positions on ``adata`` for ``model``; ``None`` is the training box.

    Raises
    ------
    InputError
        A model that cannot predict on other sections (:attr:`TrainedModel.predicts_other_sections`)
        asked to predict on one it was not trained on.
    """
    if is_training_section(model, adata):
        return None
    if not model.predicts_other_sections:
        raise InputError(f"a {model.config.model} model predicts only on the section it was trained on (it reads "
                         "that section's measured spots); use a histosge model for another section",
                         adata.uns.get("histosge", {}).get("source"))
    return section_frame(adata.obsm["spatial"])


def frame_name(frame) -> str:
    """Words for ``uns``: which box scaled the positions."""
    return TRAINING_BOX if frame is None else OWN_BOX


def _diameter_of(value) -> float | None:
    """``value`` (a recorded spot diameter) as a positive finite float, or ``None``."""
    return float(value) if value is not None and np.isfinite(float(value)) and float(value) > 0 else None


def check_diameter(diameter: float | None) -> None:
    """A diameter must be a finite number of pixels > 0 (``None``: the default)."""
    if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
        raise InputError(f"the diameter must be a positive number of pixels, got {diameter!r}")


#: The widest disc a prediction may stand for, in spot spacings of its section.
MAX_DIAMETER_SPACINGS = 10.0


def check_diameter_on(adata, diameter: float | None) -> None:
    """A diameter must also be at most :data:`MAX_DIAMETER_SPACINGS` spot spacings of ``adata``."""
    check_diameter(diameter)
    if diameter is None or adata.n_obs < 2:
        return
    spacing = median_spacing(np.asarray(adata.obsm["spatial"], np.float64), undefined=0.0)
    if spacing > 0 and diameter > MAX_DIAMETER_SPACINGS * spacing:
        raise InputError(f"a diameter of {diameter:g} px is over {MAX_DIAMETER_SPACINGS:g} spot spacings "
                         f"({MAX_DIAMETER_SPACINGS * spacing:.4g} px) of this section: give it in full-resolution "
                         "pixels")


def default_diameter(model: TrainedModel, adata, *, required: bool = True) -> float | None:
    """The disc a prediction on ``adata`` stands for by default: the training spot, in ``adata``'s pixels.

    On the training section that is the training spot diameter itself; on another
    section the same physical size when both pixel sizes are known, else ``adata``'s own
    spot diameter, else the training one.

    Raises
    ------
    InputError
        No diameter is known at all (``required``; otherwise ``None`` is returned).
    """
    info = adata.uns.get("histosge", {})
    own = _diameter_of(info.get("spot_diameter_px"))
    trained = _diameter_of(model.meta.spot_diameter_px)
    if model.per_section:
        chosen = own if own is not None else trained
    elif trained is not None and is_training_section(model, adata):
        chosen = trained
    else:
        mpp, trained_mpp = info.get("mpp"), model.meta.mpp
        if trained is not None and mpp and trained_mpp:
            chosen = trained if float(mpp) == float(trained_mpp) else trained * float(trained_mpp) / float(mpp)
        else:
            chosen = own if own is not None else trained
    if chosen is None and required:
        raise InputError("the spot diameter is unknown (neither the data nor the model has one); give a diameter",
                         info.get("source"))
    return chosen


def feature_config_of(model: TrainedModel) -> FeatureConfig:
    """The feature settings the model was trained with."""
    if model.meta.features is None:
        raise InputError("the model records no image-feature settings: it was not trained on image features")
    return FeatureConfig.from_dict(model.meta.features)


def patch_geometry(model: TrainedModel, adata, diameter: float | None = None) -> tuple[float, float]:
    """``(patch edge px, centre fraction)`` of the patch read around each position on ``adata``.

    ``diameter`` (full-res px, default :func:`default_diameter`) is the disc a position
    stands for. On the training section at the training diameter this is exactly the
    training patch; otherwise the training rule applied to ``adata`` with that diameter.
    """
    check_diameter(diameter)
    d = default_diameter(model, adata) if diameter is None else float(diameter)
    trained = _diameter_of(model.meta.spot_diameter_px)
    patch, centre = model.meta.patch_size_px, model.meta.center_fraction
    if (not model.per_section and is_training_section(model, adata) and trained == d
            and patch is not None and centre is not None):
        return float(patch), float(centre)
    # Only uns is read by the patch rule: a view with the chosen diameter applies it unchanged.
    view = SimpleNamespace(uns={"histosge": {**adata.uns.get("histosge", {}), "spot_diameter_px": d}})
    config = feature_config_of(model)
    return patch_size_px(view, config), spot_center_fraction(view, config)


# --------------------------------------------------------------------------- what every prediction records
def training_sections(model: TrainedModel) -> tuple[list[str], list[str]]:
    """``(names, sources)`` of the sections ``model`` was trained on, from its metadata."""
    sections = model.meta.sections
    if isinstance(sections, list) and sections:
        sources = [str(s.get("source", "")) for s in sections]
        return [str(s.get("name") or Path(src).name) for s, src in zip(sections, sources, strict=True)], sources
    source = str(model.meta.source)
    return [Path(source).name if source else ""], [source]


def finish_prediction(out, model: TrainedModel):
    """Add what every prediction output records, in place; returns ``out``.

    ``uns["histosge"]``: the model's name and the sections it was trained on (names and
    paths); ``obsm["spatial_um"]``: the positions in µm beside ``obsm["spatial"]`` (full-res
    px), where the pixel size (``uns["histosge"]["mpp"]``) is known; ``uns["spatial"]``: the
    slide and its scale factors as scanpy and squidpy read them
    (:func:`~napari_histosge.export.scanpy_spatial.scanpy_spatial`).
    """
    info = out.uns.setdefault("histosge", {})
    names, sources = training_sections(model)
    info.update(model=model.config.model, training_sections=names, training_sources=sources)
    mpp = info.get("mpp")
    if mpp is not None and np.isfinite(float(mpp)) and float(mpp) > 0:
        out.obsm["spatial_um"] = np.asarray(out.obsm["spatial"], np.float64) * float(mpp)
    return add_scanpy_spatial(out)


def check_measured_genes(model: TrainedModel, adata) -> None:
    """A model that reads measured spots needs its genes in ``adata``.

    Such a model is one that cannot predict other sections
    (:attr:`TrainedModel.predicts_other_sections` false).
    Genes are matched by name, or by id (``var["gene_ids"]``). A model that predicts from
    the image and positions alone does not read the data's counts: nothing to check.

    Raises
    ------
    InputError
        Naming the first missing genes and how many are missing.
    """
    if model.predicts_other_sections or adata.n_vars == 0:
        return
    known = set(map(str, adata.var_names))
    if "gene_ids" in adata.var.columns:
        known |= set(map(str, adata.var["gene_ids"]))
    missing = [g for g in model.genes if g not in known]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise InputError(f"the {model.config.model} model reads measured counts of {len(model.genes)} genes, "
                         f"but {len(missing)} are not in the data: {shown}",
                         adata.uns.get("histosge", {}).get("source"))
