"""The ``cellridge`` model: a ridge map from grid cells' image features to expression, learned on other sections.

Each measured spot is the mean of the grid cells under it (:mod:`.geometry`), so a spot's
log1p expression is regressed (ridge, each gene's penalty chosen by efficient
leave-one-out cross-validation) on the mean of its cells' image features
(:mod:`napari_histosge.features.cell_raster`). Features are standardised per section, so a
slide's overall stain intensity does not shift every prediction; targets are centred per
section for the same reason. Being linear, the map predicts a cell as readily as a spot:
that is what the sub-spot model reads from it (``subspot --prior``, :mod:`.histology_prior`),
the pattern of each gene within a footprint. It does not predict spots on its own.

Importing this module registers the ``cellridge`` model (:mod:`..registry`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from typing import Any

import numpy as np

from ...errors import InputError
from ...features.cell_raster import IDENTITY, cell_features
from ...io import require_spot_image
from ...io.preprocess import dense_targets, normalize_log1p, select_genes, top_mean_genes
from ...progress import CancelToken, Progress, ProgressGenerator
from ...training.model_meta import ModelMeta
from ...training.trained_model import TrainedModel
from ..registry import ModelSpec, register_model
from .config import CellRidgeConfig
from .fit import RIDGE_ALPHAS, ridge_fit
from .geometry import cell_px_for, footprint_cells, footprints_of
from .histology_prior import CELL_SIZE_TOLERANCE
from .meta import CellRidgeMeta


@dataclass
class SectionCells:
    """One section's spots as the means of their cells' standardised image features."""

    features: np.ndarray  # (spots, D): each spot's mean standardised cell features
    log_expression: Any  # the spots' log1p(normalize_total) AnnData
    cell_um: float | None
    meta: dict[str, Any]


def section_cells(adata, cell_um: float | None, *, cancel: CancelToken | None = None,
                  ) -> ProgressGenerator[SectionCells]:
    """The cell features of ``adata``'s spots (the slow part of training: cached by benchmarks)."""
    path, scale = require_spot_image(adata)
    info = adata.uns.get("histosge", {})
    cell_px = cell_px_for(cell_um, info.get("mpp"), scale, info.get("spot_diameter_px"))
    grid, weights = footprint_cells(footprints_of(adata), cell_px)
    feats = yield from cell_features(path, scale, grid, cancel=cancel)
    std = feats.std(axis=0)
    z = (feats - feats.mean(axis=0)) / np.where(std < 1e-8, 1.0, std)
    meta = {"platform": info.get("platform", "unknown"), "mpp": info.get("mpp"), "cell_px": float(cell_px),
            "spot_diameter_px": float(info.get("spot_diameter_px") or np.nan), "source": str(info.get("source", ""))}
    um = None if info.get("mpp") is None else float(cell_px * float(info["mpp"]))
    return SectionCells(np.asarray(weights @ z), normalize_log1p(adata), um, meta)


def check_sections(adatas: Sequence[Any], cell_um: float | None) -> None:
    """Refuse sections a prior cannot be learned from, before any slide is read (one line each).

    Each section needs its pixel size (the prior's cells must be a known size in µm), and
    their cells must be the same size within
    :data:`~.histology_prior.CELL_SIZE_TOLERANCE` (a prior averaged over cell sizes fits none).
    """
    sizes = []
    for section in adatas:
        info = section.uns.get("histosge", {})
        if info.get("mpp") is None:
            raise InputError("a cellridge prior needs each section's pixel size (its cells must be a known size "
                             "in µm), and this section's is unknown", info.get("source"))
        _, scale = require_spot_image(section)
        sizes.append(cell_px_for(cell_um, info["mpp"], scale, info.get("spot_diameter_px")) * float(info["mpp"]))
    if sizes and max(sizes) / min(sizes) > CELL_SIZE_TOLERANCE:
        raise InputError(f"the sections' grid cells are {min(sizes):.3g}-{max(sizes):.3g} µm (their slides differ in "
                         "pixel size): give --cell-um so that every section's cells are the same size")


