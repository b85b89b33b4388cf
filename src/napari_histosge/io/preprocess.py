"""Normalisation and gene selection: the training targets of every model.

Targets are ``log1p(normalize_total(target_sum=1e4))`` computed with scanpy, and the
genes are the top-N highly variable genes (``flavor="seurat"`` on the log data) or a
list the user gives.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

#: Counts per spot after ``normalize_total`` (before ``log1p``).
TARGET_SUM = 1e4


def _source(adata) -> str | None:
    info = adata.uns.get("histosge", {}) if hasattr(adata, "uns") else {}
    source = info.get("source") if isinstance(info, dict) else None
    return None if source in (None, "") else str(source)


def _values(x) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densifying)."""
    return x.data if sp.issparse(x) else np.asarray(x)


def normalize_log1p(adata, *, target_sum: float = TARGET_SUM):
    """Return a copy of ``adata`` with ``X = log1p(normalize_total(X, target_sum))``.

    Parameters
    ----------
    adata
        Spot AnnData with raw counts in ``X``.
    target_sum
        Total counts per spot after normalisation.

    Returns
    -------
    AnnData
        A new object (obs, var, obsm and uns kept) with ``float32`` log-normalised ``X``.

    Raises
    ------
    InputError
        If there are no spots or genes, counts are NaN/infinite or negative, or every
        spot has zero counts.
    """
    import scanpy as sc

    source = _source(adata)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"the data is empty ({adata.n_obs} spots x {adata.n_vars} genes)", source)
    if not target_sum > 0:
        raise InputError(f"target_sum must be positive, got {target_sum}", source)
    values = _values(adata.X)
    if not np.all(np.isfinite(values)):
        raise InputError("the count matrix contains NaN or infinite values", source)
    if values.size and values.min() < 0:
        raise InputError("the count matrix contains negative values; raw counts are expected", source)
    out = adata.copy()
    if sp.issparse(out.X):
        out.X = sp.csr_matrix(out.X, dtype=np.float32)
    else:
        out.X = np.asarray(out.X, dtype=np.float32)
    totals = np.asarray(out.X.sum(axis=1)).ravel()
    if not np.any(totals > 0):
        raise InputError("every spot has zero counts; nothing to normalise", source)
    # Zero-count spots stay all-zero (scanpy leaves them untouched).
    sc.pp.normalize_total(out, target_sum=float(target_sum))
    sc.pp.log1p(out)
    out.uns.pop("log1p", None)
    return out


def total_counts(adata) -> np.ndarray:
    """``(n_spots,)`` float64 raw total counts per spot (what :func:`normalize_log1p` divides by).

    Parameters
    ----------
    adata
        Spot AnnData with raw counts in ``X``.
    """
    return np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()


def _check_genes(adata_log, genes: Sequence[str]) -> list[str]:
    source = _source(adata_log)
    if isinstance(genes, str):
        genes = [genes]
    genes = list(dict.fromkeys(str(g) for g in genes))  # de-duplicate, keep order
    if not genes:
        raise InputError("the gene list is empty", source)
    known = set(adata_log.var_names)
    unknown = [g for g in genes if g not in known]
    if unknown:
        names = list(adata_log.var_names)
        hints = []
        for g in unknown[:5]:
            close = difflib.get_close_matches(g, names, n=3)
            if close:
                hints.append(f"{g!r} (did you mean {', '.join(map(repr, close))}?)")
            else:
                hints.append(repr(g))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InputError(
            f"{len(unknown)} requested gene(s) are not in the data: {', '.join(hints)}{more}", source
        )
    return genes


def select_genes(adata_log, *, n_top: int = 1000, genes: Sequence[str] | None = None) -> list[str]:
    """Pick the genes to model.

    Parameters
    ----------
    adata_log
        Log-normalised AnnData (from :func:`normalize_log1p`).
    n_top
        Number of highly variable genes when ``genes`` is not given; all genes when
        larger than the number of genes.
    genes
        Explicit gene names; validated against ``adata_log.var_names``.

    Returns
    -------
    list of str
        The given genes (duplicates dropped), or the top ``n_top`` HVGs in var order.

    Raises
    ------
    InputError
        If a requested gene is unknown (with close-match suggestions), or ``n_top < 1``.
    """
    import scanpy as sc

    if genes is not None:
        return _check_genes(adata_log, genes)
    if int(n_top) < 1:
        raise InputError(f"the number of genes must be at least 1, got {n_top}", _source(adata_log))
    if n_top >= adata_log.n_vars:
        return [str(g) for g in adata_log.var_names]
    hvg = sc.pp.highly_variable_genes(adata_log, flavor="seurat", n_top_genes=int(n_top), inplace=False)
    # scanpy's cut-off can keep ties (genes alone in a mean bin all score 1.0); take exactly
    # n_top by normalised dispersion, ties broken by var order.
    score = np.nan_to_num(np.asarray(hvg["dispersions_norm"], dtype=np.float64), nan=-np.inf)
    chosen = np.sort(np.argsort(-score, kind="stable")[: int(n_top)])
    return [str(adata_log.var_names[i]) for i in chosen]


def top_mean_genes(adata_log, n: int = 50) -> list[str]:
    """The ``n`` genes with the highest mean log-normalised expression, highest first."""
    if int(n) < 1:
        raise InputError(f"the number of genes must be at least 1, got {n}", _source(adata_log))
    means = np.asarray(adata_log.X.mean(axis=0)).ravel()
    order = np.argsort(-means, kind="stable")[: int(n)]
    return [str(g) for g in adata_log.var_names[order]]


def dense_targets(adata_log, genes: Sequence[str]) -> np.ndarray:
    """Dense ``float32`` (n_spots, n_genes) matrix of ``adata_log`` restricted to ``genes``."""
    genes = [str(g) for g in genes]
    idx = adata_log.var_names.get_indexer(genes)
    if not genes or np.any(idx < 0):
        _check_genes(adata_log, genes)  # raises with a helpful message
    x = adata_log.X[:, idx]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)
