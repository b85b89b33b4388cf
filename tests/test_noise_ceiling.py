"""The noise ceiling on a synthetic Poisson section whose rate field is known."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_histosge.errors import InputError
from napari_histosge.evaluation.noise_ceiling import (
    ceiling_from_reliability,
    noise_ceiling,
    split_half_reliability,
    summarize_ceiling,
)
from napari_histosge.io.preprocess import normalize_log1p

N_SPOTS = 500
N_EACH = 15
# A large flat gene keeps the spot totals nearly constant, so normalisation adds no signal.
FILLER_RATE = 1e6


def _section(seed: int = 0):
    """Poisson counts around a smooth field: flat genes, weak low-depth genes, strong deep genes."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (N_SPOTS, 2))
    field = np.sin(3 * xy[:, 0]) + np.cos(4 * xy[:, 1])
    groups = {"flat": (5.0, 0.0), "weak": (3.0, 0.4), "strong": (300.0, 1.5)}
    rates, names = [], []
    for group, (depth, amplitude) in groups.items():
        for i in range(N_EACH):
            rates.append(depth * np.exp(amplitude * field))
            names.append(f"{group}{i}")
    rates.append(np.full(N_SPOTS, FILLER_RATE))
    names.append("filler")
    rate = np.column_stack(rates)
    adata = anndata.AnnData(
        X=sp.csr_matrix(rng.poisson(rate).astype(np.float32)),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(N_SPOTS)]), var=pd.DataFrame(index=names),
    )
    return adata, rate


def _group(name: str) -> list[str]:
    return [f"{name}{i}" for i in range(N_EACH)]


@pytest.fixture(scope="module")
def section():
    return _section()


@pytest.fixture(scope="module")
def reliability(section):
    adata, _ = section
    return split_half_reliability(adata, _group("flat") + _group("weak") + _group("strong"), n_splits=3)


def test_flat_genes_have_no_reliability_and_strong_genes_a_ceiling_near_one(reliability):
    flat, strong = reliability[_group("flat")], reliability[_group("strong")]
    assert abs(flat.mean()) < 0.05
    assert ceiling_from_reliability(strong).min() > 0.97
    # The ceiling rises with signal and depth.
    ceiling = ceiling_from_reliability(reliability)
    assert ceiling[_group("flat")].mean() < ceiling[_group("weak")].mean() < ceiling[_group("strong")].mean()


def test_a_perfect_predictor_of_the_rate_field_scores_at_the_ceiling(section, reliability):
    adata, rate = section
    measured = np.asarray(normalize_log1p(adata).X.todense())
    truth = np.log1p(rate / rate.sum(axis=1, keepdims=True) * 1e4)
    for group in ("weak", "strong"):
        cols = adata.var_names.get_indexer(_group(group))
        pcc = [np.corrcoef(truth[:, j], measured[:, j])[0, 1] for j in cols]
        ceiling = ceiling_from_reliability(reliability[_group(group)]).mean()
        assert np.mean(pcc) == pytest.approx(ceiling, abs=0.05), group


def test_shuffled_control_removes_the_shared_signal(section, reliability):
    adata, _ = section
    control = split_half_reliability(adata, _group("strong"), n_splits=2, shuffled=True)
    assert abs(control.mean()) < 0.05
    assert reliability[_group("strong")].min() > 0.9


def test_summary_counts_clipped_genes_and_matches_the_series(reliability):
    summary = summarize_ceiling(reliability, _group("flat"))
    flat = reliability[_group("flat")]
    assert summary["n_genes"] == N_EACH and summary["n_undefined"] == 0
    assert summary["n_clipped"] == int((flat < 0).sum())
    assert summary["mean_ceiling"] == pytest.approx(float(np.sqrt(flat.clip(lower=0)).mean()))


def test_seeded_splits_repeat_and_spots_restrict(section):
    adata, _ = section
    genes = _group("weak")[:3]
    first = noise_ceiling(adata, genes, n_splits=2, seed=4)
    pd.testing.assert_series_equal(first, noise_ceiling(adata, genes, n_splits=2, seed=4))
    half = noise_ceiling(adata, genes, spots=list(adata.obs_names[:200]), n_splits=2, seed=4)
    assert not np.allclose(first, half)
    # A dense DataFrame gives the same numbers as the sparse AnnData.
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    pd.testing.assert_series_equal(first, noise_ceiling(frame, genes, n_splits=2, seed=4))


def test_constant_gene_is_undefined_and_a_single_count_has_no_reliability():
    counts = pd.DataFrame({"zero": [0] * 5, "single": [0, 0, 1, 0, 0], "a": [30, 10, 40, 10, 50],
                           "b": [90, 20, 60, 50, 30]}, index=[f"s{i}" for i in range(5)])
    reliability = split_half_reliability(counts, n_splits=3)
    assert np.isnan(reliability["zero"])
    # One count lands in one half, leaving the other constant: nothing is shared.
    assert reliability["single"] == 0.0
    summary = summarize_ceiling(reliability)
    assert summary["n_undefined"] == 1 and summary["n_genes"] == 3


@pytest.mark.parametrize("change, message", [
    (lambda x: x * 0.5, "whole numbers"),
    (lambda x: x - 2, "negative"),
    (lambda x: x.where(x > 1, np.nan), "NaN"),
])
def test_non_count_input_is_refused(section, change, message):
    adata, _ = section
    frame = pd.DataFrame(adata.X[:20].toarray(), index=adata.obs_names[:20], columns=adata.var_names)
    with pytest.raises(InputError, match=message):
        noise_ceiling(change(frame + 1), n_splits=1)


def test_bad_selections_are_refused(section):
    adata, _ = section
    with pytest.raises(InputError, match="not in the data: 'NOPE'"):
        noise_ceiling(adata, ["flat0", "NOPE"])
    with pytest.raises(InputError, match="spot"):
        noise_ceiling(adata, spots=["s1", "ghost"])
    with pytest.raises(InputError, match="more than once"):
        noise_ceiling(adata, ["flat0", "flat0"])
    with pytest.raises(InputError, match="at least 3 spots"):
        noise_ceiling(adata, spots=["s1", "s2"])
    with pytest.raises(InputError, match="splits"):
        noise_ceiling(adata, n_splits=0)
    with pytest.raises(InputError, match="AnnData"):
        noise_ceiling(np.ones((5, 5)))
    with pytest.raises(InputError, match="not in the data"):
        summarize_ceiling(split_half_reliability(adata, ["flat0"], n_splits=1), ["weak0"])
