"""Choosing the kriging on the training spots: kernels by leave-one-out, estimators by cross-validation.

Every candidate estimator (:data:`.kriging.PLAIN`, :data:`.kriging.COUPLED`,
:data:`.kriging.DRIFT`) picks each of its kernels from the grid by leave-one-out error on
the training spots: smooth, heavily shrunk estimates for noisy genes, sharp ones for genes
with a strong spatial pattern. Which estimator a gene uses is then chosen by k-fold
cross-validation on the training spots, by the gene's mean per-fold Pearson correlation:
the headline metric of the recovery protocol, and the one on which the choice held up on
held-out spots (choosing by cross-validated MSE favoured plain kriging for genes where
coupling correlated better on the hidden spots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...evaluation.metrics import gene_metrics
from ..neighbours import neighbour_context
from .image_trend import ImageTrend, fit_image_trend
from .kriging import (
    COUPLED,
    DRIFT,
    ESTIMATORS,
    N_CONFIGS,
    PLAIN,
    KrigingPlan,
    estimate,
    kriging_weights,
)

_CHUNK = 512
#: Spots scored when choosing kernels: on larger sets (Visium HD) a random subset of them is
#: scored, still against all their neighbours; a gene's error needs hundreds of spots, not all.
MAX_SCORED = 4000


@dataclass
class KrigingFit:
    """The kriging chosen on the training spots (numpy arrays; see :class:`.kriging.KrigingPlan`).

    ``trend`` is the image trend (``None`` without image inputs or coupling); ``cv_pcc``
    the mean cross-validated PCC of each offered estimator over all genes, and ``share``
    the fraction of genes that use each one.
    """

    plain_config: np.ndarray
    rest_config: np.ndarray
    basis: np.ndarray
    score_config: np.ndarray
    drift_config: np.ndarray
    choice: np.ndarray
    trend: ImageTrend | None = None
    cv_pcc: dict[str, float] = field(default_factory=dict)
    share: dict[str, float] = field(default_factory=dict)

    def plan(self) -> KrigingPlan:
        """The fit as tensors."""
        t = torch.from_numpy
        return KrigingPlan(t(self.plain_config), t(self.rest_config), t(self.basis.astype(np.float32)),
                           t(self.score_config), t(self.drift_config), t(self.choice))

    def drift(self, image: np.ndarray) -> np.ndarray:
        """``(n, r)`` image trend of the principal scores at ``(n, in_dim)`` image inputs (zeros without a trend)."""
        if self.trend is None:
            return np.zeros((len(image), self.basis.shape[1]), np.float32)
        return self.trend(image)


def _weights_for(positions: np.ndarray, queries: np.ndarray, k: int, spacing: float,
                 exclude: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor]:
    idx, geo, valid = neighbour_context(positions, queries, k, spacing=spacing, exclude=exclude)
    chunks = [kriging_weights(torch.from_numpy(geo[s:s + _CHUNK]), torch.from_numpy(valid[s:s + _CHUNK]))
              for s in range(0, len(idx), _CHUNK)]
    return idx, torch.cat(chunks) if chunks else torch.zeros(0, idx.shape[1], N_CONFIGS)


def _best_configs(idx: np.ndarray, w: torch.Tensor, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per column, the configuration with the least leave-one-out squared error over ``rows``."""
    v = torch.from_numpy(np.ascontiguousarray(values, np.float32))
    t = v[torch.from_numpy(rows)]
    total = torch.zeros(N_CONFIGS, v.shape[1])
    for s in range(0, len(idx), _CHUNK):
        est = torch.einsum("qkc,qkm->qcm", w[s:s + _CHUNK], v[torch.from_numpy(idx[s:s + _CHUNK])])
        total += (est - t[s:s + _CHUNK, None, :]).square().sum(0)
    return total.argmin(0).numpy().astype(np.int64)


