"""The end-to-end steps the CLI and the plugin both call: fit, predict, super-resolve.

Training on several sections lives in :mod:`.multisection` and the hold-out protocol
(``recover``) in :mod:`.recovery`; both build on these steps. Each step is a progress generator (see :mod:`napari_histosge.progress`): it yields
``Progress`` events and returns its result, so the CLI shows a terminal bar and the
plugin runs the very same code in a ``thread_worker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .features import (
    FeatureConfig,
    SpotFeatures,
    extract_features_at,
    extract_spot_features,
    patch_size_px,
    spot_center_fraction,
)
from .io import require_spot_image, spot_image
from .preprocess import TARGET_SUM, dense_targets, normalize_log1p, select_genes, total_counts
from .progress import CancelToken, Progress, ProgressGenerator
from .training import TrainConfig, TrainedModel, TrainingData, section_frame, train

#: ``FeatureConfig.extractor`` value that switches image features off (the ablation).
NO_IMAGE = "none"


def spot_features(
    adata,
    config: FeatureConfig,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Image features for ``adata``'s own spots, or empty ones when image features are off.

    Parameters
    ----------
    scheduler
        ``None`` extracts in this process; ``"local"`` starts a dask LocalCluster; any other
        value is a dask.distributed scheduler address (e.g. ``tcp://host:8786``). Results are
        identical either way.
    n_workers
        Workers of the LocalCluster (``scheduler="local"`` only).
    """
    if config.extractor == NO_IMAGE:
        return _no_image_features(adata.n_obs)
    warn_if_low_resolution(adata)
    if scheduler is None:
        return (yield from extract_spot_features(adata, config, cancel=cancel))
    path, scale = require_spot_image(adata)
    return (yield from _distributed(
        path, scale, np.asarray(adata.obsm["spatial"], np.float64), patch_size_px(adata, config), config,
        spot_center_fraction(adata, config), scheduler, n_workers, cancel,
    ))


#: Fewer image pixels than this across a spot: the image shows colour, hardly any morphology.
LOW_RESOLUTION_PX = 16


def image_pixels_per_spot(adata) -> float | None:
    """Image pixels across one spot in the image features are cut from (``None`` if unknown)."""
    image = spot_image(adata)
    diameter = adata.uns.get("histosge", {}).get("spot_diameter_px")
    if image is None or not diameter:
        return None
    return float(diameter) * image[1]


def warn_if_low_resolution(adata) -> None:
    """Warn when the only image is too coarse for image features to say much (e.g. a Visium low-res PNG)."""
    import warnings

    px = image_pixels_per_spot(adata)
    if px is not None and px < LOW_RESOLUTION_PX:
        source = adata.uns.get("histosge", {}).get("source", "the data")
        warnings.warn(
            f"{source}: the image has only {px:.0f} px across a spot, so image features carry little "
            "beyond colour; attach the full-resolution H&E (--image) or compare with --extractor none "
            "(docs/benchmarks.md: on DLPFC's low-res image they raised the most expressed genes' "
            "held-out accuracy but slightly lowered the variable genes')",
            UserWarning, stacklevel=3,
        )


def _distributed(path, scale, centers, patch_px, config, center_fraction, scheduler, n_workers, cancel):
    from .distributed import extract_features_distributed

    return (yield from extract_features_distributed(
        path, scale, centers, patch_px, config, scheduler=None if scheduler == "local" else scheduler,
        n_workers=n_workers, center_fraction=center_fraction, cancel=cancel,
    ))


def _no_image_features(n: int) -> SpotFeatures:
    # Zero-width features and a constant colour: the model sees positions only.
    return SpotFeatures(
        features=np.zeros((n, 0), np.float32), mean_rgb=np.zeros((n, 3), np.float32), identity=NO_IMAGE
    )


