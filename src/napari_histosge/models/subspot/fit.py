"""Training the sub-spot model on a section: cell features, the measured prior, and the image modulation.

Each cell's rate (counts per 1e4) is the measured prior at the cell (:mod:`.prior`) times
``exp`` of a linear function of the cell's image features. The function is fitted by
aggregating over each measured footprint: a footprint's measured log1p value, minus the
log1p of its cells' mean prior, is regressed on its cells' mean features (ridge, each
gene's penalty chosen by efficient leave-one-out cross-validation over the footprints).
How much of that modulation is kept, and the prior's bandwidth, are chosen one scale up
on the same footprints (:mod:`.calibration`). With a histology prior (``prior``, a
``cellridge`` model of other sections) the modulation is instead that model's map, weighted
per gene on the footprints (:mod:`.histology_prior`), and taken relative to its own level at
the footprints, smoothed like the prior: it adds only the pattern below a footprint.

Importing this module registers the ``subspot`` model (:mod:`..registry`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from os import PathLike
from typing import Any

import numpy as np

from ...errors import InputError
from ...evaluation.count_split import integer_counts
from ...features.cell_raster import IDENTITY, cell_features, n_cell_features
from ...io import require_spot_image
from ...io.preprocess import dense_targets, normalize_log1p, select_genes, total_counts
from ...progress import CancelToken, Progress, ProgressGenerator
from ...training.grouping import median_spacing
from ...training.model_meta import ModelMeta
from ...training.trained_model import TrainedModel
from ..registry import ModelSpec, register_model
from .calibration import calibrate, split_targets
from .config import SubspotConfig
from .consistency import fit_dispersion
from .geometry import cell_px_for, footprint_cells, footprints_of
from .histology_prior import load_prior, prior_pattern
from .meta import SubspotMeta
from .network import SubspotNetwork
from .prior import prior_rates, prior_weights, smoothed_rates
from .trained import SubspotModel

SPEC_NAME = "subspot"
#: Said when the histology prior predicts none of the genes the model fits.
NO_SHARED_GENE = ("the histology prior predicts none of the selected genes: every weight is 0 and the map is the "
                  "smoothed measurement; choose genes the prior was trained on (--genes) or train it on more genes")
#: Ridge penalties tried per gene (on standardised features).
RIDGE_ALPHAS = np.logspace(-1, 4, 11)


def train_subspot_section(adata, *, train_ids: Sequence[str] | None, config: SubspotConfig,
                          meta: ModelMeta | Mapping[str, Any],
                          checkpoint_path: str | PathLike | None = None,
                          cancel: CancelToken | None = None) -> ProgressGenerator[TrainedModel]:
    """Fit the ``subspot`` model on ``adata``'s measured footprints (``train_ids`` only, if given).

    Parameters
    ----------
    adata
        A spot AnnData with an image (:func:`napari_histosge.io.read_spots`). Its footprints
        are the spots' discs, or the squares ``uns["histosge"]["footprint"]`` describes.
    train_ids
        The footprints to fit on; all when ``None``.
    config
        ``cell_um``, ``prior_bandwidth``, ``n_top_genes``/``genes`` are read.
    meta
        What the caller keeps about the section (stored with the model).
    checkpoint_path
        Where the fitted model is saved (atomically).
    cancel
        Checked between blocks of cells.
    """
    path, scale = require_spot_image(adata)
    info = adata.uns.get("histosge", {})
    cell_px = cell_px_for(config.cell_um, info.get("mpp"), scale, info.get("spot_diameter_px"))
    histology = _histology_prior(config, adata, _cell_um(cell_px, info.get("mpp")))  # checked before any work
    train = adata if train_ids is None else adata[list(train_ids)]
    if train.n_obs < 3:
        raise InputError(f"the sub-spot model needs at least 3 measured spots to fit, got {train.n_obs}",
                         info.get("source"))
    yield Progress("prepare", 0, 1, "normalising and selecting genes")
    log_train = normalize_log1p(train)
    genes = select_genes(log_train, n_top=config.n_top_genes, genes=config.genes,
                         method=config.gene_selection, include=config.include_genes, markers=config.markers)
    targets = dense_targets(log_train, genes).astype(np.float64)
    footprints = footprints_of(train)
    yield Progress("prepare", 1, 1, f"{len(genes)} genes, {train.n_obs} measured footprints")
    grid, weights = footprint_cells(footprints, cell_px)
    if config.image_modulation or histology is not None:
        feats = yield from cell_features(path, scale, grid, cancel=cancel)
    else:  # the image is not used: no slide read at all
        feats = np.zeros((grid.n_cells, n_cell_features()), np.float32)
    yield Progress("fit", 0, 1, f"image modulation over {grid.n_cells:,} cells")
    mean, std = feats.mean(axis=0), feats.std(axis=0)
    std[std < 1e-8] = 1.0
    z = (feats - mean) / std
    rates = np.expm1(targets)
    spacing = median_spacing(footprints.centres, undefined=footprints.size_px)
    calibration = None
    if config.image_modulation:
        yield Progress("fit", 0, 1, "calibrating the image modulation one scale up")
        calibration = calibrate(grid.centres(), z, weights, targets, footprints.centres,
                                lambda x, y: ridge_fit(x, y)[0], config.prior_bandwidth, split_targets(train, genes))
    bandwidth = (calibration.bandwidth if calibration else config.prior_bandwidth) * spacing
    prior = prior_rates(grid.centres(), footprints.centres, rates, bandwidth)
    residual = targets - np.log1p(weights @ prior)
    share = 0.0 if not config.image_modulation else (calibration.share if calibration else 1.0)
    if share > 0:
        coef, alphas = ridge_fit(weights @ z, residual)
    else:
        coef, alphas = np.zeros((len(genes), z.shape[1])), np.full(len(genes), np.inf)
    coef = share * coef
    pattern = None
    if histology is not None:
        yield Progress("fit", 0, 1, "weighing the histology prior's pattern per gene on the footprints")
        pattern = prior_pattern(histology, genes, z, weights, train.X, train.var_names.get_indexer(genes),
                                footprints.centres)
        coef, share = pattern.coef, float(pattern.weight.max())
        if pattern.shared == 0:
            warnings.warn(NO_SHARED_GENE, UserWarning, stacklevel=2)
    # The histology prior's map predicts a cell against the whole section: only its deviation from
    # the footprints' own level (smoothed like the prior) is added to the smoothed measurement.
    level = None if pattern is None else np.asarray(weights @ (z @ coef.T))
    kwargs: dict[str, Any] = {"n_footprints": len(footprints)}
    if level is not None:
        kwargs["relative_modulation"] = True
    network = SubspotNetwork(in_dim=z.shape[1], n_genes=len(genes), **kwargs)
    depth = total_counts(train)
    dispersion = _dispersion(footprints.centres, rates, depth, bandwidth, np.asarray(weights @ (z @ coef.T)), level)
    _fill(network, mean, std, coef, footprints.centres, rates,
          np.ones(len(genes)) if calibration is None else calibration.detail, depth, dispersion)
    if level is not None:
        _fill_level(network, level)
    trained = SubspotModel(network, config, genes, replace(
        SubspotMeta.of(meta), in_dim=int(z.shape[1]), n_features=int(z.shape[1]), model_kwargs=kwargs,
        cell_px=float(cell_px), cell_um=_cell_um(cell_px, info.get("mpp")), footprint=footprints.to_dict(),
        prior_bandwidth_px=float(bandwidth), feature_identity=IDENTITY, n_train_spots=int(train.n_obs),
        footprint_ids=[str(i) for i in train.obs_names], ridge_alpha_median=float(np.median(alphas)),
        modulation_share=float(share), history=[], epochs_done=0,
        calibration=None if calibration is None else calibration.to_meta(),
        histology_prior=None if pattern is None else pattern.to_meta(str(config.prior))))
    if checkpoint_path is not None:
        trained.save(checkpoint_path)
    yield Progress("fit", 1, 1, f"image modulation share {share:g}")
    return trained


def _histology_prior(config: SubspotConfig, adata, cell_um: float | None):
    """The ``prior`` model, checked against the section (:mod:`.histology_prior`), or ``None``."""
    if config.prior is None:
        return None
    if config.image_modulation:
        raise InputError("the histology prior replaces the image modulation fitted on the section: give --prior "
                         "or --image-modulation, not both")
    integer_counts(adata.X)  # the prior's weights are chosen by splitting the counts
    return load_prior(config.prior, adata, cell_um, adata.var_names)


def ridge_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (G, D), alpha per gene)`` of ridge regressions of ``y``'s columns on ``x``."""
    from sklearn.linear_model import RidgeCV

    if len(x) < 3:
        return np.zeros((y.shape[1], x.shape[1])), np.full(y.shape[1], np.inf)
    model = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit(x, y)
    return np.asarray(model.coef_, np.float64).reshape(y.shape[1], x.shape[1]), np.atleast_1d(model.alpha_)


