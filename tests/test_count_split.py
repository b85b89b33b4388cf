"""Count splitting: two halves that add up to the counts, binomial, reproducible per seed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from napari_histosge.errors import InputError
from napari_histosge.evaluation.count_split import split_counts


def _counts(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(np.linspace(0.1, 40.0, 30), size=(400, 30))


@pytest.mark.parametrize("as_sparse", [False, True])
def test_halves_add_up_to_the_counts_and_are_integers(as_sparse: bool) -> None:
    counts = _counts()
    a, b = split_counts(sp.csr_matrix(counts) if as_sparse else counts, seed=3)
    assert a.dtype == np.int64 and b.dtype == np.int64
    np.testing.assert_array_equal((a + b).toarray(), counts)
    assert a.min() >= 0 and b.min() >= 0


def test_first_half_is_half_the_counts_on_average() -> None:
    counts = _counts()
    a, _ = split_counts(counts, seed=1)
    # Binomial(C, 1/2) over 12,000 entries: the mean ratio is 1/2 within a few standard errors.
    assert abs(a.sum() / counts.sum() - 0.5) < 0.005
    totals = counts.sum(axis=0)
    per_gene = np.asarray(a.sum(axis=0)).ravel() / totals
    # Each gene's share is Binomial(total, 1/2) / total: within five of its standard errors.
    assert np.all(np.abs(per_gene - 0.5) < 5 * np.sqrt(0.25 / totals))


def test_halves_are_uncorrelated_given_the_counts() -> None:
    # A and C - A are negatively correlated given C; across Poisson counts they are independent.
    counts = np.random.default_rng(2).poisson(10.0, size=(20_000, 1))
    a, b = split_counts(counts, seed=0)
    assert abs(np.corrcoef(a.toarray().ravel(), b.toarray().ravel())[0, 1]) < 0.03


def test_same_seed_repeats_and_other_seeds_differ() -> None:
    counts = _counts()
    first, _ = split_counts(counts, seed=0)
    again, _ = split_counts(counts, seed=0)
    other, _ = split_counts(counts, seed=1)
    np.testing.assert_array_equal(first.toarray(), again.toarray())
    assert (first != other).nnz > 0


def test_a_generator_advances_between_splits() -> None:
    rng = np.random.default_rng(0)
    counts = _counts()
    one, _ = split_counts(counts, rng)
    two, _ = split_counts(counts, rng)
    assert (one != two).nnz > 0


@pytest.mark.parametrize(("counts", "message"), [
    (np.array([[1.5, 2.0]]), "whole numbers"),
    (np.array([[-1.0, 2.0]]), "negative"),
    (np.array([[np.nan, 2.0]]), "NaN"),
])
def test_not_raw_counts_is_one_clear_error(counts: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        split_counts(counts, seed=0)


def test_a_matrix_of_text_is_refused_in_one_line() -> None:
    with pytest.raises(InputError, match="not a numeric matrix") as info:
        split_counts(np.array([["a", "b"], ["c", "d"]], dtype=object), seed=0)
    assert "\n" not in str(info.value)
