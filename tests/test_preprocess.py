"""Normalisation and gene selection."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from napari_histosge.errors import InputError
from napari_histosge.io.preprocess import TARGET_SUM, dense_targets, normalize_log1p, select_genes, top_mean_genes


def _counts(n_spots: int = 60, n_genes: int = 40, seed: int = 0, sparse: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    # Genes with very different means and dispersions, so HVGs are well defined.
    lam = rng.gamma(0.5, 4.0, size=(n_spots, n_genes)) * rng.uniform(0.2, 5, size=n_genes)
    x = rng.poisson(lam).astype(np.float32)
    a = ad.AnnData(
        X=sp.csr_matrix(x) if sparse else x,
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]),
        var=pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)]),
    )
    a.obsm["spatial"] = rng.uniform(0, 1000, (n_spots, 2))
    a.uns["histosge"] = {"source": "/data/sample", "platform": "unknown"}
    return a


@pytest.mark.parametrize("sparse", [True, False])
def test_normalize_log1p_scales_every_spot_to_target(sparse):
    a = _counts(sparse=sparse)
    before = a.X.copy()
    out = normalize_log1p(a)
    x = out.X.toarray() if sp.issparse(out.X) else out.X
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.expm1(x).sum(axis=1), TARGET_SUM, rtol=1e-4)
    # A copy: input untouched, annotations kept.
    assert (a.X != before).nnz == 0 if sparse else np.array_equal(a.X, before)
    np.testing.assert_array_equal(out.obsm["spatial"], a.obsm["spatial"])
    assert out.uns["histosge"]["source"] == "/data/sample"
    assert list(out.obs_names) == list(a.obs_names)


def test_normalize_log1p_keeps_zero_spots_zero():
    a = _counts()
    x = a.X.toarray()
    x[3] = 0
    a.X = sp.csr_matrix(x)
    out = normalize_log1p(a)
    assert out.X[3].sum() == 0
    assert np.isfinite(out.X.toarray()).all()


@pytest.mark.parametrize(
    ("value", "match"), [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative")]
)
def test_normalize_log1p_rejects_bad_counts(value, match):
    a = _counts(sparse=False)
    a.X[2, 5] = value
    with pytest.raises(InputError, match=match) as info:
        normalize_log1p(a)
    assert "/data/sample" in str(info.value)


def test_normalize_log1p_rejects_empty_data():
    a = _counts()
    a.X = sp.csr_matrix(a.shape, dtype=np.float32)
    with pytest.raises(InputError, match="zero counts"):
        normalize_log1p(a)
    with pytest.raises(InputError, match="empty"):
        normalize_log1p(_counts()[:0].copy())


def test_select_genes_matches_scanpy_seurat_hvgs_in_var_order():
    log = normalize_log1p(_counts(n_genes=80))
    genes = select_genes(log, n_top=15)
    assert len(genes) == 15
    hvg = sc.pp.highly_variable_genes(log, flavor="seurat", n_top_genes=15, inplace=False)
    disp = hvg["dispersions_norm"].to_numpy()
    # Exactly the 15 highest normalised dispersions, all among scanpy's own HVGs.
    assert set(genes) <= set(log.var_names[hvg["highly_variable"].to_numpy()])
    assert min(disp[log.var_names.get_indexer(genes)]) >= np.sort(disp)[-15]
    order = [list(log.var_names).index(g) for g in genes]
    assert order == sorted(order)


def test_select_genes_more_than_available_returns_all():
    log = normalize_log1p(_counts(n_genes=20))
    assert select_genes(log, n_top=1000) == list(log.var_names)


def test_select_genes_given_list_is_validated_with_suggestions():
    log = normalize_log1p(_counts())
    assert select_genes(log, genes=["GENE3", "GENE1", "GENE3"]) == ["GENE3", "GENE1"]
    with pytest.raises(InputError, match=r"GENE_3.*did you mean.*GENE3") as info:
        select_genes(log, genes=["GENE1", "GENE_3"])
    assert "/data/sample" in str(info.value)
    with pytest.raises(InputError, match="empty"):
        select_genes(log, genes=[])
    with pytest.raises(InputError, match="at least 1"):
        select_genes(log, n_top=0)


def test_top_mean_genes_and_dense_targets():
    log = normalize_log1p(_counts())
    top = top_mean_genes(log, n=5)
    means = np.asarray(log.X.mean(axis=0)).ravel()
    assert top == [log.var_names[i] for i in np.argsort(-means)[:5]]
    y = dense_targets(log, top)
    assert y.shape == (log.n_obs, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y[:, 0], log[:, top[0]].X.toarray().ravel())
    with pytest.raises(InputError, match="not in the data"):
        dense_targets(log, ["NOPE"])


@pytest.mark.realdata
def test_her2st_b4_normalise_and_hvgs(her2st_b4):
    counts = pd.read_csv(her2st_b4 / "B4.tsv.gz", sep="\t", index_col=0)
    a = ad.AnnData(X=sp.csr_matrix(counts.to_numpy(np.float32)),
                   obs=pd.DataFrame(index=counts.index.astype(str)), var=pd.DataFrame(index=counts.columns.astype(str)))
    a.var_names_make_unique()
    log = normalize_log1p(a)
    genes = select_genes(log, n_top=1000)
    assert len(genes) == 1000
    y = dense_targets(log, genes)
    assert y.shape == (a.n_obs, 1000) and np.isfinite(y).all() and y.min() >= 0