def _model_meta(adata, feature_config: FeatureConfig) -> dict[str, Any]:
    info = adata.uns.get("histosge", {})
    return {
        "features": feature_config.to_dict(),
        "patch_size_px": patch_size_px(adata, feature_config),
        "center_fraction": spot_center_fraction(adata, feature_config),
        "normalisation": {"target_sum": TARGET_SUM, "log1p": True},
        "spot_diameter_px": float(info.get("spot_diameter_px", np.nan)),
        "mpp": info.get("mpp"),
        "platform": info.get("platform", "unknown"),
        "lattice": info.get("lattice"),
        "source": str(info.get("source", "")),
    }


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
) -> ProgressGenerator[TrainedModel]:
    """Extract features, normalise, pick genes and train a model on ``adata``.

    Parameters
    ----------
    adata
        Spot AnnData from :func:`napari_histosge.io.read_spots` (raw counts), or a sequence
        of them: one model trained on all their spots. Each section gets its own image
        features and normalisation; genes are chosen on all spots together among the genes
        every section has; each section's positions are scaled by its own box (see
        :func:`napari_histosge.training.section_frame`); spot ids that repeat across sections
        are prefixed ``"<library id>:"``.
    train_config, feature_config
        Model/training and feature settings; defaults are the paper's.
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

    Returns
    -------
    TrainedModel
        The trained model, its config, genes and metadata.
    """
    train_config = train_config or TrainConfig()
    feature_config = feature_config or FeatureConfig()
    if isinstance(adata, (list, tuple)):
        if not adata:
            raise InputError("no sections to train on")
        if len(adata) > 1:
            if train_ids is not None:
                raise InputError("train_ids (a hold-out split) works with one section; "
                                 f"got {len(adata)} sections")
            from .multisection import fit_sections  # it builds on this module

            return (yield from fit_sections(
                adata, train_config=train_config, feature_config=feature_config, features=features,
                checkpoint_path=checkpoint_path, resume=resume, scheduler=scheduler, n_workers=n_workers,
                cancel=cancel))
        adata = adata[0]
        if isinstance(features, (list, tuple)):
            features = features[0]
    if features is None:
        features = yield from spot_features(
            adata, feature_config, scheduler=scheduler, n_workers=n_workers, cancel=cancel
        )
    yield Progress("prepare", 0, 1, "normalising and selecting genes")
    train_adata = _subset_ids(adata, train_ids)
    mask = adata.obs_names.get_indexer(train_adata.obs_names)
    log_train = normalize_log1p(train_adata)
    genes = select_genes(log_train, n_top=train_config.n_top_genes, genes=train_config.genes)
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
    meta = _model_meta(adata, feature_config)
    meta["feature_identity"] = features.identity
    return (yield from train(data, train_config, checkpoint_path=checkpoint_path, resume=resume, meta=meta, cancel=cancel))


def _feature_config_of(model: TrainedModel) -> FeatureConfig:
    return FeatureConfig.from_dict(model.meta["features"])


def _check_same_extractor(model: TrainedModel, features: SpotFeatures) -> None:
    expected = model.meta.get("feature_identity")
    if expected is not None and features.identity != expected:
        raise InputError(
            f"the features were made by {features.identity!r} but the model was trained on {expected!r}"
        )


