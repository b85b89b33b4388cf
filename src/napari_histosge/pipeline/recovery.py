"""The paper's recovery protocol: hide a fraction of spots, train on the rest, score the hidden ones."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.metrics import gene_metrics, holdout_split, knn_baseline, summarize
from ..evaluation.predictions import evaluate_predictions
from ..evaluation.uncertainty import uncertainty_metrics
from ..features import FeatureConfig, SpotFeatures
from ..io.preprocess import dense_targets, normalize_log1p, top_mean_genes
from ..models import HisToSGEConfig
from ..progress import CancelToken, ProgressGenerator
from ..training.config import TrainConfig
from ..training.trained_model import TrainedModel
from .gene_choice import choose_genes
from .placement import feature_config_of
from .run_settings import limited_ids, run_settings, starting_settings
from .steps import fit, predict_spots, spot_features


@dataclass
class RecoveryResult:
    """Everything the hold-out (recovery) protocol produces.

    ``scored_genes`` are the top-N HVGs (or the user's genes); ``genes`` adds the
    highest-mean genes ``top_mean_genes`` so both sets are scored. ``metrics`` are over the
    HIDDEN spots only (the headline); ``metrics_all_spots`` scores
    every spot, training spots included, as the reference code's test.py does, and is
    reported separately and labelled so. ``baseline_metrics`` are the 6-nearest-neighbour
    inverse-distance baseline on the same hidden spots and genes.
    """

    predictions: Any
    scored_genes: list[str]
    metrics: pd.DataFrame
    metrics_all_spots: pd.DataFrame
    baseline_metrics: pd.DataFrame
    train_ids: list[str]
    test_ids: list[str]
    genes: list[str]
    top_mean_genes: list[str]
    model: TrainedModel
    timings: dict[str, float] = field(default_factory=dict)
    #: How the predictions' spread follows their error on the hidden spots, over the scored
    #: genes (:func:`.uncertainty.uncertainty_metrics`); ``None`` for a model that does not sample.
    uncertainty: dict[str, float | int] | None = None

    def summary(self) -> dict[str, Any]:
        """Headline numbers: held-out PCC/MSE/MAE over the scored genes, the top-mean genes and every predicted gene.

        ``model_all_genes`` scores every gene of :attr:`predictions`, as ``histosge evaluate``
        scores the written predictions (the same numbers); ``n_train`` counts the training
        spots, ``n_validation`` those of them the model held back to choose its epoch.
        """
        return {
            "model": summarize(self.metrics, self.scored_genes),
            "model_all_genes": summarize(self.metrics),
            "model_top_mean": summarize(self.metrics, self.top_mean_genes),
            "baseline": summarize(self.baseline_metrics, self.scored_genes),
            "baseline_top_mean": summarize(self.baseline_metrics, self.top_mean_genes),
            "model_all_spots_incl_training": summarize(self.metrics_all_spots, self.scored_genes),
            "n_train": len(self.train_ids),
            "n_validation": int(self.model.meta.n_validation_spots or 0),
            "n_test": len(self.test_ids),
            "timings": dict(self.timings),
            **({"uncertainty": dict(self.uncertainty)} if self.uncertainty is not None else {}),
        }


def recover(
    adata,
    *,
    holdout: float = 0.5,
    seed: int = 0,
    train_config: TrainConfig | None = None,
    feature_config: FeatureConfig | None = None,
    n_top_mean: int = 50,
    features: SpotFeatures | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cancel: CancelToken | None = None,
    init: TrainedModel | None = None,
) -> ProgressGenerator[RecoveryResult]:
    """The paper's recovery protocol: hide a fraction of spots, train on the rest, predict them.

    Genes are chosen on the training spots only, so nothing about the hidden spots
    leaks into training. Metrics are computed on the log1p(normalize_total to 1e4) scale.
    With ``init`` (a model trained on other sections) the run fine-tunes it on the
    training spots and scores its genes (see :func:`.steps.fit`).
    """
    import time

    if train_config is None:  # the defaults, or with init its model's and network settings
        train_config = run_settings(HisToSGEConfig.MODEL if init is None else init.config.model, {"seed": seed}, init)
    elif init is not None:
        train_config = starting_settings(train_config, init)
    feature_config = feature_config or (FeatureConfig() if init is None else feature_config_of(init))
    train_ids, test_ids = holdout_split(list(adata.obs_names), holdout, seed)
    train_ids = limited_ids(train_ids, train_config)  # at most max_bins, as fit would: the summary counts these
    # Genes come from the training spots only: the HVGs (or the user's list) plus the
    # highest-mean genes, so both headline gene sets are scored by one model.
    # normalize_total is per spot, so the training rows of the whole section's log data
    # are exactly the log data of the training spots: normalise once
    log_all = normalize_log1p(adata)
    log_train = log_all[train_ids]
    chosen = train_config.genes if init is None else list(init.genes)
    scored = choose_genes(log_train, train_config if init is None else replace(train_config, genes=chosen,
                                                                                include_genes=None))
    top_genes = top_mean_genes(log_train if init is None else log_train[:, scored], n=n_top_mean)
    if chosen is None:
        genes = scored + [g for g in top_genes if g not in set(scored)]
    else:
        genes = list(scored)
        top_genes = [g for g in top_genes if g in set(scored)]
    train_config = replace(train_config, genes=genes, include_genes=None)  # the genes chosen, markers included
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if features is None:
        features = yield from spot_features(
            adata, feature_config, scheduler=scheduler, n_workers=n_workers, cancel=cancel
        )
    timings["features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = yield from fit(
        adata, train_config=train_config, feature_config=feature_config, train_ids=train_ids,
        features=features, cancel=cancel, init=init,
    )
    timings["fit_s"] = time.perf_counter() - t0
    predicted_all = yield from predict_spots(model, adata, features=features, scheduler=scheduler,
                                             n_workers=n_workers, cancel=cancel)
    truth_all = dense_targets(log_all, genes)
    test_rows = adata.obs_names.get_indexer(test_ids)
    train_rows = adata.obs_names.get_indexer(train_ids)
    predictions = predicted_all[test_ids].copy()
    predictions.uns["split"] = {"train": list(train_ids), "test": list(test_ids), "holdout": holdout, "seed": seed}
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    baseline = knn_baseline(xy[train_rows], truth_all[train_rows], xy[test_rows], k=6)
    uncertainty = None
    if "std" in predictions.layers:
        cols = predictions.var_names.get_indexer(scored)  # truth_all's columns are ``genes``
        uncertainty = uncertainty_metrics(truth_all[np.ix_(test_rows, pd.Index(genes).get_indexer(scored))],
                                          np.asarray(predictions.X)[:, cols],
                                          np.asarray(predictions.layers["std"])[:, cols])
    return RecoveryResult(
        predictions=predictions,
        scored_genes=list(scored),
        # Scored as `histosge evaluate` scores the written file: one path, the same numbers.
        metrics=evaluate_predictions(predictions, adata).metrics,
        metrics_all_spots=gene_metrics(truth_all, np.asarray(predicted_all.X), genes),
        baseline_metrics=gene_metrics(truth_all[test_rows], baseline, genes),
        train_ids=list(train_ids),
        test_ids=list(test_ids),
        genes=list(genes),
        top_mean_genes=top_genes,
        model=model,
        timings=timings,
        uncertainty=uncertainty,
    )
