"""The end-to-end steps the CLI and the plugin both call: fit, predict, super-resolve.

Training on several sections lives in :mod:`.multisection` and the hold-out protocol
(``recover``) in :mod:`.recovery`; both build on these steps; where predicted positions sit
for a model (the box that scales them, the patch around each) is in :mod:`.placement`.
Each step is a progress generator (see :mod:`napari_histosge.progress`): it yields
``Progress`` events and returns its result, so the CLI shows a terminal bar and the
plugin runs the very same code in a ``thread_worker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..features import FeatureConfig, SpotFeatures, extract_features_at
from ..io import require_spot_image
from ..io.preprocess import dense_targets, normalize_log1p, total_counts
from ..models import HisToSGEConfig, model_spec, train
from ..prediction.distributed import predict_distributed
from ..prediction.grid import superresolution_positions
from ..prediction.lattice import check_positions
from ..prediction.pieces import predict_in_pieces
from ..progress import CancelToken, Progress, ProgressGenerator
from ..training.config import TrainConfig
from ..training.inputs import TrainingData
from ..training.products import register_spots, spots_runner
from ..training.trained_model import TrainedModel
from .gene_choice import choose_genes
from .grid_maps import lattice_tissue
from .multisection import fit_sections
from .placement import (
    check_diameter_on,
    check_measured_genes,
    default_diameter,
    feature_config_of,
    finish_prediction,
    frame_name,
    patch_geometry,
    position_frame,
)
from .products import superresolve as superresolve  # re-exported: the one entry, beside the other steps
from .run_settings import check_feature_rows, limited_ids, limited_sections, run_settings, starting_settings
from .section_features import (  # re-exported: callers find every step here
    LOW_RESOLUTION_PX,
    NO_IMAGE,
    distributed_features,
    image_pixels_per_spot,
    model_meta,
    no_image_features,
    spot_features,
    warn_if_low_resolution,
)

__all__ = ["LOW_RESOLUTION_PX", "NO_IMAGE", "features_at", "fit", "image_pixels_per_spot", "model_meta",
           "predict_spots", "spot_features", "superresolve", "warn_if_low_resolution"]

def _subset_ids(adata, ids: Sequence[str] | None):
    if ids is None:
        return adata
    missing = [i for i in ids if i not in adata.obs_names]
    if missing:
        raise InputError(f"{len(missing)} spot ids are not in the data, e.g. {missing[:3]}")
    return adata[list(ids)]


def fit(
    adata,
    *,
    train_config: TrainConfig | None = None,
    feature_config: FeatureConfig | None = None,
    train_ids: Sequence[str] | None = None,
    features: SpotFeatures | Sequence[SpotFeatures] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: str | Path | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
    init: TrainedModel | None = None,
) -> ProgressGenerator[TrainedModel]:
    """Extract features, normalise, pick genes and train a model on ``adata``.

    Parameters
    ----------
    adata
        Spot AnnData from :func:`napari_histosge.io.read_spots` (raw counts), or a sequence
        of them: one model trained on all their spots. Each section gets its own image
        features and normalisation; genes are chosen on all spots together among the genes
        every section has; each section's positions are scaled by its own box (see
        :func:`napari_histosge.training.inputs.section_frame`); spot ids that repeat across sections
        are prefixed ``"<library id>:"``.
    train_config, feature_config
        Model/training and feature settings; defaults are the paper's (and, with ``init``,
        its network settings: :func:`.run_settings.run_settings`). A section with more spots
        than ``train_config.max_bins`` (or more ``train_ids``) trains on a seeded subset of them.
    train_ids
        Train on these spots only (the rest are held out); all spots when ``None``.
        One section only.
    features
        Precomputed features for *all* spots of ``adata`` (skips extraction); one per
        section for several sections.
    checkpoint_path
        Where to save the checkpoint (atomically, every epoch and at the end).
    resume
        A checkpoint to continue from.
    scheduler, n_workers
        Where features are extracted, as in :func:`spot_features`.
    cancel
        Token checked between batches.
    init
        A trained model to start from (e.g. one trained on other sections): the run
        fine-tunes it on ``adata`` (one section), predicting its genes from the image
        features its extractor gives (``feature_config`` must then be ``None`` or the same).

    Returns
    -------
    TrainedModel
        The trained model, its config, genes and metadata.
    """
    if train_config is None:
        train_config = run_settings(HisToSGEConfig.MODEL if init is None else init.config.model, {}, init)
    elif init is not None:
        train_config = starting_settings(train_config, init)
    if init is not None:
        train_config, feature_config = _starting_from(init, adata, train_config, feature_config)
    uncut = adata  # the section's record (its box) is of every spot: predictions on it are placed alike
    if train_ids is None:
        adata, features = limited_sections(adata, features, train_config)
    else:
        train_ids = limited_ids(train_ids, train_config)
    feature_config = feature_config or FeatureConfig()
    spec = model_spec(train_config.model)
    section_trainer = spec.section_trainer
    if section_trainer is not None:  # a model that reads the slide itself (no per-spot features)
        if isinstance(adata, (list, tuple)) and spec.trains_on_sections and len(adata) > 1:
            if train_ids is not None:
                raise InputError(f"train_ids (a hold-out split) works with one section; got {len(adata)} sections")
            return (yield from section_trainer(list(adata), train_ids=None, config=train_config,
                                               meta=model_meta(uncut[0], feature_config),
                                               checkpoint_path=checkpoint_path, cancel=cancel))
        if isinstance(adata, (list, tuple)):
            if len(adata) != 1:
                raise InputError(f"the {train_config.model} model trains on one section; got {len(adata)}")
            adata, uncut = adata[0], uncut[0]
        # A closed-form fit has no epochs to resume: it is simply fitted again.
        return (yield from section_trainer(adata, train_ids=train_ids, config=train_config,
                                           meta=model_meta(uncut, feature_config), checkpoint_path=checkpoint_path,
                                           cancel=cancel))
    if isinstance(adata, (list, tuple)):
        if not adata:
            raise InputError("no sections to train on")
        if len(adata) > 1:
            if train_ids is not None:
                raise InputError("train_ids (a hold-out split) works with one section; "
                                 f"got {len(adata)} sections")
            return (yield from fit_sections(
                adata, train_config=train_config, feature_config=feature_config, features=features,
                checkpoint_path=checkpoint_path, resume=resume, scheduler=scheduler, n_workers=n_workers,
                cancel=cancel, uncut=list(uncut)))
        adata, uncut = adata[0], uncut[0]
        if isinstance(features, (list, tuple)):
            features = features[0]
    if features is None:
        features = yield from spot_features(
            adata, feature_config, scheduler=scheduler, n_workers=n_workers, cancel=cancel
        )
    assert isinstance(features, SpotFeatures)  # one section here: several returned above
    check_feature_rows(adata, features)  # also with train_ids, where no bin limit read them
    yield Progress("prepare", 0, 1, "normalising and selecting genes")
    train_adata = _subset_ids(adata, train_ids)
    mask = adata.obs_names.get_indexer(train_adata.obs_names)
    log_train = normalize_log1p(train_adata)
    genes = choose_genes(log_train, train_config)
    data = TrainingData(
        features=features.features[mask],
        mean_rgb=features.mean_rgb[mask],
        positions=np.asarray(train_adata.obsm["spatial"], dtype=np.float64),
        targets=dense_targets(log_train, genes),
        spot_ids=list(train_adata.obs_names),
        genes=genes,
        total_counts=total_counts(train_adata),
    )
    yield Progress("prepare", 1, 1, f"{len(genes)} genes, {train_adata.n_obs} training spots")
    meta = model_meta(uncut, feature_config)
    meta.feature_identity = features.identity
    return (yield from train(data, train_config, checkpoint_path=checkpoint_path, resume=resume, meta=meta,
                             cancel=cancel, init=init))


def _starting_from(init: TrainedModel, adata, train_config: TrainConfig, feature_config: FeatureConfig | None,
                   ) -> tuple[TrainConfig, FeatureConfig]:
    """The settings of a run that starts from ``init``: its genes and feature extractor, checked on ``adata``."""
    if not model_spec(train_config.model).takes_init:
        raise InputError(f"the {train_config.model} model cannot start from a trained model (--init)", init.path)
    if isinstance(adata, (list, tuple)):
        if len(adata) != 1:
            raise InputError(f"a run that starts from a trained model fine-tunes it on one section; got {len(adata)}",
                             init.path)
        adata = adata[0]
    present = set(map(str, adata.var_names))
    missing = [g for g in init.genes if g not in present]
    if missing:
        raise InputError(f"{len(missing)} of the model's {len(init.genes)} genes are not in the data "
                         f"(e.g. {', '.join(missing[:3])})", init.path)
    if train_config.genes is not None and list(train_config.genes) != list(init.genes):
        raise InputError("a run that starts from a trained model predicts its genes: leave the gene list out",
                         init.path)
    extra = [g for g in train_config.include_genes or [] if g not in set(init.genes)]
    if extra:
        raise InputError(f"the model to start from does not predict {', '.join(extra[:3])}"
                         f"{' and more' if len(extra) > 3 else ''}; a run that starts from it predicts its genes",
                         init.path)
    own = feature_config_of(init)
    if feature_config is not None and feature_config.extractor != own.extractor:
        raise InputError(f"the model to start from reads {own.extractor!r} features, not "
                         f"{feature_config.extractor!r}: leave the extractor at the model's", init.path)
    if feature_config is not None and feature_config.stain != own.stain:
        raise InputError(f"the model to start from was trained with stain normalisation {own.stain!r}, not "
                         f"{feature_config.stain!r}: leave it at the model's", init.path)
    return replace(train_config, genes=list(init.genes), include_genes=None), feature_config or own


def _check_same_extractor(model: TrainedModel, features: SpotFeatures) -> None:
    expected = model.meta.feature_identity
    if expected is not None and features.identity != expected:
        raise InputError(
            f"the features were made by {features.identity!r} but the model was trained on {expected!r}"
        )


def features_at(
    model: TrainedModel,
    adata,
    positions: np.ndarray,
    *,
    diameter: float | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Features at arbitrary full-res ``positions`` on ``adata``'s image, as the model was trained.

    ``diameter`` is the disc (full-res px) each position stands for; the patch follows it
    as training followed the spot diameter (:func:`.placement.patch_geometry`; default:
    the training spot). ``scheduler`` and ``n_workers`` are as in :func:`spot_features`.
    """
    config = feature_config_of(model)
    if config.extractor == NO_IMAGE:
        return no_image_features(len(positions))
    path, scale = require_spot_image(adata)
    centers = np.asarray(positions, np.float64)
    patch_px, fraction = patch_geometry(model, adata, diameter)
    mpp = adata.uns.get("histosge", {}).get("mpp")
    if scheduler is None:
        feats = yield from extract_features_at(
            path, scale, centers, patch_px, config, center_fraction=fraction, cancel=cancel, mpp=mpp
        )
    else:
        feats = yield from distributed_features(path, scale, centers, patch_px, config, fraction, scheduler,
                                                n_workers, cancel, mpp=mpp)
    _check_same_extractor(model, feats)
    return feats


