"""Normalisation and gene selection."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from napari_histosge.errors import InputError
from napari_histosge.io.preprocess import (
    TARGET_SUM,
    dense_targets,
    morans_i,
    normalize_log1p,
    select_genes,
    spatial_graph,
    top_mean_genes,
)


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


@pytest.mark.parametrize("sparse", [True, False])
def test_normalize_log1p_is_scanpys_to_the_bit(sparse):
    """The targets are scanpy's normalize_total + log1p, computed without importing scanpy."""
    a = _counts(n_spots=200, n_genes=300, sparse=sparse)
    x = a.X.toarray() if sparse else a.X.copy()
    x[5] = 0  # a spot without counts
    x *= np.random.default_rng(1).uniform(0.5, 30.0, (len(x), 1)).astype(np.float32).round()  # deep and shallow
    a.X = sp.csr_matrix(x) if sparse else x
    ref = a.copy()
    sc.pp.normalize_total(ref, target_sum=TARGET_SUM)
    sc.pp.log1p(ref)
    out = normalize_log1p(a)
    got = out.X.toarray() if sparse else out.X
    want = ref.X.toarray() if sparse else ref.X
    np.testing.assert_array_equal(got, want)
    assert "log1p" not in out.uns


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


def _patterned(n_side: int = 14, n_pattern: int = 20, n_noise: int = 20, seed: int = 0) -> ad.AnnData:
    """Spots on a square grid; the first genes follow a smooth spatial pattern with modest
    variance, the others are spatially random with a much larger dispersion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    xy = np.stack([xx.ravel(), yy.ravel()], -1).astype(float) * 100
    phase = rng.uniform(0, 2 * np.pi, n_pattern)
    wave = np.sin(xy[:, :1] / 400 + phase) * np.cos(xy[:, 1:] / 500)
    pattern = 20 * np.exp(0.8 * wave)
    noise = rng.gamma(0.3, 60, size=(len(xy), n_noise))  # spatially random, overdispersed
    counts = rng.poisson(np.hstack([pattern, noise, np.full((len(xy), 5), 200.0)])).astype(np.float32)
    names = ([f"PAT{i}" for i in range(n_pattern)] + [f"NOISE{i}" for i in range(n_noise)]
             + [f"HOUSE{i}" for i in range(5)])
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"s{i}" for i in range(len(xy))]),
                   var=pd.DataFrame(index=names))
    a.obsm["spatial"] = xy
    a.uns["histosge"] = {"source": "/data/grid", "platform": "unknown"}
    return a


def test_morans_i_follows_its_formula():
    log = normalize_log1p(_patterned())
    values = morans_i(log)
    graph = spatial_graph(log.obsm["spatial"]).toarray()
    assert np.array_equal(graph, graph.T) and graph.diagonal().sum() == 0
    assert graph.sum(1).min() == 6  # its 6 nearest, and whoever has it among theirs
    x = log.X.toarray().astype(np.float64)
    for j in (0, 25, 41):
        z = x[:, j] - x[:, j].mean()
        expected = len(z) / graph.sum() * (z @ graph @ z) / (z @ z)
        assert values[j] == pytest.approx(expected, rel=1e-9)
    assert values[:20].min() > 0.5 > 0.15 > np.abs(values[20:40]).max()
    np.testing.assert_allclose(morans_i(log, chunk=3), values, rtol=1e-12)  # chunks change nothing


def test_spatial_selection_finds_patterned_genes_hvg_misses():
    log = normalize_log1p(_patterned())
    spatial = select_genes(log, n_top=20, method="spatial")
    hvg = select_genes(log, n_top=20, method="hvg")
    assert all(g.startswith("PAT") for g in spatial)
    assert sum(g.startswith("PAT") for g in hvg) < 5
    both = select_genes(log, n_top=20, method="hvg+spatial")
    assert 8 <= sum(g.startswith("PAT") for g in both) <= 12
    assert set(both) <= set(spatial) | set(hvg)
    order = [list(log.var_names).index(g) for g in both]
    assert order == sorted(order)


def test_spatial_selection_puts_rarely_detected_genes_last():
    a = _patterned()
    x = a.X.toarray()
    x[:, 0] = 0
    x[[0, 1], 0] = 50  # two neighbouring spots only: a high Moran's I, but detected in 1% of spots
    a.X = sp.csr_matrix(x)
    log = normalize_log1p(a)
    assert morans_i(log)[0] > 0
    assert "PAT0" not in select_genes(log, n_top=30, method="spatial")


def test_spatial_graph_never_joins_sections():
    xy = np.random.default_rng(0).uniform(0, 1000, (40, 2))
    stacked = np.vstack([xy, xy])  # two sections in the same frame
    graph = spatial_graph(stacked, sections=["a"] * 40 + ["b"] * 40)
    assert graph[:40, 40:].nnz == 0 and graph[40:, :40].nnz == 0
    np.testing.assert_array_equal(graph[:40, :40].toarray(), spatial_graph(xy).toarray())
    with pytest.raises(InputError, match="3 section labels for 80 spots"):
        spatial_graph(stacked, sections=["a", "b", "a"])


def test_select_genes_method_errors():
    log = normalize_log1p(_patterned())
    with pytest.raises(InputError, match="unknown gene selection method 'moran'.*hvg, spatial") as info:
        select_genes(log, n_top=10, method="moran")
    assert "/data/grid" in str(info.value)
    no_positions = log.copy()
    del no_positions.obsm["spatial"]
    with pytest.raises(InputError, match=r"obsm\['spatial'\]"):
        select_genes(no_positions, n_top=10, method="spatial")
    nan_positions = log.copy()
    nan_positions.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(InputError, match="finite spot positions"):
        morans_i(nan_positions)
    with pytest.raises(InputError, match="at least 3 spots"):
        morans_i(log[:2].copy())
    # hvg needs no positions; asking for every gene needs no ranking
    assert len(select_genes(no_positions, n_top=10)) == 10
    assert select_genes(no_positions, n_top=1000, method="spatial") == list(log.var_names)


@pytest.mark.realdata
def test_her2st_b4_spatial_genes_hold_markers_the_hvgs_miss(her2st_b4):
    from napari_histosge.io import read_spots

    log = normalize_log1p(read_spots(her2st_b4))
    markers = {"ERBB2", "GRB7", "KRT19", "COL1A1", "IGKC"}
    hvg = set(select_genes(log, n_top=1000, method="hvg"))
    spatial = set(select_genes(log, n_top=1000, method="spatial"))
    assert not markers & hvg
    assert {"GRB7", "COL1A1", "IGKC"} <= spatial


def test_select_genes_always_includes_a_marker_list():
    log = normalize_log1p(_patterned())
    chosen = select_genes(log, n_top=10, method="spatial", include=["NOISE3", "HOUSE1"])
    assert len(chosen) == 10 and {"NOISE3", "HOUSE1"} <= set(chosen)
    assert set(chosen) - {"NOISE3", "HOUSE1"} == set(select_genes(log, n_top=8, method="spatial"))
    many = [f"NOISE{i}" for i in range(12)]
    assert select_genes(log, n_top=10, include=many) == many  # more markers than n_top: all kept
    with pytest.raises(InputError, match="NOISE_3.*did you mean"):
        select_genes(log, n_top=10, include=["NOISE_3"])