def features_at(
    model: TrainedModel,
    adata,
    positions: np.ndarray,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """Features at arbitrary full-res ``positions`` on ``adata``'s image, as the model was trained.

    ``scheduler`` and ``n_workers`` are as in :func:`spot_features`.
    """
    config = _feature_config_of(model)
    if config.extractor == NO_IMAGE:
        return _no_image_features(len(positions))
    path, scale = require_spot_image(adata)
    centers = np.asarray(positions, np.float64)
    if model.per_section:
        # Sections differ in pixel size: patches cover the same tissue as in training.
        patch_px, fraction = patch_size_px(adata, config), spot_center_fraction(adata, config)
    else:
        patch_px, fraction = model.meta["patch_size_px"], model.meta["center_fraction"]
    if scheduler is None:
        feats = yield from extract_features_at(
            path, scale, centers, patch_px, config, center_fraction=fraction, cancel=cancel
        )
    else:
        feats = yield from _distributed(path, scale, centers, patch_px, config, fraction, scheduler, n_workers, cancel)
    _check_same_extractor(model, feats)
    return feats


def predict_spots(
    model: TrainedModel,
    adata,
    *,
    spot_ids: Sequence[str] | None = None,
    features: SpotFeatures | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[Any]:
    """Predict log-normalised expression at ``adata``'s measured spots.

    ``scheduler`` and ``n_workers`` (features and prediction on dask.distributed) are as
    in :func:`spot_features`.

    Returns
    -------
    AnnData
        obs_names the spot ids, var_names the model's genes, X the predictions on the
        log1p(normalize_total to 1e4) scale, ``obsm["spatial"]`` the positions.
    """
    import anndata as ad

    subset = _subset_ids(adata, spot_ids)
    if features is None:
        features = yield from features_at(model, adata, subset.obsm["spatial"], scheduler=scheduler,
                                          n_workers=n_workers, cancel=cancel)
    else:
        _check_same_extractor(model, features)
        rows = adata.obs_names.get_indexer(subset.obs_names)
        features = SpotFeatures(features.features[rows], features.mean_rgb[rows], features.identity)
    pred, std = yield from _predict_with_spread(
        model, features, np.asarray(subset.obsm["spatial"], np.float64), _frame_for(model, adata),
        scheduler=scheduler, n_workers=n_workers, cancel=cancel)
    out = ad.AnnData(
        X=pred.astype(np.float32),
        obs=pd.DataFrame(index=pd.Index(subset.obs_names.astype(str), name=None)),
        var=_gene_table(model),
    )
    out.obsm["spatial"] = np.asarray(subset.obsm["spatial"], np.float64)
    out.uns["histosge"] = _prediction_uns(adata, model, fold=1)
    if std is not None:
        out.layers["std"] = std
    return out


def _gene_table(model: TrainedModel) -> pd.DataFrame:
    """``var`` of a prediction: the model's genes, and for a conditioned model each gene's kriging estimator."""
    var = pd.DataFrame(index=pd.Index(model.genes))
    estimators = model.gene_estimators()
    if estimators is not None:
        var["estimator"] = pd.Categorical(estimators)
    return var


def _frame_for(model: TrainedModel, adata) -> tuple[np.ndarray, np.ndarray] | None:
    """The frame of ``adata`` (all its spots) for a several-section model; ``None`` otherwise."""
    return section_frame(adata.obsm["spatial"]) if getattr(model, "per_section", False) else None


def _predict_with_spread(model: TrainedModel, feats: SpotFeatures, positions: np.ndarray, frame=None, *,
                         scheduler: str | None = None, n_workers: int | None = None,
                         cancel: CancelToken | None = None):
    """Predictions, plus the per-spot per-gene spread over samples where the model can sample.

    In pieces in this process (progress, cancel between pieces), or on dask.distributed
    when ``scheduler`` is given; the numbers are the same either way.
    """
    if scheduler is None:
        from .prediction import predict_in_pieces

        return (yield from predict_in_pieces(model, feats.features, feats.mean_rgb, positions, frame=frame,
                                             cancel=cancel))
    from .distributed import predict_distributed

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


def superresolve(
    model: TrainedModel,
    adata,
    fold: int,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[Any]:
    """Predict expression at ``fold`` times as many positions as ``adata`` has spots.

    Returns
    -------
    AnnData
        One row per new position (``obsm["spatial"]`` in full-res px, ``obs["parent"]`` the
        measured spot whose lattice cell holds it), X the predicted log-normalised expression.
    """
    import anndata as ad

    from .superres_grid import superresolution_positions

    yield Progress("lattice", 0, 1, f"{fold}-fold positions")
    # anchor on the fitted lattice so the new positions form one regular grid
    grid = superresolution_positions(adata, fold, anchor="lattice")
    yield Progress("lattice", 1, 1, f"{len(grid.positions)} positions")
    feats = yield from features_at(model, adata, grid.positions, scheduler=scheduler, n_workers=n_workers, cancel=cancel)
    pred, std = yield from _predict_with_spread(model, feats, grid.positions, _frame_for(model, adata),
                                                scheduler=scheduler, n_workers=n_workers, cancel=cancel)
    parents = np.asarray(adata.obs_names)[grid.parent]
    names = [f"{p}#{i}" for p, i in zip(parents, _rank_within(grid.parent))]
    out = ad.AnnData(
        X=pred.astype(np.float32),
        obs=pd.DataFrame({"parent": pd.Categorical(parents)}, index=pd.Index(names)),
        var=_gene_table(model),
    )
    out.obsm["spatial"] = grid.positions.astype(np.float64)
    out.uns["histosge"] = _prediction_uns(adata, model, fold=fold)
    out.uns["histosge"]["fine_lattice"] = grid.lattice.to_dict()
    if std is not None:
        out.layers["std"] = std
    return out


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group label, in order of appearance."""
    order = np.argsort(groups, kind="stable")
    ranks = np.empty(len(groups), dtype=np.int64)
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    run = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    ranks[order] = run
    return ranks
