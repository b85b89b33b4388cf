"""Evaluation: hold-out splits, per-gene PCC/MSE/MAE, within-bin PCC, a kNN baseline and spatial-domain ARI."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ..errors import InputError


def _dense(x: Any, what: str) -> np.ndarray:
    arr = x.toarray() if sp.issparse(x) else np.asarray(x)
    try:
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numeric") from None


def holdout_split(spot_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split spots at random into training and test sets.

    Parameters
    ----------
    spot_ids
        Spot ids (e.g. ``adata.obs_names``); must be unique.
    fraction
        Share of spots held out for testing, strictly between 0 and 1.
    seed
        Random seed; the same ids, fraction and seed always give the same split.

    Returns
    -------
    tuple of list of str
        ``(train_ids, test_ids)``, each in the input order.

    Raises
    ------
    InputError
        ``fraction`` not in (0, 1), duplicate ids, or a side that would be empty.
    """
    ids = [str(s) for s in spot_ids]
    if not isinstance(fraction, (int, float, np.floating)) or not 0.0 < float(fraction) < 1.0:
        raise InputError(f"hold-out fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if len(set(ids)) != len(ids):
        raise InputError("spot ids must be unique for a hold-out split")
    n_test = int(round(fraction * len(ids)))
    if n_test == 0 or n_test == len(ids):
        raise InputError(
            f"a hold-out fraction of {fraction} of {len(ids)} spots leaves an empty "
            f"{'test' if n_test == 0 else 'training'} set"
        )
    test_mask = np.zeros(len(ids), bool)
    test_mask[np.random.default_rng(seed).permutation(len(ids))[:n_test]] = True
    train = [s for s, t in zip(ids, test_mask, strict=True) if not t]
    test = [s for s, t in zip(ids, test_mask, strict=True) if t]
    return train, test


def column_pcc(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``p`` with the same column of ``t`` (dense, same shape).

    NaN where ``t`` is exactly constant or there are fewer than two rows; 0 where ``p`` is
    constant (see :func:`gene_metrics`).
    """
    t, p = np.asarray(t, np.float64), np.asarray(p, np.float64)
    # Exactly constant columns (max == min) have undefined correlation: mark them NaN
    # rather than trusting a tiny rounding-level variance.
    constant_truth = t.max(axis=0) == t.min(axis=0)
    constant_pred = p.max(axis=0) == p.min(axis=0)
    tc, pc = t - t.mean(axis=0), p - p.mean(axis=0)
    num = np.einsum("ij,ij->j", tc, pc)
    den = np.sqrt(np.einsum("ij,ij->j", tc, tc) * np.einsum("ij,ij->j", pc, pc))
    with np.errstate(invalid="ignore", divide="ignore"):
        pcc = np.clip(num / den, -1.0, 1.0)
    pcc[constant_pred | (den == 0)] = 0.0
    pcc[constant_truth] = np.nan
    if t.shape[0] < 2:
        pcc[:] = np.nan
    return pcc


def gene_metrics(y_true: Any, y_pred: Any, genes: Sequence[str]) -> pd.DataFrame:
    """Per-gene Pearson correlation, mean squared error and mean absolute error.

    Parameters
    ----------
    y_true, y_pred
        ``(n_spots, n_genes)`` arrays (dense or scipy sparse) of the same shape.
    genes
        ``n_genes`` gene names, used as the index.

    Returns
    -------
    pandas.DataFrame
        Index ``genes``; columns ``pcc``, ``mse``, ``mae``. ``pcc`` is NaN for a gene that
        is constant in ``y_true`` (it cannot be scored) and for fewer than two spots. A
        gene that varies in ``y_true`` but is predicted as a constant gets ``pcc`` 0: the
        prediction carries no information about it, and leaving it out of the mean would
        reward a model for collapsing genes.

    Raises
    ------
    InputError
        Shapes differ, are not 2-D, or ``genes`` has the wrong length.
    """
    t, p = _dense(y_true, "y_true"), _dense(y_pred, "y_pred")
    if t.ndim != 2 or t.shape != p.shape:
        raise InputError(f"y_true and y_pred must be 2-D arrays of the same shape, got {t.shape} and {p.shape}")
    genes = [str(g) for g in genes]
    if len(genes) != t.shape[1]:
        raise InputError(f"got {len(genes)} gene names for {t.shape[1]} gene columns")
    if t.shape[0] == 0:
        raise InputError("no spots to evaluate")
    diff = t - p
    mse = np.mean(diff**2, axis=0)
    mae = np.mean(np.abs(diff), axis=0)
    pcc = column_pcc(t, p)
    frame = pd.DataFrame({"pcc": pcc, "mse": mse, "mae": mae}, index=pd.Index(genes, name="gene"))
    return frame


def summarize(metrics: pd.DataFrame, genes: Sequence[str] | None = None) -> dict[str, float | int]:
    """Summarise per-gene metrics from :func:`gene_metrics`.

    Parameters
    ----------
    metrics
        Output of :func:`gene_metrics`.
    genes
        Restrict to these genes (e.g. the top HVGs); all when omitted.

    Returns
    -------
    dict
        ``mean_pcc`` (NaN-ignoring), ``median_pcc``, ``mse`` and ``mae`` (means over genes),
        ``n_genes`` and ``n_genes_with_pcc`` (genes whose PCC is defined).

    Raises
    ------
    InputError
        Missing columns or genes not in ``metrics``.
    """
    missing_cols = {"pcc", "mse", "mae"} - set(metrics.columns)
    if missing_cols:
        raise InputError(f"metrics table lacks columns {sorted(missing_cols)}")
    if genes is not None:
        genes = [str(g) for g in genes]
        absent = [g for g in genes if g not in metrics.index]
        if absent:
            raise InputError(f"{len(absent)} genes are not in the metrics table, e.g. {absent[:5]}")
        metrics = metrics.loc[genes]
    pcc = metrics["pcc"].to_numpy(float)
    has = np.isfinite(pcc)
    return {
        "mean_pcc": float(pcc[has].mean()) if has.any() else float("nan"),
        "median_pcc": float(np.median(pcc[has])) if has.any() else float("nan"),
        "mse": float(metrics["mse"].mean()) if len(metrics) else float("nan"),
        "mae": float(metrics["mae"].mean()) if len(metrics) else float("nan"),
        "n_genes": int(len(metrics)),
        "n_genes_with_pcc": int(has.sum()),
    }


def knn_baseline(train_xy: Any, train_y: Any, query_xy: Any, *, k: int = 6, eps: float = 1e-6) -> np.ndarray:
    """Inverse-distance-weighted mean of the ``k`` nearest training spots.

    Parameters
    ----------
    train_xy
        ``(n, 2)`` training spot positions.
    train_y
        ``(n, g)`` (or ``(n,)``) training values, dense or sparse.
    query_xy
        ``(m, 2)`` positions to predict.
    k
        Number of neighbours (capped at ``n``).
    eps
        A query within ``eps`` of a training spot returns that spot's value exactly.

    Returns
    -------
    numpy.ndarray
        ``(m, g)`` (or ``(m,)``) predictions, ``float64``.

    Raises
    ------
    InputError
        Bad shapes, no training spots or ``k < 1``.
    """
    txy = _dense(train_xy, "train_xy")
    qxy = _dense(query_xy, "query_xy")
    y = _dense(train_y, "train_y")
    vector = y.ndim == 1
    y = y[:, None] if vector else y
    if txy.ndim != 2 or txy.shape[1] != 2 or qxy.ndim != 2 or qxy.shape[1] != 2:
        raise InputError(f"positions must be (n, 2) arrays, got {txy.shape} and {qxy.shape}")
    if len(txy) == 0 or y.ndim != 2 or len(y) != len(txy):
        raise InputError(f"need one row of values per training spot: {len(txy)} spots, values {y.shape}")
    if int(k) < 1:
        raise InputError(f"k must be at least 1, got {k}")
    k = min(int(k), len(txy))
    dist, idx = cKDTree(txy).query(qxy, k=k)
    dist, idx = dist.reshape(len(qxy), k), idx.reshape(len(qxy), k)
    weights = 1.0 / np.maximum(dist, eps)
    exact = dist[:, 0] <= eps
    weights[exact] = 0.0
    weights[exact, 0] = 1.0  # an exact hit returns that spot's value, not a blend
    weights /= weights.sum(axis=1, keepdims=True)
    out = np.zeros((len(qxy), y.shape[1]))
    for j in range(k):  # k passes of (m, g): avoids an (m, k, g) temporary
        out += weights[:, j, None] * y[idx[:, j]]
    return out[:, 0] if vector else out


def _label_mask(labels: Sequence) -> np.ndarray:
    lab = pd.Series(list(labels), dtype=object)
    return (~lab.isna() & (lab.astype(str).str.strip() != "")).to_numpy()


def spatial_ari(
    expression: Any,
    labels: Sequence,
    *,
    n_clusters: int | None = None,
    n_pcs: int = 15,
    seed: int = 0,
    log1p: bool = False,
) -> float:
    """Adjusted Rand index of k-means domains against given labels (e.g. DLPFC layers).

    Parameters
    ----------
    expression
        ``(n_spots, n_genes)`` expression, dense or sparse; pass log-normalised values
        (or set ``log1p``). Spots with a missing/NaN/empty label are left out.
    labels
        ``n_spots`` domain labels.
    n_clusters
        Number of k-means clusters; defaults to the number of distinct labels.
    n_pcs
        Principal components fed to k-means (capped by the data size).
    seed
        Seed for PCA and k-means.
    log1p
        Apply ``log1p`` to ``expression`` first.

    Returns
    -------
    float
        ``sklearn.metrics.adjusted_rand_score`` between k-means clusters and labels.

    Raises
    ------
    InputError
        Length mismatch, fewer than two distinct labels, or an impossible ``n_clusters``.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    x = _dense(expression, "expression")
    labels = list(labels)
    if x.ndim != 2 or len(labels) != x.shape[0]:
        raise InputError(f"got {len(labels)} labels for an expression matrix of shape {x.shape}")
    keep = _label_mask(labels)
    x = x[keep]
    y = np.array([str(v) for v, k in zip(labels, keep, strict=True) if k])
    n_labels = len(np.unique(y))
    if n_labels < 2:
        raise InputError(f"need at least two distinct labels for ARI, got {n_labels}")
    n_clusters = n_labels if n_clusters is None else int(n_clusters)
    if not 2 <= n_clusters <= len(y):
        raise InputError(f"n_clusters must be between 2 and the {len(y)} labelled spots, got {n_clusters}")
    if log1p:
        x = np.log1p(x)
    n_comp = max(1, min(int(n_pcs), x.shape[0] - 1, x.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant genes: zero variance
        emb = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
    clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(emb)
    return float(adjusted_rand_score(y, clusters))


def read_layer_annotations(path: str | PathLike) -> pd.Series:
    """Read DLPFC manual layer annotations (``<id>_layer_annotations.tsv``).

    Parameters
    ----------
    path
        Tab-separated file with columns ``barcode`` and ``layer``.

    Returns
    -------
    pandas.Series
        Layer per barcode (index ``barcode``, name ``layer``); missing layers stay NaN.

    Raises
    ------
    InputError
        Missing or unreadable file, missing columns, or duplicate barcodes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("layer annotation file not found", path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read layer annotations: {exc}", path) from None
    missing = {"barcode", "layer"} - set(table.columns)
    if missing:
        raise InputError(
            f"layer annotations need tab-separated columns 'barcode' and 'layer'; missing {sorted(missing)} "
            f"(found {list(table.columns)})",
            path,
        )
    if table["barcode"].duplicated().any():
        raise InputError(f"duplicate barcodes, e.g. {table['barcode'][table['barcode'].duplicated()].iloc[0]}", path)
    return pd.Series(table["layer"].to_numpy(), index=pd.Index(table["barcode"], name="barcode"), name="layer")


def within_bin_pcc(pred: np.ndarray, truth: np.ndarray, spot_bin: np.ndarray) -> np.ndarray:
    """Per-gene PCC of prediction minus its bin mean against truth minus its bin mean (bins of >= 2 spots).

    A gene whose deviations do not vary on either side (e.g. a copy of the bin value) scores 0.
    """
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    size = np.bincount(spot_bin)
    keep = size[spot_bin] >= 2

    def deviation(v: np.ndarray) -> np.ndarray:
        mean = np.zeros((len(size), v.shape[1]))
        np.add.at(mean, spot_bin, v)
        return (v - (mean / np.maximum(size, 1)[:, None])[spot_bin])[keep]

    return np.nan_to_num(column_pcc(deviation(truth), deviation(pred)), nan=0.0)
