"""The sub-spot pattern from the histology: a model of other sections draws each gene's pattern within a footprint.

A ``cellridge`` model (:mod:`.cellridge`) trained on other sections maps a grid cell's
standardised image features to log1p expression. Relative to its own mean over a
footprint, its prediction at the footprint's cells is a within-footprint pattern on the
log scale; the sub-spot model multiplies its cells' rates by ``exp(weight * pattern)``
(its image modulation, :mod:`.network`), and consistency with the measurement removes the
footprint's level, so only the pattern inside it is kept.

Each gene's weight (0 to 1) is chosen on the section's own footprints, one scale up and
by count splitting: every footprint's counts are split binomially into halves A and B
(:func:`napari_histosge.evaluation.count_split.split_counts`), half A is pooled into squares
of about four footprints, and each footprint is predicted as its square's value plus the
weighted pattern's deviation from the square's mean, scored against half B (squared error of
half B's deviation from its own square mean). A pattern
that does not predict where, inside a square, a gene is higher gets weight 0: the prior
keeps only what helps on this section. Half B's counts are in no input of what it scores,
so no weight is rewarded for reproducing counting noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ...errors import InputError
from ...evaluation.count_split import split_counts
from ...features.cell_raster import IDENTITY
from ...training.grouping import median_spacing
from ..registry import load_model
from .calibration import pool_footprints
from .meta import CellRidgeMeta

#: Weights tried per gene.
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Count splits the weights are scored over (averaged).
SPLIT_SEEDS = (0, 1)
#: Fewest pooled squares the weights are chosen on; with fewer the pattern is not used (weight 0).
MIN_SQUARES = 8
#: Cell sizes (µm) of the prior and of the sub-spot model may differ by this factor at most.
CELL_SIZE_TOLERANCE = 1.1
#: Pixel sizes of the prior's slides and this one may differ by this factor at most.
MPP_TOLERANCE = 2.0


@dataclass(frozen=True)
class PriorPattern:
    """The prior's pattern as the sub-spot model stores it, and how much of it each gene keeps."""

    #: ``(G, D)`` on the section's standardised cell features: weight times the prior's map (0 for a gene it lacks).
    coef: np.ndarray
    #: ``(G,)`` the weight chosen per gene (0 for a gene the prior does not predict).
    weight: np.ndarray
    #: Genes the prior predicts, of the model's.
    shared: int
    squares: int

    def to_meta(self, path: str) -> dict:
        """Plain values for the model's metadata."""
        kept = self.weight[self.weight > 0]
        return {"path": path, "shared_genes": self.shared, "squares": self.squares,
                "genes_kept": int(len(kept)), "mean_weight": float(self.weight.mean()) if len(self.weight) else 0.0}


def load_prior(path: str, adata, cell_um: float | None, genes_here) -> object:
    """The ``--prior`` model at ``path``, checked against the section; every refusal is one line.

    Parameters
    ----------
    path
        A checkpoint.
    adata
        The section the sub-spot model is fitted on.
    cell_um
        The side of its cells in µm (``None``: unknown, the pixel size is missing).
    genes_here
        The section's gene names.

    Raises
    ------
    InputError
        If the file is missing or corrupt, the model does not predict from cells' image
        features, shares no gene with the section, or was trained on another platform,
        pixel size or cell size.
    """
    prior = load_model(path, device="cpu")
    name, meta = prior.config.model, CellRidgeMeta.of(prior.meta)
    if not hasattr(prior, "pattern_coef") or meta.feature_identity != IDENTITY:
        raise InputError(f"the prior is a {name} model, which does not predict expression from the image of "
                         "grid cells: train a cellridge model on other sections (histosge train S1 S2 "
                         "--model cellridge) and give that", path)
    if not set(prior.genes) & set(map(str, genes_here)):
        raise InputError(f"the prior model's {len(prior.genes)} genes and this section's share none "
                         "(another organism, or Ensembl ids against symbols?)", path)
    info = adata.uns.get("histosge", {})
    platforms = {str(s.get("platform")) for s in meta.sections or []} - {"unknown", "None", "slide"}
    here = str(info.get("platform", "unknown"))
    if platforms and here not in ("unknown", "None", "slide") and here not in platforms:
        raise InputError(f"the prior model was trained on {', '.join(sorted(platforms))} sections and this "
                         f"section is {here}: train the prior on sections of this platform", path)
    _check_scale(meta, info.get("mpp"), cell_um, path)
    return prior


