"""How much sub-footprint detail to trust, learned one scale up on the training footprints themselves.

The footprints are pooled into squares of about four, the model is fitted on those
squares alone, and it predicts the original footprints (consistent with the squares, as
a map is with the measurement). The share of the image modulation, the prior's
bandwidth and, per gene, the detail kept within a footprint (:mod:`.consistency`) that
predict the footprints best are kept for the model fitted on the footprints. So the map
shows detail inside a footprint only for the genes, and only from the image, where that
detail predicted the finer measurement one scale up on the same section.

A footprint's counts are part of its square's sum, so scoring the squares' predictions
against the same counts would reward settings that copy the squares (they share the
footprints' counting noise). Where the counts are whole numbers they are split binomially
(:func:`napari_histosge.evaluation.count_split.split_counts`): the squares are made from
half A and the footprints scored against half B (:func:`split_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ...errors import InputError
from ...evaluation.count_split import split_counts
from ...evaluation.metrics import column_pcc
from ...io.preprocess import dense_targets, normalize_log1p
from ...training.grouping import median_spacing
from .consistency import consistent_rates
from .prior import prior_rates

#: Shares of the image modulation tried.
SHARES = (0.0, 0.5, 1.0)
#: Prior bandwidths tried, in footprint spacings.
BANDWIDTHS = (0.75, 1.5)
#: Details tried per gene: how much of its pattern within a footprint consistency keeps.
DETAILS = (0.0, 0.5, 1.0)
#: Fewest pooled squares calibration runs on; with fewer the defaults are kept.
MIN_SQUARES = 8
#: Thinning seed of the split (fixed, so that fitting the same data twice gives the same model).
SPLIT_SEED = 0


def split_targets(train, genes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """log1p-normalised halves A and B of ``train``'s counts at ``genes``; ``None`` when they are not raw counts."""
    import anndata as ad

    try:
        halves = split_counts(train.X, SPLIT_SEED)
    except InputError:  # normalised data: calibration then scores against the counts it pooled
        return None
    out = []
    for half in halves:
        part = ad.AnnData(X=half.astype(np.float32), obs=train.obs[[]], var=train.var[[]])
        out.append(np.nan_to_num(dense_targets(normalize_log1p(part), genes).astype(np.float64)))
    return out[0], out[1]


@dataclass(frozen=True)
class Calibration:
    """What calibration chose and how well each choice did one scale up."""

    share: float
    bandwidth: float
    #: Mean per-gene PCC at the footprints of the chosen setting, and with no image at the same bandwidth.
    score: float
    score_without_image: float
    squares: int
    #: ``(G,)`` per gene, the detail kept (see :mod:`.consistency`).
    detail: np.ndarray
    #: Whether the squares and the scored footprints were independent halves of the counts.
    split: bool = False

    def to_meta(self) -> dict[str, float]:
        """Plain values for the model's metadata (the per-gene detail is stored with the weights)."""
        return {"modulation_share": self.share, "prior_bandwidth": self.bandwidth, "calibration_pcc": self.score,
                "calibration_pcc_without_image": self.score_without_image, "calibration_squares": self.squares,
                "mean_detail": float(np.mean(self.detail)), "calibration_split": self.split}


def pool_footprints(centres: np.ndarray, spacing: float) -> np.ndarray:
    """Square of side two spacings (axis-aligned) each footprint falls in: ``(n,)`` labels ``0 .. k-1``."""
    keys = np.floor((centres - centres.min(axis=0)) / (2.0 * spacing)).astype(np.int64)
    _, labels = np.unique(keys, axis=0, return_inverse=True)
    return np.asarray(labels).ravel()


def calibrate(cell_xy: np.ndarray, features: np.ndarray, weights: sp.csr_matrix, targets: np.ndarray,
              centres: np.ndarray, fit_modulation, default_bandwidth: float,
              halves: tuple[np.ndarray, np.ndarray] | None = None) -> Calibration | None:
    """Choose the modulation share and prior bandwidth one scale up; ``None`` with too few squares.

    Parameters
    ----------
    cell_xy, features
        The cells under the footprints and their standardised features.
    weights
        ``(n_footprints, n_cells)`` footprint weights (rows sum to one).
    targets
        ``(n_footprints, G)`` measured log1p values.
    centres
        Footprint centres.
    fit_modulation
        ``fit_modulation(x, residual) -> coef (G, D)``: the model's own fit.
    default_bandwidth
        The bandwidth setting (spacings), kept when calibration cannot run.
    halves
        Independent halves of ``targets`` (:func:`split_targets`): squares from the first,
        scored against the second; ``None`` pools and scores ``targets`` itself.
    """
    pooled, scored = (targets, targets) if halves is None else halves
    spacing = median_spacing(centres, undefined=1.0)
    labels = pool_footprints(centres, spacing)
    k = int(labels.max()) + 1
    if k < MIN_SQUARES:
        return None
    member = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    cells_per = np.asarray((weights != 0).sum(axis=1)).ravel().astype(np.float64)
    # A square's cells are its footprints' cells; its rate is their area-weighted mean rate.
    area = member @ sp.diags(cells_per)
    square_rates = np.asarray(area @ np.expm1(pooled)) / np.asarray(area.sum(axis=1))
    square_weights = _row_normalise(member @ (weights != 0).astype(np.float64))
    square_xy = np.asarray(area @ centres) / np.asarray(area.sum(axis=1))
    square_spacing = median_spacing(square_xy, undefined=2.0 * spacing)
    best: Calibration | None = None
    for bandwidth in BANDWIDTHS:
        prior = prior_rates(cell_xy, square_xy, square_rates, bandwidth * square_spacing).astype(np.float64)
        residual = np.log1p(square_rates) - np.log1p(square_weights @ prior)
        modulation = features @ fit_modulation(square_weights @ features, residual).T
        without = 0.0
        for share in SHARES:
            rates = prior * np.exp(np.clip(share * modulation, -20, 20))
            # Per gene, the detail that predicts its footprints best.
            per_detail = np.stack([
                _gene_pcc(np.log1p(weights @ consistent_rates(rates, square_weights, square_rates,
                                                              np.full(targets.shape[1], d))), scored)
                for d in DETAILS])
            score = float(per_detail.max(axis=0).mean())
            without = score if share == 0.0 else without
            if best is None or score > best.score + 1e-9:
                best = Calibration(share=share, bandwidth=bandwidth, score=score, score_without_image=without,
                                   squares=k, detail=np.asarray(DETAILS)[per_detail.argmax(axis=0)],
                                   split=halves is not None)
    assert best is not None
    return best


def _row_normalise(m: sp.spmatrix) -> sp.csr_matrix:
    rows = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(rows, 1e-12)) @ m)


def _gene_pcc(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-gene PCC over rows, 0 where either side is constant (a choice then makes no difference)."""
    return np.nan_to_num(column_pcc(truth, pred), nan=0.0)