def predict_spots(
    model: TrainedModel,
    adata,
    *,
    spot_ids: Sequence[str] | None = None,
    positions: np.ndarray | None = None,
    position_ids: Sequence[str] | None = None,
    diameter: float | None = None,
    features: SpotFeatures | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[Any]:
    """Predict log-normalised expression at ``adata``'s measured spots, or at given positions.

    Works on the section the model was trained on and on any other (positions are then
    scaled by that section's own box, see :mod:`.placement`).

    Parameters
    ----------
    spot_ids
        Predict at these measured spots only (all when ``None``).
    positions
        ``(n, 2)`` full-res ``(x, y)`` on ``adata``'s image to predict at instead of its spots.
    position_ids
        Names of ``positions`` (``obs_names``, in order; default ``"0"``, ``"1"``, ...).
    diameter
        The disc (full-res px) each prediction stands for; the patch read follows it as in
        training. Default: the training spot diameter (:func:`.placement.default_diameter`).
    features
        Precomputed features of all of ``adata``'s spots at the training geometry
        (measured spots and the default diameter only).
    scheduler, n_workers, cancel
        As in :func:`spot_features`; prediction runs on dask.distributed too.

    Returns
    -------
    AnnData
        obs_names the spot ids (or ``position_ids``), var_names the model's genes, X the
        predictions on the log1p(normalize_total to 1e4) scale, ``obsm["spatial"]`` the
        positions, ``uns["histosge"]`` the section, the model and how positions were placed.
    """
    import anndata as ad

    predict = spots_runner(model)  # how the model says it predicts spots (TrainedModel.spots_from)
    names, xy = _prediction_targets(adata, spot_ids, positions, position_ids)
    check_diameter_on(adata, diameter)
    check_measured_genes(model, adata)
    frame = position_frame(model, adata)  # checked before any feature is read
    pred, std = yield from predict(model, adata, names, xy, positions, diameter, features, frame,
                                   scheduler=scheduler, n_workers=n_workers, cancel=cancel)
    out = ad.AnnData(X=pred.astype(np.float32), obs=pd.DataFrame(index=pd.Index(names, dtype=str)),
                     var=_gene_table(model))
    out.obsm["spatial"] = xy
    out.uns["histosge"] = _prediction_uns(adata, model, fold=1)
    out.uns["histosge"].update(_placement_uns(model, adata, frame, diameter))
    out.uns["histosge"]["positions"] = "measured spots" if positions is None else "given"
    if std is not None:
        out.layers["std"] = std
    return finish_prediction(out, model)


def spots_from_features(model: TrainedModel, adata, names: list[str], xy: np.ndarray, positions, diameter,
                        features: SpotFeatures | None, frame, *, scheduler, n_workers, cancel):
    """Spots of a per-spot-feature model (``spots_from="features"``) at ``xy``: predictions and spread."""
    if features is None:
        features = yield from features_at(model, adata, xy, diameter=diameter, scheduler=scheduler,
                                          n_workers=n_workers, cancel=cancel)
    else:
        if positions is not None or diameter is not None:
            raise InputError("precomputed features hold the measured spots at the training patch; "
                             "they cannot serve other positions or another diameter")
        _check_same_extractor(model, features)
        rows = adata.obs_names.get_indexer(names)
        features = SpotFeatures(features.features[rows], features.mean_rgb[rows], features.identity)
    return (yield from _predict_with_spread(model, features, xy, frame, scheduler=scheduler,
                                            n_workers=n_workers, cancel=cancel))


register_spots("features", spots_from_features)


def _prediction_targets(adata, spot_ids, positions, position_ids) -> tuple[list[str], np.ndarray]:
    """Names and ``(n, 2)`` positions to predict at: measured spots, or the given positions."""
    if positions is None:
        if position_ids is not None:
            raise InputError("position_ids name given positions; pass positions too")
        subset = _subset_ids(adata, spot_ids)
        return list(subset.obs_names.astype(str)), np.asarray(subset.obsm["spatial"], np.float64)
    if spot_ids is not None:
        raise InputError("give either spot_ids (measured spots) or positions, not both")
    xy = check_positions(positions, "positions to predict at")
    if len(xy) == 0:
        raise InputError("no positions to predict at")
    names = [str(i) for i in range(len(xy))] if position_ids is None else [str(i) for i in position_ids]
    if len(names) != len(xy) or len(set(names)) != len(names):
        raise InputError(f"position_ids must be {len(xy)} unique names, one per position; got {len(names)} "
                         f"with {len(set(names))} distinct")
    return names, xy


def _placement_uns(model: TrainedModel, adata, frame, diameter: float | None) -> dict[str, Any]:
    """``uns`` entries saying where the model came from and how its inputs were placed."""
    entries: dict[str, Any] = {"position_frame": frame_name(frame), "trained_on": str(model.meta.source)}
    # No diameter is known only where no patch needed one (image features off): then none is written.
    used = default_diameter(model, adata, required=False) if diameter is None else float(diameter)
    if used is not None:
        entries["spot_diameter_px"] = float(used)
    return entries


def _gene_table(model: TrainedModel) -> pd.DataFrame:
    """``var`` of a prediction: the model's genes, and for a conditioned model each gene's kriging estimator."""
    var = pd.DataFrame(index=pd.Index(model.genes))
    estimators = model.gene_estimators()
    if estimators is not None:
        var["estimator"] = pd.Categorical(estimators)
    return var


def _predict_with_spread(model: TrainedModel, feats: SpotFeatures, positions: np.ndarray, frame=None, *,
                         scheduler: str | None = None, n_workers: int | None = None,
                         cancel: CancelToken | None = None):
    """Predictions, plus the per-spot per-gene spread over samples where the model can sample.

    In pieces in this process (progress, cancel between pieces), or on dask.distributed
    when ``scheduler`` is given; the numbers are the same either way.
    """
    if scheduler is None:
        return (yield from predict_in_pieces(model, feats.features, feats.mean_rgb, positions, frame=frame,
                                             cancel=cancel))
    return (yield from predict_distributed(
        model, feats.features, feats.mean_rgb, positions, frame=frame,
        scheduler=None if scheduler == "local" else scheduler, n_workers=n_workers, cancel=cancel,
    ))


def _prediction_uns(adata, model: TrainedModel, *, fold: int) -> dict[str, Any]:
    info = dict(adata.uns.get("histosge", {}))
    info["units"] = "log1p(counts per 1e4)"
    info["model"] = model.config.model
    info["fold"] = int(fold)
    diameter = info.get("spot_diameter_px")
    if diameter is not None and fold > 1:
        # N-fold denser spots cover 1/N of the area each.
        info["spot_diameter_px"] = float(diameter) / float(np.sqrt(fold))
    return info


def superresolve_lattice(
    model: TrainedModel,
    adata,
    fold: int = 4,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[Any]:
    """Predict expression at ``fold`` times as many positions as ``adata`` has spots: the ``lattice`` product.

    :func:`superresolve` asks a model for it (``superresolve(model, adata, 4)``).

    Returns
    -------
    AnnData
        One row per new position (``obsm["spatial"]`` in full-res px, ``obs["parent"]`` the
        measured spot whose lattice cell holds it), X the predicted log-normalised expression.
    """
    import anndata as ad

    check_measured_genes(model, adata)
    frame = position_frame(model, adata)  # checked before any feature is read
    yield Progress("lattice", 0, 1, f"{fold}-fold positions")
    # anchor on the fitted lattice so the new positions form one regular grid
    grid = superresolution_positions(adata, fold, anchor="lattice")
    yield Progress("lattice", 1, 1, f"{len(grid.positions)} positions")
    feats = yield from features_at(model, adata, grid.positions, scheduler=scheduler, n_workers=n_workers,
                                   cancel=cancel)
    pred, std = yield from _predict_with_spread(model, feats, grid.positions, frame,
                                                scheduler=scheduler, n_workers=n_workers, cancel=cancel)
    parents = np.asarray(adata.obs_names)[grid.parent]
    names = [f"{p}#{i}" for p, i in zip(parents, _rank_within(grid.parent), strict=True)]
    out = ad.AnnData(
        X=pred.astype(np.float32),
        obs=pd.DataFrame({"parent": pd.Categorical(parents)}, index=pd.Index(names)),
        var=_gene_table(model),
    )
    out.obsm["spatial"] = grid.positions.astype(np.float64)
    out.uns["histosge"] = _prediction_uns(adata, model, fold=fold)
    out.uns["histosge"]["fine_lattice"] = grid.lattice.to_dict()
    out.uns["histosge"]["position_frame"] = frame_name(frame)
    out.uns["histosge"]["trained_on"] = str(model.meta.source)
    tissue = lattice_tissue(adata)
    if tissue is not None:  # the map is drawn on tissue only (export.raster.lattice_raster)
        out.uns["histosge"]["tissue_mask"] = tissue.to_uns()
    if std is not None:
        out.layers["std"] = std
    return finish_prediction(out, model)


def lattice_product(model: TrainedModel, adata, options, *, scheduler: str | None = None,
                    n_workers: int | None = None, cancel: CancelToken | None = None) -> ProgressGenerator[Any]:
    """The ``lattice`` product (:mod:`.products`): :func:`superresolve_lattice` with its checked ``options``."""
    return (yield from superresolve_lattice(model, adata, options.fold, scheduler=scheduler, n_workers=n_workers,
                                            cancel=cancel))


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group label, in order of appearance."""
    order = np.argsort(groups, kind="stable")
    ranks = np.empty(len(groups), dtype=np.int64)
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    run = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    ranks[order] = run
    return ranks
