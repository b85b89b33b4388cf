"""Score a predictions AnnData against the measured spots it predicted (what ``histosge evaluate`` prints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.preprocess import dense_targets, normalize_log1p
from .metrics import gene_metrics, spatial_ari, summarize
from .uncertainty import uncertainty_metrics


@dataclass
class PredictionEvaluation:
    """How well predictions follow the measured expression at the spots both have.

    ``metrics`` per gene (``pcc``, ``mse``, ``mae``) and ``summary`` over genes
    (:func:`.metrics.summarize`); ``spots``/``genes`` the ids scored, in the predictions'
    order; ``n_unmatched_spots`` predicted ids with no measured spot; ``uncertainty`` the
    spread-vs-error scores (:func:`.uncertainty.uncertainty_metrics`) where the predictions
    have ``layers["std"]``; ``ari`` the spatial-domain ARI of the predicted and measured
    expression against layer labels (keys ``predicted``, ``measured``) where labels were given.
    """

    metrics: pd.DataFrame
    summary: dict[str, float | int]
    spots: list[str]
    genes: list[str]
    n_unmatched_spots: int
    uncertainty: dict[str, float | int] | None = None
    ari: dict[str, float] | None = None


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float64)


def _shared(predicted: pd.Index, measured: pd.Index) -> np.ndarray:
    """Positions in ``predicted`` whose label is in ``measured`` (one hash look-up each)."""
    return np.flatnonzero(pd.Index(measured).get_indexer(pd.Index(predicted).astype(str)) >= 0)


def evaluate_predictions(predictions, measured, layers: pd.Series | None = None) -> PredictionEvaluation:
    """Score ``predictions`` against ``measured`` on the spots and genes they share.

    Parameters
    ----------
    predictions
        Predictions AnnData on the log1p(normalize_total to 1e4) scale (``histosge
        recover``/``predict``): ``obs_names`` spot ids, ``var_names`` genes, optional
        ``layers["std"]``.
    measured
        Raw counts of the measured spots (:func:`napari_histosge.io.read_spots`); they are
        normalised as the predictions are.
    layers
        Domain label per spot id (:func:`.metrics.read_layer_annotations`) for the
        spatial-domain ARI; spots without a label are left out of it.

    Returns
    -------
    PredictionEvaluation

    Raises
    ------
    InputError
        No predicted spot id or no predicted gene is among the measured ones, or
        ``measured`` repeats a spot id or a gene.
    """
    if not (measured.obs_names.is_unique and measured.var_names.is_unique):
        raise InputError("the measured data repeat a spot id or a gene name; ids must be unique to match them")
    rows = _shared(predictions.obs_names, measured.obs_names)
    cols = _shared(predictions.var_names, measured.var_names)
    if len(rows) == 0:
        raise InputError("no predicted spot id matches a measured spot; evaluate scores predictions at "
                         "measured spots ('recover', or 'predict' without --positions)")
    if len(cols) == 0:
        raise InputError("no predicted gene matches a measured gene")
    spots = [str(s) for s in predictions.obs_names[rows]]
    genes = [str(g) for g in predictions.var_names[cols]]
    # normalize_total is per spot, so normalising only the scored spots gives the same values.
    truth = dense_targets(normalize_log1p(measured[spots]), genes)
    scored = predictions[rows, cols]  # an AnnData view: rows and columns picked, no copy of the rest
    values = _dense(scored.X)
    metrics = gene_metrics(truth, values, genes)
    result = PredictionEvaluation(metrics=metrics, summary=summarize(metrics), spots=spots, genes=genes,
                                  n_unmatched_spots=int(predictions.n_obs - len(rows)))
    if "std" in predictions.layers:
        spread = _dense(scored.layers["std"])
        result.uncertainty = uncertainty_metrics(truth, values, spread)
    if layers is not None:
        labels = pd.Series(layers).reindex(pd.Index(spots)).to_numpy()
        result.ari = {"predicted": spatial_ari(values, labels), "measured": spatial_ari(truth, labels)}
    return result
