"""Tests for hold-out splits, per-gene metrics, the kNN baseline and spatial ARI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_histosge.errors import InputError
from napari_histosge.evaluation.metrics import (
    gene_metrics,
    holdout_split,
    knn_baseline,
    read_layer_annotations,
    spatial_ari,
    summarize,
)

# ----------------------------------------------------------------------------- hold-out split


def test_holdout_split_deterministic_disjoint_complete() -> None:
    ids = [f"spot{i}" for i in range(100)]
    train, test = holdout_split(ids, 0.2, seed=7)
    assert len(test) == 20 and len(train) == 80
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(ids)
    assert train == [s for s in ids if s in set(train)]  # input order kept
    assert holdout_split(ids, 0.2, seed=7) == (train, test)
    assert holdout_split(ids, 0.2, seed=8)[1] != test


@pytest.mark.parametrize(
    "ids,fraction,match",
    [
        (["a", "b", "c"], 0.0, "between 0 and 1"),
        (["a", "b", "c"], 1.0, "between 0 and 1"),
        (["a", "b", "c"], -0.5, "between 0 and 1"),
        (["a", "b", "c"], 0.1, "empty test set"),
        (["a", "b", "c"], 0.9, "empty training set"),
        (["a", "a", "c"], 0.5, "unique"),
    ],
)
def test_holdout_split_bad_input(ids, fraction, match) -> None:
    with pytest.raises(InputError, match=match):
        holdout_split(ids, fraction, seed=0)


# ----------------------------------------------------------------------------- gene metrics


def test_gene_metrics_values() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 4))
    y[:, 3] = 2.5  # a constant gene
    pred = np.column_stack([y[:, 0], -y[:, 1], 3 * y[:, 2] + 1, y[:, 3]])
    m = gene_metrics(y, pred, ["same", "neg", "affine", "const"])
    assert list(m.columns) == ["pcc", "mse", "mae"] and list(m.index) == ["same", "neg", "affine", "const"]
    assert m.loc["same", "pcc"] == pytest.approx(1.0)
    assert m.loc["neg", "pcc"] == pytest.approx(-1.0)
    assert m.loc["affine", "pcc"] == pytest.approx(1.0)
    assert np.isnan(m.loc["const", "pcc"])
    assert m.loc["same", "mse"] == 0 and m.loc["const", "mae"] == 0
    assert m.loc["neg", "mse"] == pytest.approx(np.mean((2 * y[:, 1]) ** 2))
    assert m.loc["neg", "mae"] == pytest.approx(np.mean(np.abs(2 * y[:, 1])))
    # a constant prediction of a varying gene carries no information: PCC 0, not NaN, so
    # a model that collapses genes to a constant cannot drop them from the mean
    m2 = gene_metrics(y[:, :1], np.zeros((50, 1)), ["g"])
    assert m2.loc["g", "pcc"] == 0.0
    half_constant = np.column_stack([y[:, 0], np.zeros(50)])
    assert summarize(gene_metrics(y[:, :2], half_constant, ["a", "b"]))["mean_pcc"] == pytest.approx(0.5)


def test_gene_metrics_matches_numpy_and_accepts_sparse() -> None:
    rng = np.random.default_rng(1)
    y = rng.poisson(1.0, size=(80, 1000)).astype(float)
    pred = y + rng.normal(scale=2.0, size=y.shape)
    genes = [f"g{i}" for i in range(1000)]
    m = gene_metrics(sp.csr_matrix(y), pred, genes)
    for j in (0, 17, 999):
        if np.ptp(y[:, j]) > 0:
            assert m.iloc[j]["pcc"] == pytest.approx(np.corrcoef(y[:, j], pred[:, j])[0, 1])


@pytest.mark.parametrize(
    "shape_true,shape_pred,n_genes,match",
    [
        ((5, 3), (5, 4), 3, "same shape"),
        ((5,), (5,), 1, "2-D"),
        ((5, 3), (5, 3), 2, "2 gene names for 3"),
        ((0, 3), (0, 3), 3, "no spots"),
    ],
)
def test_gene_metrics_bad_shapes(shape_true, shape_pred, n_genes, match) -> None:
    with pytest.raises(InputError, match=match):
        gene_metrics(np.zeros(shape_true), np.zeros(shape_pred), [f"g{i}" for i in range(n_genes)])


def test_summarize() -> None:
    m = pd.DataFrame({"pcc": [0.2, 0.4, np.nan, 0.9], "mse": [1.0, 2.0, 3.0, 4.0], "mae": [1.0, 1.0, 1.0, 1.0]},
                     index=list("abcd"))
    s = summarize(m)
    assert s["mean_pcc"] == pytest.approx(0.5) and s["median_pcc"] == pytest.approx(0.4)
    assert s["mse"] == pytest.approx(2.5) and s["mae"] == 1.0
    assert s["n_genes"] == 4 and s["n_genes_with_pcc"] == 3
    sub = summarize(m, genes=["c", "d"])
    assert sub["mean_pcc"] == pytest.approx(0.9) and sub["n_genes"] == 2 and sub["n_genes_with_pcc"] == 1
    assert np.isnan(summarize(m, genes=["c"])["mean_pcc"])
    with pytest.raises(InputError, match="not in the metrics table"):
        summarize(m, genes=["a", "zzz"])
    with pytest.raises(InputError, match="lacks columns"):
        summarize(m.drop(columns="mae"))


# ----------------------------------------------------------------------------- kNN baseline


def test_knn_baseline_constant_field_and_exact_hits() -> None:
    rng = np.random.default_rng(2)
    txy = rng.uniform(0, 1000, size=(200, 2))
    qxy = rng.uniform(0, 1000, size=(50, 2))
    const = np.full((200, 3), [1.5, -2.0, 7.0])
    assert np.allclose(knn_baseline(txy, const, qxy), const[:50])  # IDW of a constant is exact
    y = rng.normal(size=(200, 3))
    pred = knn_baseline(txy, sp.csr_matrix(y), txy[:10], k=6)
    assert np.array_equal(pred, y[:10])  # an exact hit returns that spot's value
    vec = knn_baseline(txy, y[:, 0], txy[:5] + 1e-9)
    assert vec.shape == (5,) and np.allclose(vec, y[:5, 0])


def test_knn_baseline_weights() -> None:
    txy = np.array([[0.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    y = np.array([[0.0], [4.0], [1000.0]])
    pred = knn_baseline(txy, y, np.array([[1.0, 0.0]]), k=2)  # weights 1/1 and 1/2
    assert pred[0, 0] == pytest.approx((0 * 1 + 4 * 0.5) / 1.5)
    assert knn_baseline(txy, y, np.array([[1.0, 0.0]]), k=50).shape == (1, 1)  # k capped at n


@pytest.mark.parametrize(
    "txy,y,qxy,k,match",
    [
        (np.zeros((3, 3)), np.zeros((3, 1)), np.zeros((1, 2)), 6, r"\(n, 2\)"),
        (np.zeros((3, 2)), np.zeros((4, 1)), np.zeros((1, 2)), 6, "one row of values"),
        (np.zeros((0, 2)), np.zeros((0, 1)), np.zeros((1, 2)), 6, "one row of values"),
        (np.zeros((3, 2)), np.zeros((3, 1)), np.zeros((1, 2)), 0, "k must be at least 1"),
    ],
)
def test_knn_baseline_bad_input(txy, y, qxy, k, match) -> None:
    with pytest.raises(InputError, match=match):
        knn_baseline(txy, y, qxy, k=k)


# ----------------------------------------------------------------------------- ARI


def _blobs(n_per: int = 60, n_genes: int = 40, seed: int = 0) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(4, n_genes))
    x = np.vstack([c + rng.normal(size=(n_per, n_genes)) for c in centres])
    labels = [f"L{i}" for i in range(4) for _ in range(n_per)]
    return x, labels


def test_spatial_ari_recovers_separated_domains() -> None:
    x, labels = _blobs()
    assert spatial_ari(x, labels) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(1)
    assert abs(spatial_ari(x, list(rng.permutation(labels)))) < 0.1  # labels unrelated to data


def test_spatial_ari_ignores_missing_labels_and_logs() -> None:
    x, labels = _blobs()
    labels = list(labels)
    labels[0], labels[61], labels[130] = None, np.nan, ""
    x[0] = x[61] = x[130] = 1e6  # would be their own cluster if not dropped
    assert spatial_ari(x, labels) == pytest.approx(1.0, abs=1e-9)
    counts = np.expm1(np.abs(_blobs()[0]))
    assert spatial_ari(counts, _blobs()[1], log1p=True, n_clusters=4) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    "labels,n_clusters,match",
    [
        (["a"] * 10, None, "two distinct labels"),
        (["a", "b"] * 4, None, "got 8 labels"),
        (["a", "b"] * 5, 1, "n_clusters must be between"),
        (["a", "b"] * 5, 11, "n_clusters must be between"),
    ],
)
def test_spatial_ari_bad_input(labels, n_clusters, match) -> None:
    with pytest.raises(InputError, match=match):
        spatial_ari(np.random.default_rng(0).normal(size=(10, 5)), labels, n_clusters=n_clusters)


# ----------------------------------------------------------------------------- layer annotations


def test_read_layer_annotations(tmp_path: Path) -> None:
    f = tmp_path / "x_layer_annotations.tsv"
    f.write_text("barcode\tlayer\nAAA-1\tL1\nCCC-1\t\nGGG-1\tWM\n")
    s = read_layer_annotations(f)
    assert list(s.index) == ["AAA-1", "CCC-1", "GGG-1"] and s.name == "layer"
    assert s["AAA-1"] == "L1" and pd.isna(s["CCC-1"])


def test_read_layer_annotations_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_layer_annotations(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("spot\tdomain\nAAA-1\tL1\n")
    with pytest.raises(InputError, match=r"bad\.tsv.*missing \['barcode', 'layer'\]"):
        read_layer_annotations(bad)
    dup = tmp_path / "dup.tsv"
    dup.write_text("barcode\tlayer\nAAA-1\tL1\nAAA-1\tL2\n")
    with pytest.raises(InputError, match="duplicate barcodes"):
        read_layer_annotations(dup)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="cannot read"):
        read_layer_annotations(empty)


@pytest.mark.slow
def test_real_dlpfc_151675_layers_and_ari(dlpfc_151675: Path) -> None:
    sc = pytest.importorskip("scanpy")
    layers = read_layer_annotations(dlpfc_151675 / "151675_layer_annotations.tsv")
    assert set(layers.dropna().unique()) == {"L1", "L2", "L3", "L4", "L5", "L6", "WM"}
    pos = pd.read_csv(dlpfc_151675 / "spatial" / "tissue_positions_list.csv", header=None)
    in_tissue = set(pos.loc[pos[1] == 1, 0])
    assert set(layers.index) <= in_tissue  # annotated barcodes are spots under tissue

    adata = sc.read_10x_h5(dlpfc_151675 / "filtered_feature_bc_matrix.h5")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat")
    adata = adata[:, adata.var["highly_variable"]]
    labels = layers.reindex(adata.obs_names)  # unannotated spots -> NaN -> ignored
    assert labels.notna().mean() > 0.95
    ari = spatial_ari(adata.X, labels.to_numpy(), seed=0)
    assert np.isfinite(ari) and ari > 0.05


# ----------------------------------------------------------------------------- scoring a predictions file
def _measured(n_spots: int, n_genes: int, seed: int = 0):
    import anndata as ad

    counts = np.random.default_rng(seed).poisson(5.0, (n_spots, n_genes)).astype(np.float32)
    return ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _predicted(ids, genes, seed: int = 1, std: bool = False):
    import anndata as ad

    rng = np.random.default_rng(seed)
    pred = ad.AnnData(X=rng.random((len(ids), len(genes))).astype(np.float32),
                      obs=pd.DataFrame(index=list(ids)), var=pd.DataFrame(index=list(genes)))
    if std:
        pred.layers["std"] = rng.random(pred.shape).astype(np.float32) + 0.1
    return pred


def test_evaluate_predictions_scores_shared_spots_and_genes_in_prediction_order() -> None:
    from napari_histosge.evaluation.predictions import evaluate_predictions
    from napari_histosge.io.preprocess import dense_targets, normalize_log1p

    measured = _measured(30, 6)
    ids, genes = ["s7", "nowhere", "s3", "s20", "s0"], ["g4", "gX", "g1", "g0"]
    pred = _predicted(ids, genes, std=True)
    result = evaluate_predictions(pred, measured)
    assert result.spots == ["s7", "s3", "s20", "s0"] and result.genes == ["g4", "g1", "g0"]
    assert result.n_unmatched_spots == 1
    truth = dense_targets(normalize_log1p(measured)[result.spots], result.genes)
    values = np.asarray(pred[result.spots, result.genes].X)
    expected = gene_metrics(truth, values, result.genes)
    pd.testing.assert_frame_equal(result.metrics, expected)
    assert result.summary == summarize(expected)
    from napari_histosge.evaluation.uncertainty import uncertainty_metrics

    spread = np.asarray(pred[result.spots, result.genes].layers["std"])
    assert result.uncertainty == uncertainty_metrics(truth, values, spread)
    assert result.ari is None


def test_evaluate_predictions_layers_ari_and_errors() -> None:
    from napari_histosge.evaluation.predictions import evaluate_predictions

    measured = _measured(40, 5)
    pred = _predicted(measured.obs_names, measured.var_names)
    layers = pd.Series(["L1"] * 20 + ["L2"] * 19 + [None], index=measured.obs_names)
    result = evaluate_predictions(pred, measured, layers=layers)
    assert set(result.ari) == {"predicted", "measured"} and all(-1 <= v <= 1 for v in result.ari.values())
    assert result.uncertainty is None
    with pytest.raises(InputError, match="no predicted spot id matches"):
        evaluate_predictions(_predicted(["a", "b"], measured.var_names), measured)
    with pytest.raises(InputError, match="no predicted gene matches"):
        evaluate_predictions(_predicted(measured.obs_names, ["x", "y"]), measured)


def test_evaluate_predictions_is_linear_in_the_spots() -> None:
    """Tens of thousands of spots in well under a second's work each way (no per-spot set rebuild)."""
    import time

    from napari_histosge.evaluation.predictions import evaluate_predictions

    measured = _measured(40_000, 4)
    pred = _predicted(measured.obs_names[::-1], measured.var_names)
    start = time.perf_counter()
    result = evaluate_predictions(pred, measured)
    assert len(result.spots) == 40_000
    assert time.perf_counter() - start < 20.0  # rebuilding a 40k-id set per spot takes minutes