def fit_cellridge(sections: Sequence[SectionCells], config: CellRidgeConfig, *,
                  meta: ModelMeta | Mapping[str, Any] | None = None) -> CellRidgeModel:
    """The ridge map fitted on ``sections``' spots, genes among those all share.

    Without ``genes`` given, the ``n_top_genes`` most expressed genes and the
    ``n_top_genes`` ranked ones (of the spots together) are fitted. ``meta``: what the
    caller keeps (feature settings, ...), under the fit's own entries.
    """
    import anndata as ad

    shared = [g for g in sections[0].log_expression.var_names
              if all(g in s.log_expression.var_names for s in sections[1:])]
    if not shared:
        raise InputError("the training sections have no gene in common")
    together = ad.concat([s.log_expression[:, shared] for s in sections], join="inner", index_unique="-")
    genes = select_genes(together, n_top=config.n_top_genes, genes=config.genes, method=config.gene_selection,
                         include=config.include_genes)
    if config.genes is None:  # a prior serves any section's genes: the most expressed too, which rankings skip
        genes = list(dict.fromkeys(top_mean_genes(together, n=config.n_top_genes) + genes))
    x = np.concatenate([s.features - s.features.mean(axis=0) for s in sections])
    targets = [dense_targets(s.log_expression, genes).astype(np.float64) for s in sections]
    y = np.concatenate([t - t.mean(axis=0) for t in targets])
    coef, alphas = ridge_fit(x, y)
    network = CellRidgeNetwork(in_dim=x.shape[1], n_genes=len(genes))
    network.fill(coef, np.mean([t.mean(axis=0) for t in targets], axis=0))
    cell_ums = [s.cell_um for s in sections]
    own = replace(CellRidgeMeta.of(meta), in_dim=int(x.shape[1]), n_features=int(x.shape[1]), feature_identity=IDENTITY,
                  cell_um=None if None in cell_ums else float(np.mean(cell_ums)),  # type: ignore[arg-type]
                  sections=[s.meta for s in sections], platform=sections[0].meta["platform"],
                  n_train_spots=int(len(x)), ridge_alpha_median=float(np.median(alphas)), history=[],
                  epochs_done=0)
    return CellRidgeModel(network, config, genes, own)


def train_cellridge(adata, *, train_ids: Sequence[str] | None, config: CellRidgeConfig,
                    meta: ModelMeta | Mapping[str, Any],
                    checkpoint_path: str | PathLike | None = None,
                    cancel: CancelToken | None = None) -> ProgressGenerator[TrainedModel]:
    """Fit ``cellridge`` on one section or a list of them (``train_ids``: one section only)."""
    adatas = list(adata) if isinstance(adata, (list, tuple)) else [adata]
    if train_ids is not None:
        if len(adatas) != 1:
            raise InputError("train_ids (a hold-out split) works with one section")
        adatas = [adatas[0][list(train_ids)]]
    check_sections(adatas, config.cell_um)
    sections = []
    for number, section in enumerate(adatas, 1):
        yield Progress("prepare", number - 1, len(adatas), f"cell features of section {number} of {len(adatas)}")
        sections.append((yield from section_cells(section, config.cell_um, cancel=cancel)))
    yield Progress("fit", 0, 1, f"ridge over {sum(len(s.features) for s in sections)} spots")
    model = fit_cellridge(sections, config, meta=meta)
    if checkpoint_path is not None:
        model.save(checkpoint_path)
    yield Progress("fit", 1, 1)
    return model


def _module_base():
    import torch

    return torch.nn.Module


class CellRidgeNetwork(_module_base()):  # type: ignore[misc]
    """The ridge map: ``coef`` ``(G, D)`` on per-section standardised cell features, and the mean level."""

    def __init__(self, in_dim: int, n_genes: int) -> None:
        import torch

        super().__init__()
        self.register_buffer("coef", torch.zeros(n_genes, in_dim))
        self.register_buffer("level", torch.zeros(n_genes))

    def fill(self, coef: np.ndarray, level: np.ndarray) -> None:
        """Set the fitted weights."""
        import torch

        with torch.no_grad():
            self.coef.copy_(torch.as_tensor(coef, dtype=torch.float32))
            self.level.copy_(torch.as_tensor(level, dtype=torch.float32))

    def forward(self, z):
        """log1p expression of standardised cell features (a torch forward pass, for completeness)."""
        return self.level + z @ self.coef.T


class CellRidgeModel(TrainedModel):
    """A fitted ``cellridge`` model: a histology prior for the sub-spot model, not a predictor of spots."""

    config: CellRidgeConfig
    meta: CellRidgeMeta
    meta_class = CellRidgeMeta
    #: It makes no map of a section itself: the sub-spot model draws with it.
    products = ()

    def pattern_coef(self) -> np.ndarray:
        """``(G, D)``: each gene's log1p expression per standardised cell feature (its pattern over cells)."""
        return self.model.coef.cpu().numpy().astype(np.float64)

    def prediction_inputs(self, features, mean_rgb, positions, *, frame=None) -> tuple[np.ndarray, ...]:
        """Not available: the model draws patterns for the sub-spot model."""
        raise InputError("a cellridge model is a histology prior: give it to the sub-spot model "
                         "(histosge train DATA --model subspot --prior MODEL.pt); it does not predict spots itself")

    def training_summary(self) -> str:
        """How the fit went, for people."""
        meta = self.meta
        size = f"{meta.cell_um:.3g} µm" if meta.cell_um else "cells of unknown size"
        return (f"ridge of {meta.n_features} cell image features over {meta.n_train_spots} spots of "
                f"{len(meta.sections or [])} section(s), {size}; median penalty {meta.ridge_alpha_median:.3g} "
                f"(of {RIDGE_ALPHAS.min():g} to {RIDGE_ALPHAS.max():g})")


#: The ``cellridge`` model.
SPEC = register_model(ModelSpec(
    name="cellridge", network=CellRidgeNetwork, trainer=None, trained_class=CellRidgeModel,
    hparam_keys=(), section_trainer=train_cellridge, trains_on_sections=True,
))