def _fill(network: SubspotNetwork, mean, std, coef, footprint_xy, footprint_rate, detail, depth, dispersion,
          ) -> None:
    import torch

    with torch.no_grad():
        network.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        network.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        network.coef.copy_(torch.as_tensor(coef, dtype=torch.float32))
        network.footprint_xy.copy_(torch.as_tensor(footprint_xy, dtype=torch.float64))
        network.footprint_rate.copy_(torch.as_tensor(footprint_rate, dtype=torch.float32))
        network.detail.copy_(torch.as_tensor(detail, dtype=torch.float32))
        network.footprint_depth.copy_(torch.as_tensor(depth, dtype=torch.float64))
        network.dispersion.copy_(torch.as_tensor(dispersion, dtype=torch.float32))


def _dispersion(centres: np.ndarray, rates: np.ndarray, depth: np.ndarray, bandwidth: float,
                modulation: np.ndarray, level: np.ndarray | None) -> np.ndarray:
    """Each measurement's scatter around what its neighbours and its image say, per gene (``(G,)`` alpha)."""
    alone = prior_weights(centres, centres, bandwidth, exclude=np.arange(len(centres)))
    if level is not None:  # relative to the neighbours' level, as at a cell
        modulation = modulation - np.asarray(alone @ level)
    return fit_dispersion(smoothed_rates(alone, rates) * np.exp(np.clip(modulation, -20, 20)), rates, depth)


def _fill_level(network: SubspotNetwork, level: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        network.footprint_modulation.copy_(torch.as_tensor(level, dtype=torch.float32))


def _cell_um(cell_px: float, mpp) -> float | None:
    return None if mpp is None else float(cell_px * float(mpp))


#: The ``subspot`` model.
SPEC = register_model(ModelSpec(
    name=SPEC_NAME, network=SubspotNetwork, trainer=None, trained_class=SubspotModel,
    hparam_keys=(), section_trainer=train_subspot_section,
))
