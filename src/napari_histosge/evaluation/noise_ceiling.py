"""The noise ceiling: the best per-gene PCC any predictor can reach against one noisy measurement.

A spot's counts are one Poisson-like draw around its true expression, so even a predictor
that knows the truth exactly does not correlate perfectly with the measurement. Splitting
every count binomially into two halves gives two independent measurements at half depth;
their per-gene correlation across spots, corrected to full depth with the Spearman-Brown
formula, is the reliability of the measurement, and its square root is the highest
correlation a prediction can have with it. Both halves are normalised as the project
normalises targets (:func:`~napari_histosge.io.preprocess.normalize_log1p`), so the ceiling
is on the same log1p(normalize_total 1e4) scale as the accuracy tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io.preprocess import normalize_log1p
from .count_split import integer_counts, split_counts

#: Fewest spots a per-gene correlation is computed over (two spots always correlate +-1).
MIN_SPOTS = 3
#: Binomial splits averaged by default.
DEFAULT_SPLITS = 5


def _as_anndata(counts: Any):
    """An AnnData view of ``counts`` (AnnData, or a spots x genes DataFrame)."""
    import anndata

    if isinstance(counts, anndata.AnnData):
        return counts
    if isinstance(counts, pd.DataFrame):
        return anndata.AnnData(
            X=counts.to_numpy(), obs=pd.DataFrame(index=counts.index.astype(str)),
            var=pd.DataFrame(index=counts.columns.astype(str)),
        )
    raise InputError(f"counts must be an AnnData or a spots x genes DataFrame, got {type(counts).__name__}")


def _pick(names: pd.Index, wanted: Sequence[str] | None, what: str) -> np.ndarray:
    """Row or column positions of ``wanted`` in ``names`` (all of them when ``None``)."""
    if wanted is None:
        return np.arange(len(names))
    wanted = [wanted] if isinstance(wanted, str) else [str(w) for w in wanted]
    if len(set(wanted)) != len(wanted):
        raise InputError(f"the {what} list names some {what}s more than once")
    positions = names.get_indexer(wanted)
    missing = [w for w, p in zip(wanted, positions, strict=True) if p < 0]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"{len(missing)} requested {what}(s) are not in the data: "
                         f"{', '.join(map(repr, missing[:5]))}{more}")
    return positions


def _column_pearson(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """Per-column Pearson correlation of two equally shaped sparse matrices (NaN where one is constant)."""
    n = a.shape[0]
    mean_a = np.asarray(a.mean(axis=0)).ravel()
    mean_b = np.asarray(b.mean(axis=0)).ravel()
    cov = np.asarray(a.multiply(b).sum(axis=0)).ravel() / n - mean_a * mean_b
    var_a = np.asarray(a.multiply(a).sum(axis=0)).ravel() / n - mean_a**2
    var_b = np.asarray(b.multiply(b).sum(axis=0)).ravel() / n - mean_b**2
    # Rounding can leave a tiny positive variance on a constant column: treat it as constant.
    tiny = 1e-12 * np.maximum(1.0, np.maximum(mean_a**2, mean_b**2))
    defined = (var_a > tiny) & (var_b > tiny)
    r = np.full(a.shape[1], np.nan)
    r[defined] = cov[defined] / np.sqrt(var_a[defined] * var_b[defined])
    return np.clip(r, -1.0, 1.0)


def _log_normalised(adata, counts: sp.csr_matrix, rows: np.ndarray) -> Any:
    """``counts`` (of the chosen spots, all genes) on the log1p(normalize_total) scale."""
    import anndata

    view = anndata.AnnData(X=counts.astype(np.float32), obs=pd.DataFrame(index=adata.obs_names[rows]),
                           var=pd.DataFrame(index=adata.var_names))
    with warnings.catch_warnings():
        # A shallow spot can draw no counts into one half; it stays all-zero, as in the targets.
        warnings.filterwarnings("ignore", message="Some cells have zero counts")
        return sp.csr_matrix(normalize_log1p(view).X)


def _split_correlation(adata, matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
                       rng: np.random.Generator, shuffled: bool) -> np.ndarray:
    """Per-gene PCC between the two normalised halves of one binomial split of ``matrix``."""
    first, second = split_counts(matrix, rng)
    a, b = (_log_normalised(adata, half, rows)[:, cols] for half in (first, second))
    if shuffled:
        b = b[rng.permutation(b.shape[0])]
    return _column_pearson(a, b)


def split_half_reliability(
    counts: Any,
    genes: Sequence[str] | None = None,
    *,
    spots: Sequence[str] | None = None,
    n_splits: int = DEFAULT_SPLITS,
    seed: int = 0,
    shuffled: bool = False,
) -> pd.Series:
    """Per-gene reliability of one measurement: the Spearman-Brown corrected split-half PCC.

    Parameters
    ----------
    counts
        AnnData with raw integer counts in ``X`` (dense or sparse), or a spots x genes DataFrame.
    genes
        Genes to report (default: all). Normalisation always uses every gene's counts.
    spots
        Spot names (``obs_names``) the correlation runs over (default: all).
    n_splits
        Independent binomial splits whose half-to-half correlations are averaged.
    seed
        Seed of the first split; the splits are reproducible.
    shuffled
        Pair each spot's first half with another spot's second half (a fresh permutation per
        split): a control with no shared signal, whose ceiling is the estimator's floor from
        sampling noise alone.

    Returns
    -------
    pandas.Series
        ``r_full = 2 r / (1 + r)`` per gene, indexed by gene, where ``r`` is the mean over
        splits of the correlation between the two normalised halves (0 on a split where a
        half is constant over the spots). Can be negative; NaN for a gene whose normalised
        counts are constant over the spots, which has no PCC to bound.

    Raises
    ------
    InputError
        If counts are not raw non-negative whole numbers, a gene or spot is unknown or
        repeated, fewer than :data:`MIN_SPOTS` spots are chosen, or ``n_splits < 1``.
    """
    adata = _as_anndata(counts)
    if int(n_splits) < 1:
        raise InputError(f"the number of splits must be at least 1, got {n_splits}")
    rows = _pick(adata.obs_names, spots, "spot")
    cols = _pick(adata.var_names, genes, "gene")
    if len(rows) < MIN_SPOTS:
        raise InputError(f"the noise ceiling needs at least {MIN_SPOTS} spots, got {len(rows)}")
    matrix = integer_counts(adata.X)[rows]
    # Undefined only where the targets themselves are constant over the spots, as in gene_metrics.
    full = _log_normalised(adata, matrix, rows)[:, cols]
    varies = full.max(axis=0).toarray().ravel() > full.min(axis=0).toarray().ravel()
    rng = np.random.default_rng(seed)
    per_split = [_split_correlation(adata, matrix, rows, cols, rng, shuffled) for _ in range(int(n_splits))]
    # A half that is constant carries no shared variation: correlation 0, as gene_metrics
    # scores a constant prediction.
    r = np.where(varies, np.nan_to_num(np.vstack(per_split), nan=0.0).mean(axis=0), np.nan)
    with np.errstate(divide="ignore"):  # r = -1 gives -inf, clipped to a ceiling of 0
        r_full = 2.0 * r / (1.0 + r)
    return pd.Series(r_full, index=adata.var_names[cols].astype(str), name="reliability")


def ceiling_from_reliability(reliability: pd.Series) -> pd.Series:
    """``sqrt(max(r_full, 0))`` per gene: the noise ceiling from :func:`split_half_reliability`."""
    return np.sqrt(reliability.clip(lower=0.0)).rename("noise_ceiling")


def noise_ceiling(
    counts: Any,
    genes: Sequence[str] | None = None,
    *,
    spots: Sequence[str] | None = None,
    n_splits: int = DEFAULT_SPLITS,
    seed: int = 0,
) -> pd.Series:
    """Per-gene noise ceiling: the highest PCC a predictor can reach against these measurements.

    Each count is split binomially in two halves, both halves are normalised like the
    training targets, their per-gene correlation across ``spots`` (averaged over
    ``n_splits`` splits) is corrected to full depth by Spearman-Brown and square-rooted,
    negative reliabilities clipped to 0 first. See :func:`split_half_reliability` for the
    parameters and errors.

    Returns
    -------
    pandas.Series
        The ceiling in [0, 1] per gene (NaN where it is undefined), indexed by gene.
    """
    return ceiling_from_reliability(
        split_half_reliability(counts, genes, spots=spots, n_splits=n_splits, seed=seed))


def summarize_ceiling(reliability: pd.Series, genes: Sequence[str] | None = None) -> dict[str, float | int]:
    """Mean and median noise ceiling over ``genes``, and how many genes were clipped at 0.

    Parameters
    ----------
    reliability
        Output of :func:`split_half_reliability`.
    genes
        Genes to summarise (default: all in ``reliability``).

    Returns
    -------
    dict
        ``mean_ceiling``, ``median_ceiling`` (over genes with a defined ceiling), ``n_genes``
        (defined), ``n_clipped`` (negative reliability, ceiling set to 0) and ``n_undefined``.

    Raises
    ------
    InputError
        If a gene is not in ``reliability``.
    """
    if genes is not None:
        _pick(reliability.index, genes, "gene")
        reliability = reliability.loc[[genes] if isinstance(genes, str) else [str(g) for g in genes]]
    ceiling = ceiling_from_reliability(reliability).to_numpy()
    defined = np.isfinite(ceiling)
    return {
        "mean_ceiling": float(ceiling[defined].mean()) if defined.any() else float("nan"),
        "median_ceiling": float(np.median(ceiling[defined])) if defined.any() else float("nan"),
        "n_genes": int(defined.sum()),
        "n_clipped": int((reliability.to_numpy()[defined] < 0).sum()),
        "n_undefined": int((~defined).sum()),
    }