def _check_scale(meta: CellRidgeMeta, mpp, cell_um: float | None, path: str) -> None:
    """The prior's cells must be this model's cells in µm, read from slides of a similar pixel size."""
    if cell_um is None or meta.cell_um is None:
        raise InputError("a histology prior needs the pixel size of this slide and of the prior's slides (the cells "
                         "must be the same size in µm), and one of them is unknown", path)
    ratio = float(cell_um) / float(meta.cell_um)
    if not 1 / CELL_SIZE_TOLERANCE <= ratio <= CELL_SIZE_TOLERANCE:
        raise InputError(f"the prior model's cells are {meta.cell_um:.3g} µm and this model's {cell_um:.3g} µm: "
                         f"give --cell-um {meta.cell_um:.3g} (the image features of a cell depend on its size)",
                         path)
    mpps = [float(s["mpp"]) for s in meta.sections or [] if s.get("mpp")]
    if mpp and mpps and not any(1 / MPP_TOLERANCE <= float(mpp) / m <= MPP_TOLERANCE for m in mpps):
        raise InputError(f"the prior model's slides have {min(mpps):.3g}-{max(mpps):.3g} µm per pixel and this one "
                         f"{float(mpp):.3g}: its image features would not mean the same here", path)


def prior_pattern(prior, genes: list[str], z: np.ndarray, weights: sp.csr_matrix, counts: sp.spmatrix,
                  columns: np.ndarray, centres: np.ndarray) -> PriorPattern:
    """The prior's pattern for ``genes``, each gene's weight chosen on the footprints (see the module).

    Parameters
    ----------
    prior
        A model from :func:`load_prior`.
    genes
        The sub-spot model's genes.
    z
        ``(cells, D)`` standardised features of the cells under the footprints.
    weights
        ``(footprints, cells)`` footprint weights (rows sum to one).
    counts, columns
        ``(footprints, genes of the section)`` raw counts, and the column of each of ``genes``.
    centres
        ``(footprints, 2)`` centres.
    """
    index = {g: i for i, g in enumerate(prior.genes)}
    rows = [index.get(g, -1) for g in genes]
    has = np.array([r >= 0 for r in rows])
    full = np.zeros((len(genes), z.shape[1]))
    full[has] = prior.pattern_coef()[[r for r in rows if r >= 0]]
    labels = pool_footprints(centres, median_spacing(centres, undefined=1.0))
    squares = int(labels.max()) + 1 if len(labels) else 0
    weight = np.zeros(len(genes))
    if squares >= MIN_SQUARES and has.any():
        footprint_pattern = np.asarray(weights @ (z @ full[has].T))
        weight[has] = choose_weights(footprint_pattern, counts, np.asarray(columns)[has], labels)
    return PriorPattern(coef=weight[:, None] * full, weight=weight, shared=int(has.sum()), squares=squares)


def choose_weights(pattern: np.ndarray, counts: sp.spmatrix, columns: np.ndarray, labels: np.ndarray,
                   seeds=SPLIT_SEEDS) -> np.ndarray:
    """Per gene, the weight of ``pattern`` ``(footprints, G)`` that best predicts half B within its squares.

    ``counts`` are the footprints' raw counts of every gene (their totals normalise),
    ``columns`` those of the ``G`` patterned genes; ``labels`` the square of each footprint.
    Half B's log rate, centred on its own square mean, is compared with the weighted
    pattern's deviation from the square's mean (squared error): a correlation would ignore
    the pattern's size and, for a sparse gene, favour full weight. Half A, pooled, is the
    level a map starts from; the weight only scales the deviation, so half A drops out of
    the score and half B is in no input of it. Ties go to the smaller weight: a pattern has
    to help to be kept.
    """
    k = int(labels.max()) + 1
    member = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    size = np.asarray(member.sum(axis=1))
    deviation = pattern - (np.asarray(member @ pattern) / size)[labels]
    errors = np.zeros((len(WEIGHTS), pattern.shape[1]))
    for seed in seeds:
        _, half_b = split_counts(counts, seed)
        target = _log_rate(half_b, columns)
        centred = target - (np.asarray(member @ target) / size)[labels]
        for i, w in enumerate(WEIGHTS):
            errors[i] += ((centred - w * deviation) ** 2).sum(axis=0)
    best, genes = np.zeros(pattern.shape[1], dtype=int), np.arange(pattern.shape[1])
    for i in range(1, len(WEIGHTS)):
        best = np.where(errors[i] < errors[best, genes] * (1 - 1e-9), i, best)
    return np.asarray(WEIGHTS)[best]


def _log_rate(counts: sp.spmatrix, columns: np.ndarray) -> np.ndarray:
    """log1p of counts per 1e4 (of each row's total over every gene) at ``columns``."""
    counts = sp.csr_matrix(counts)
    total = np.maximum(np.asarray(counts.sum(axis=1), np.float64), 1.0)
    return np.log1p(np.asarray(counts[:, columns].todense(), np.float64) / total * 1e4)