def _decompose(y: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(basis (G, r), scores (n, r))`` of z-scored ``y``."""
    r = min(int(rank), *y.shape)
    if r <= 0:
        return np.zeros((y.shape[1], 0), np.float32), np.zeros((len(y), 0), np.float32)
    _, _, vt = np.linalg.svd(y.astype(np.float64), full_matrices=False)
    basis = vt[:r].T.astype(np.float32)
    return basis, y @ basis


def _subset(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most ``MAX_SCORED`` of ``rows``, in order."""
    return rows if len(rows) <= MAX_SCORED else np.sort(rng.choice(rows, MAX_SCORED, replace=False))


def _fit_all(positions: np.ndarray, y: np.ndarray, image: np.ndarray | None, n_features: int, k: int,
             spacing: float, rank: int, pick: np.random.Generator) -> KrigingFit:
    """Kernels of every estimator on these spots (``choice`` left all plain)."""
    scored = _subset(np.arange(len(positions)), pick)
    idx, w = _weights_for(positions, positions[scored], k, spacing, scored)  # leave-one-out
    g = y.shape[1]
    basis, scores = _decompose(y, rank)
    r = basis.shape[1]
    fit = KrigingFit(plain_config=_best_configs(idx, w, y, scored), rest_config=np.zeros(g, np.int64),
                     basis=basis, score_config=np.zeros(r, np.int64), drift_config=np.zeros(r, np.int64),
                     choice=np.full(g, PLAIN, np.int64))
    if r:
        fit.rest_config = _best_configs(idx, w, y - scores @ basis.T, scored)
        fit.score_config = _best_configs(idx, w, scores, scored)
        if image is not None:
            fit.trend = fit_image_trend(image, scores, n_features)
            if fit.trend is not None:
                fit.drift_config = _best_configs(idx, w, scores - fit.trend(image), scored)
    return fit


def _offered(fit: KrigingFit) -> list[int]:
    return [PLAIN] + ([COUPLED] if fit.basis.shape[1] else []) + ([DRIFT] if fit.trend is not None else [])


def _candidates(fit: KrigingFit, positions: np.ndarray, y: np.ndarray, image: np.ndarray | None,
                queries: np.ndarray, query_image: np.ndarray | None, k: int, spacing: float) -> np.ndarray:
    """``(len(offered), n_queries, G)`` estimate of every offered estimator for every gene."""
    idx, w = _weights_for(positions, queries, k, spacing, None)
    nb = torch.from_numpy(np.ascontiguousarray(y, np.float32))[torch.from_numpy(idx)]
    nb_drift = q_drift = None
    # Without image inputs there is no drift: estimate() then refuses drift genes by name.
    if fit.trend is not None and image is not None and query_image is not None:
        nb_drift = torch.from_numpy(fit.drift(image))[torch.from_numpy(idx)]
        q_drift = torch.from_numpy(fit.drift(query_image))
    out = []
    for choice in _offered(fit):
        plan = fit.plan()._replace(choice=torch.full((y.shape[1],), choice, dtype=torch.long))
        out.append(estimate(w, nb, plan, nb_drift, q_drift).numpy())
    return np.stack(out)


def _fold_pcc(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(C, G)`` per-gene PCC of each candidate's ``(C, n, G)`` predictions; 0 where a gene cannot be scored."""
    genes = [str(j) for j in range(truth.shape[1])]
    return np.stack([np.nan_to_num(gene_metrics(truth, p, genes)["pcc"].to_numpy()) for p in pred])


def describe_shares(share: dict[str, float]) -> str:
    """The share of genes per estimator, in words.

    Examples
    --------
    >>> describe_shares({"plain": 0.25, "coupled": 0.75})
    'plain 25%, coupled 75%'
    """
    return ", ".join(f"{name} {value:.0%}" for name, value in share.items())


def fit_kriging(positions: np.ndarray, y: np.ndarray, *, k: int, spacing: float, rank: int = 16,
                image: np.ndarray | None = None, n_features: int = 0, folds: int = 5,
                seed: int = 0) -> KrigingFit:
    """Choose every gene's estimator and kernels on the training spots.

    Parameters
    ----------
    positions
        ``(n, 2)`` training spot positions (pixels).
    y
        ``(n, G)`` z-scored expression of the training spots.
    k
        Neighbours per query.
    spacing
        Median spot spacing in pixels (the kernels' length unit).
    rank
        Principal directions for the coupled and drift estimators; 0 krige every gene alone.
    image
        ``(n, in_dim)`` z-scored image inputs (``n_features`` feature columns, then mean
        RGB) for the image trend; ``None`` offers no drift estimator.
    n_features
        Feature columns at the start of ``image``.
    folds
        Cross-validation folds for the choice of estimator (spots split at random).
    seed
        Seed of the fold assignment and of the scored subset on large sets.

    Returns
    -------
    KrigingFit
    """
    positions = np.asarray(positions, np.float64)
    y = np.asarray(y, np.float32)
    image = None if image is None else np.asarray(image, np.float32)
    n = len(positions)
    pick = np.random.default_rng([seed, 15485863])
    fit = _fit_all(positions, y, image, n_features, k, spacing, rank, pick)
    offered = _offered(fit)
    fit.share = {ESTIMATORS[c]: float(c == PLAIN) for c in offered}
    if len(offered) == 1 or n < 3 * folds or folds < 2:
        return fit
    fold = np.random.default_rng([seed, 104729]).permutation(n) % folds
    pcc = np.zeros((len(offered), y.shape[1]))
    for f in range(folds):
        train, held = np.flatnonzero(fold != f), _subset(np.flatnonzero(fold == f), pick)
        sub_image = None if image is None else image[train]
        part = _fit_all(positions[train], y[train], sub_image, n_features, k, spacing, rank, pick)
        pred = _candidates(part, positions[train], y[train], sub_image, positions[held],
                           None if image is None else image[held], k, spacing)
        if len(pred) < len(offered):  # no trend in this fold: its drift estimate is the coupled one
            pred = np.concatenate([pred, pred[-1:]])
        pcc += _fold_pcc(pred, y[held])
    pcc /= folds
    fit.choice = np.asarray(offered, np.int64)[pcc.argmax(0)]  # ties (a gene constant in every fold) stay plain
    fit.cv_pcc = {ESTIMATORS[c]: float(pcc[i].mean()) for i, c in enumerate(offered)}
    fit.share = {ESTIMATORS[c]: float(np.mean(fit.choice == c)) for c in offered}
    return fit
