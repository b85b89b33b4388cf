"""Count splitting: one measurement of raw counts thinned into two independent halves.

Every count ``C`` of a spot and gene is split as ``A ~ Binomial(C, 1/2)``, ``B = C - A``.
Under Poisson counting noise the halves are independent draws around the same expression
at half the depth ("data thinning", Neufeld et al. 2022; "molecular cross-validation",
Batson et al. 2019), so a model fitted on half ``A`` and scored against half ``B`` is not
rewarded for reproducing the noise of the counts it was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError


def integer_counts(x: Any) -> sp.csr_matrix:
    """``x`` as a CSR matrix of int64 counts, or an InputError saying why it is not raw counts."""
    try:
        matrix = sp.csr_matrix(x)
        values = np.asarray(matrix.data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the counts are not a numeric matrix ({type(exc).__name__}): raw counts are "
                         "expected") from None
    if values.size and not np.all(np.isfinite(values)):
        raise InputError("the count matrix contains NaN or infinite values; raw counts are expected")
    if values.size and values.min() < 0:
        raise InputError("the count matrix contains negative values; raw counts are expected")
    if values.size and not np.all(values == np.round(values)):
        raise InputError("the count matrix is not whole numbers (normalised data?); splitting counts "
                         "needs the raw integer counts")
    return sp.csr_matrix((values.astype(np.int64), matrix.indices, matrix.indptr), shape=matrix.shape)


def split_counts(counts: Any, seed: int | np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split raw counts binomially into two independent halves.

    Parameters
    ----------
    counts
        ``(spots, genes)`` raw integer counts, dense or sparse.
    seed
        Seed of a :func:`numpy.random.default_rng`, or a generator to draw from (the
        draws advance it, so successive calls give independent splits).

    Returns
    -------
    tuple of scipy.sparse.csr_matrix
        ``(A, B)``, int64, each of ``counts``' shape: ``A ~ Binomial(C, 1/2)`` per entry and
        ``B = C - A``, so ``A + B == C``.

    Raises
    ------
    InputError
        If ``counts`` are not non-negative whole numbers.
    """
    matrix = integer_counts(counts)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    first = matrix.copy()
    first.data = rng.binomial(matrix.data, 0.5)
    second = matrix.copy()
    second.data = matrix.data - first.data
    return first, second
