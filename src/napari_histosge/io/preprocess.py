"""Normalisation and gene selection: the training targets of every model.

Targets are ``log1p(normalize_total(target_sum=1e4))`` (scanpy's, computed as scanpy does), and the
genes are the top-N highly variable genes (``flavor="seurat"`` on the log data), the top-N
spatially variable genes (Moran's I on a spatial neighbour graph of the spots), both, or a
list the user gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..gene_lists import unknown_genes_message
from .markers import marker_genes

#: Counts per spot after ``normalize_total`` (before ``log1p``).
TARGET_SUM = 1e4
#: Fewest genes a section may have: with one, every normalised spot holds the same value.
MIN_GENES = 2


def _source(adata) -> str | None:
    info = adata.uns.get("histosge", {}) if hasattr(adata, "uns") else {}
    source = info.get("source") if isinstance(info, dict) else None
    return None if source in (None, "") else str(source)


def _values(x) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densifying)."""
    return x.data if sp.issparse(x) else np.asarray(x)


def _row_sums(x) -> np.ndarray:
    """Per-row sums accumulated in float64, in storage order, as scanpy's normalize_total adds them."""
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        out = np.zeros(x.shape[0], np.float64)
        rows = np.flatnonzero(np.diff(x.indptr))
        if len(rows):
            out[rows] = np.add.reduceat(x.data.astype(np.float64), x.indptr[rows])
        return out
    return np.asarray(x, dtype=np.float64).sum(axis=1)


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
        If there are no spots, fewer than :data:`MIN_GENES` genes, counts are NaN/infinite
        or negative, or every spot has zero counts.
    """
    source = _source(adata)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"the data is empty ({adata.n_obs} spots x {adata.n_vars} genes)", source)
    if adata.n_vars < MIN_GENES:
        raise InputError(
            f"the data has only {adata.n_vars} gene: normalising each spot by its total count makes every spot "
            "the same, so there is nothing to train on or compare; give the section's full count table", source)
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
    totals = _row_sums(out.X)
    if not np.any(totals > 0):
        raise InputError("every spot has zero counts; nothing to normalise", source)
    # scanpy's normalize_total + log1p, written out: importing scanpy takes longer than the
    # arithmetic, and a user opening a section would wait for it. Zero-count spots stay all-zero.
    # The same float32 steps as scanpy: per spot, counts / target_sum, then each value divided by it.
    factor = np.asarray(totals, dtype=np.float32) / np.float32(target_sum)
    factor[factor == 0] = 1.0
    if sp.issparse(out.X):
        x = out.X
        x.data /= np.repeat(factor, np.diff(x.indptr))
        np.log1p(x.data, out=x.data)
    else:
        x = np.log1p(out.X / factor[:, None])
    out.X = x
    return out


def total_counts(adata) -> np.ndarray:
    """``(n_spots,)`` float64 raw total counts per spot (what :func:`normalize_log1p` divides by).

    Parameters
    ----------
    adata
        Spot AnnData with raw counts in ``X``.
    """
    return np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()


def log1p_column(adata, gene: str, *, totals: np.ndarray | None = None, target_sum: float = TARGET_SUM) -> np.ndarray:
    """One gene of :func:`normalize_log1p` without normalising (or copying) the whole matrix.

    ``log1p(count / total * target_sum)`` per spot, 0 where a spot has no counts. Pass
    ``totals`` (:func:`total_counts`) to reuse them across genes: hundreds of thousands of
    Visium HD bins are recoloured gene after gene this way.
    """
    totals = total_counts(adata) if totals is None else np.asarray(totals, dtype=np.float64)
    col = adata[:, gene].X
    col = np.asarray(col.toarray() if sp.issparse(col) else col, dtype=np.float64).ravel()
    out = np.zeros_like(col)
    ok = totals > 0
    out[ok] = np.log1p(col[ok] / totals[ok] * float(target_sum))
    return out


def resolve_gene(adata, name: str) -> str | None:
    """The gene name (``var_names``) that ``name`` stands for, or ``None`` when unknown.

    ``name`` is a gene name as is, or a gene id of ``var["gene_ids"]`` (e.g. an Ensembl id,
    any case) standing for the name of its gene: readers name genes by symbol and keep the
    10x feature ids there; or, for data named by id, a symbol of ``var["gene_symbols"]``
    (:mod:`napari_histosge.io.gene_names`).

    Raises
    ------
    InputError
        If ``name`` is a symbol of two or more genes named by id (naming their ids).
    """
    name = str(name).strip()
    if name in adata.var_names:
        return name
    for column in ("gene_ids", "gene_symbols"):  # symbols: data named by id with a table of names
        if column in adata.var:
            other = pd.Index(adata.var[column].astype(str).str.lower())
            hit = np.flatnonzero(other == name.lower())
            if hit.size > 1 and column == "gene_symbols":  # one symbol, two Ensembl ids: which is unknown
                ids = [str(adata.var_names[i]) for i in hit]
                raise InputError(f"gene {name!r} names {len(ids)} genes of the data ({', '.join(ids)}): "
                                 "give the Ensembl id of the one you mean", _source(adata))
            if hit.size:
                return str(adata.var_names[hit[0]])
    return None


def _check_genes(adata_log, genes: Sequence[str]) -> list[str]:
    source = _source(adata_log)
    if isinstance(genes, str):
        genes = [genes]
    genes = [resolve_gene(adata_log, g) or str(g) for g in genes]  # gene ids stand for their names
    genes = list(dict.fromkeys(genes))  # de-duplicate, keep order
    if not genes:
        raise InputError("the gene list is empty", source)
    known = set(adata_log.var_names)
    unknown = [g for g in genes if g not in known]
    if unknown:
        raise InputError(unknown_genes_message(unknown, list(adata_log.var_names)), source)
    return genes


#: Gene selection methods of :func:`select_genes`.
GENE_METHODS = ("hvg", "spatial", "hvg+spatial")
#: Neighbours per spot in the spatial graph of Moran's I (a Visium spot's hexagonal ring).
SPATIAL_NEIGHBOURS = 6
#: A gene enters the spatial ranking only when detected in at least this share of spots ...
MIN_DETECTED_SHARE = 0.05
#: ... and in at least this many spots.
MIN_DETECTED_SPOTS = 10
#: Subtracted from the Moran's I of genes detected in fewer spots, so they rank last.
RARE_GENE_OFFSET = 100.0
#: Values per chunk of genes when computing Moran's I (float64: 128 MB).
CHUNK_VALUES = 2**24


def spatial_graph(xy: np.ndarray, *, k: int = SPATIAL_NEIGHBOURS, sections: Sequence | None = None) -> sp.csr_matrix:
    """Symmetric 0/1 graph joining each spot to its ``k`` nearest spots (never across sections).

    Parameters
    ----------
    xy
        ``(n, 2)`` spot positions (full-resolution ``(x, y)`` pixels).
    k
        Neighbours per spot (fewer where a section has fewer spots).
    sections
        Optional section label per spot: spots of different sections are never joined
        (their coordinates are separate frames that may overlap).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)`` float64, zero diagonal.

    Raises
    ------
    InputError
        If ``sections`` does not give one label per spot.
    """
    from sklearn.neighbors import NearestNeighbors

    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if sections is None:
        labels = np.zeros(len(xy), np.int64)
    elif len(sections) != len(xy):
        raise InputError(f"{len(sections)} section labels for {len(xy)} spots; give one label per spot")
    else:
        labels = np.unique(np.asarray(sections), return_inverse=True)[1]
    rows, cols = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        kk = min(int(k), len(members) - 1)
        if kk < 1:
            continue
        _, nearest = NearestNeighbors(n_neighbors=kk + 1).fit(xy[members]).kneighbors(xy[members])
        rows.append(np.repeat(members, kk))
        cols.append(members[nearest[:, 1:]].ravel())
    n = len(xy)
    if not rows:
        return sp.csr_matrix((n, n))
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n))
    return ((graph + graph.T) > 0).astype(np.float64).tocsr()


def morans_i(adata_log, *, k: int = SPATIAL_NEIGHBOURS, sections: Sequence | None = None,
             chunk: int | None = None) -> np.ndarray:
    """Moran's I of every gene on the spots' k-nearest-neighbour graph.

    ``I = n / S0 * (z' W z) / (z' z)`` with ``z`` the centred log expression, ``W`` the 0/1
    graph of :func:`spatial_graph` and ``S0`` its number of edges (as scanpy's
    ``sc.metrics.morans_i``). Near 1: neighbouring spots agree (a spatial pattern); near 0:
    no pattern. Computed in chunks of genes, so memory stays at ``n_spots x chunk`` values.

    Parameters
    ----------
    adata_log
        Log-normalised AnnData with positions in ``obsm["spatial"]``.
    k, sections
        The spatial graph (see :func:`spatial_graph`).
    chunk
        Genes per chunk; default: as many as keep a chunk near 16 million values (128 MB).

    Returns
    -------
    numpy.ndarray
        ``(n_genes,)`` float64; NaN for a gene constant over the spots.

    Raises
    ------
    InputError
        If ``obsm["spatial"]`` is missing or does not match the spots, or there are fewer
        than 3 spots.
    """
    source = _source(adata_log)
    xy = adata_log.obsm.get("spatial") if hasattr(adata_log, "obsm") else None
    if xy is None or np.shape(xy) != (adata_log.n_obs, 2) or not np.all(np.isfinite(np.asarray(xy, float))):
        raise InputError("spatial gene selection needs finite spot positions in obsm['spatial']", source)
    if adata_log.n_obs < 3:
        raise InputError(f"spatial gene selection needs at least 3 spots, got {adata_log.n_obs}", source)
    graph = spatial_graph(xy, k=k, sections=sections)
    edges = graph.sum()
    out = np.full(adata_log.n_vars, np.nan)
    step = int(chunk) if chunk is not None else max(1, CHUNK_VALUES // adata_log.n_obs)
    for start in range(0, adata_log.n_vars, step):
        x = adata_log.X[:, start:start + step]
        z = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
        z -= z.mean(axis=0)
        spread = (z * z).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = adata_log.n_obs / edges * (z * (graph @ z)).sum(axis=0) / spread
        out[start:start + z.shape[1]] = np.where(spread > 0, value, np.nan)
    return out


def _detected_enough(adata_log) -> np.ndarray:
    """Genes detected (nonzero) in at least MIN_DETECTED_SHARE and MIN_DETECTED_SPOTS of the spots."""
    x = adata_log.X
    detected = np.asarray((x > 0).sum(axis=0)).ravel() if sp.issparse(x) else (np.asarray(x) > 0).sum(axis=0)
    return detected >= max(MIN_DETECTED_SPOTS, MIN_DETECTED_SHARE * adata_log.n_obs)


def _dispersion_scores(adata_log, n_top: int) -> np.ndarray:
    """Normalised dispersion per gene (scanpy's seurat flavour); -inf where undefined."""
    import scanpy as sc

    hvg = sc.pp.highly_variable_genes(adata_log, flavor="seurat", n_top_genes=int(n_top), inplace=False)
    return np.nan_to_num(np.asarray(hvg["dispersions_norm"], dtype=np.float64), nan=-np.inf)


def _ranks(score: np.ndarray) -> np.ndarray:
    """0 for the highest score, ties by var order."""
    order = np.argsort(-score, kind="stable")
    ranks = np.empty(len(score), np.int64)
    ranks[order] = np.arange(len(score))
    return ranks


def gene_scores(adata_log, method: str, *, n_top: int = 1000, sections: Sequence | None = None) -> np.ndarray:
    """The per-gene score :func:`select_genes` takes the highest ``n_top`` of (higher is better).

    ``"hvg"``: normalised dispersion. ``"spatial"``: Moran's I, genes detected in too few
    spots after all others. ``"hvg+spatial"``: minus the better of a gene's two ranks, so
    the top ``n_top`` is about the top half of each list (the tie between a gene's two ranks
    broken by the other one).
    """
    if method not in GENE_METHODS:
        raise InputError(f"unknown gene selection method {method!r}; choose one of {', '.join(GENE_METHODS)}",
                         _source(adata_log))
    if method == "hvg":
        return _dispersion_scores(adata_log, n_top)
    moran = np.nan_to_num(morans_i(adata_log, sections=sections), nan=-np.inf)
    # genes detected in too few spots rank after all others (Moran's I stays within a few units)
    spatial = np.where(_detected_enough(adata_log), moran, moran - RARE_GENE_OFFSET)
    if method == "spatial":
        return spatial
    rank_s, rank_h = _ranks(spatial), _ranks(_dispersion_scores(adata_log, n_top))
    best, other = np.minimum(rank_s, rank_h), np.maximum(rank_s, rank_h)
    return -(best * (len(best) + 1) + other).astype(np.float64)


def select_genes(adata_log, *, n_top: int = 1000, genes: Sequence[str] | None = None, method: str = "hvg",
                 sections: Sequence | None = None, include: Sequence[str] | None = None,
                 markers: str | None = None) -> list[str]:
    """Pick the genes to model.

    Parameters
    ----------
    adata_log
        Log-normalised AnnData (from :func:`normalize_log1p`).
    n_top
        Number of genes when ``genes`` is not given; all genes when larger than the
        number of genes.
    genes
        Explicit gene names; validated against ``adata_log.var_names``.
    method
        How to rank genes when ``genes`` is not given: ``"hvg"``, highly variable genes
        (normalised dispersion, scanpy's seurat flavour on the log data); ``"spatial"``,
        Moran's I on the spots' 6-nearest-neighbour graph, among genes detected in at least
        5% of the spots and 10 spots (spatially structured genes, e.g. a tumour's markers);
        ``"hvg+spatial"``, the best of each gene's two ranks, about half of each list.
    sections
        Section label per spot, for ``"spatial"`` on several sections stacked together:
        neighbours are found within each section only.
    include
        Genes always chosen (e.g. a user's marker list), validated like ``genes``; the
        method's ranking fills the rest up to ``n_top`` (more than ``n_top`` are all kept).
    markers
        Known markers always chosen too (:func:`napari_histosge.io.markers.marker_genes`):
        ``"auto"`` (those of the tissue the spots express most), a tissue, or ``None``.

    Returns
    -------
    list of str
        The given genes (duplicates dropped), or ``n_top`` genes (``include``, the markers and
        the top of the ranking) in var order.

    Raises
    ------
    InputError
        If a requested gene is unknown (with close-match suggestions), ``n_top < 1``, the
        method is unknown, or ``"spatial"`` lacks spot positions.
    """
    if genes is not None:
        return _check_genes(adata_log, genes)
    wanted = set(_check_genes(adata_log, include)) if include is not None else set()
    if int(n_top) < 1:
        raise InputError(f"the number of genes must be at least 1, got {n_top}", _source(adata_log))
    if method not in GENE_METHODS:
        raise InputError(f"unknown gene selection method {method!r}; choose one of {', '.join(GENE_METHODS)}",
                         _source(adata_log))
    if n_top >= adata_log.n_vars:
        return [str(g) for g in adata_log.var_names]
    wanted |= set(marker_genes(adata_log, markers, n_top=int(n_top)))
    score = gene_scores(adata_log, method, n_top=int(n_top), sections=sections)
    score[np.isin(np.asarray(adata_log.var_names, dtype=str), list(wanted))] = np.inf
    # scanpy's own HVG cut-off can keep ties (genes alone in a mean bin all score 1.0); take
    # exactly n_top by score, ties broken by var order.
    chosen = np.sort(np.argsort(-score, kind="stable")[: max(int(n_top), len(wanted))])
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
        genes = _check_genes(adata_log, genes)  # gene ids become names; unknown genes raise
        idx = adata_log.var_names.get_indexer(genes)
    x = adata_log.X[:, idx]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)
