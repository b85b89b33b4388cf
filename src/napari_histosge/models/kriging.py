"""Local kriging of the measured neighbours: the conditioned model's estimate from its neighbourhood.

Each query's ``k`` nearest measured spots are combined with simple-kriging weights of a
Gaussian-process prior with an exponential kernel ``exp(-d / length_scale)`` plus a nugget
(``noise_ratio`` = noise / signal variance), on per-gene z-scored values (prior mean 0).
The weights come from the geometry of the whole neighbourhood (query-to-neighbour AND
neighbour-to-neighbour distances), so clustered neighbours share weight and the lattice's
directions matter. Every gene gets its own kernel from a small grid, chosen by leave-one-out
error on the training spots: smooth, heavily shrunk estimates for noisy genes, sharp ones for
genes with a strong spatial pattern.

Optionally (``rank`` > 0) the genes are coupled: the top principal directions of the
training expression are kriged as their own "genes" and each gene's remainder separately,
so structure shared by many genes (e.g. cortical layers) is estimated from all of them.
It is used only where k-fold cross-validation on the training spots says it lowers the
error, since it helps on some sections and hurts on others (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .neighbours import neighbour_context

#: Kernel length scales, in median spot spacings.
LENGTH_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Nugget / signal variance ratios: large values shrink a noisy gene towards its mean.
NOISE_RATIOS = (0.03, 0.3, 3.0, 30.0, 300.0)
#: Kernel configurations (length scale x noise ratio); config ``c`` is
#: ``(LENGTH_SCALES[c // len(NOISE_RATIOS)], NOISE_RATIOS[c % len(NOISE_RATIOS)])``.
N_CONFIGS = len(LENGTH_SCALES) * len(NOISE_RATIOS)
_CHUNK = 512
#: Coupling genes must lower the cross-validated error by this share: on genes that share
#: nothing the two errors differ by far less, and a coin flip should not add a basis.
COUPLING_MARGIN = 1e-3
#: Spots scored when choosing kernels: on larger sets (Visium HD) a random subset of them is
#: scored, still against all their neighbours; a gene's error needs hundreds of spots, not all.
MAX_SCORED = 4000


def kriging_weights(geo: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Simple-kriging weights of every neighbour under every kernel configuration.

    Parameters
    ----------
    geo
        ``(B, K, GEO_DIM)`` neighbour geometry (offsets and distance in spacings), as from
        :func:`.neighbours.neighbour_context`.
    valid
        ``(B, K)`` bool, ``False`` at padding slots (these get weight 0).

    Returns
    -------
    torch.Tensor
        ``(B, K, N_CONFIGS)`` float32 weights.
    """
    geo = geo.double()
    k = valid.shape[1]
    mask = valid.double()
    offsets = geo[..., :2]
    d_nn = torch.cdist(offsets, offsets)
    d_q = geo[..., 2]
    pair_mask = mask[:, :, None] * mask[:, None, :]
    eye = torch.eye(k, dtype=torch.float64, device=geo.device)
    noise = torch.tensor(NOISE_RATIOS, dtype=torch.float64, device=geo.device)
    out = []
    for scale in LENGTH_SCALES:
        # Padding slots become isolated unit variables with zero covariance to the query.
        cov = torch.exp(-d_nn / scale) * pair_mask + eye * (1 - mask)[:, :, None]
        cross = torch.exp(-d_q / scale) * mask
        system = cov[:, None] + noise[None, :, None, None] * eye  # (B, R, K, K)
        chol = torch.linalg.cholesky(system)
        w = torch.cholesky_solve(cross[:, None, :, None].expand(-1, len(noise), -1, -1), chol)
        out.append(w[..., 0].transpose(1, 2))  # (B, K, R)
    return torch.cat(out, dim=2).float()


def krige(weights: torch.Tensor, values: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
    """Kriged estimate of every column with its own kernel configuration.

    Parameters
    ----------
    weights
        ``(B, K, N_CONFIGS)`` from :func:`kriging_weights`.
    values
        ``(B, K, M)`` the neighbours' values.
    config
        ``(M,)`` long: configuration index per column.

    Returns
    -------
    torch.Tensor
        ``(B, M)``.
    """
    out = values.new_zeros(values.shape[0], values.shape[2])
    for c in torch.unique(config).tolist():
        cols = (config == c).nonzero().squeeze(1)
        out[:, cols] = torch.einsum("bk,bkm->bm", weights[..., c], values.index_select(2, cols))
    return out


@dataclass
class KrigingFit:
    """Chosen kernels: per gene, and (with gene coupling) per principal direction.

    ``basis`` is ``(G, r)`` (``r`` = 0 without coupling); ``cv_error`` holds the k-fold
    cross-validated mean squared error of the estimate without and with coupling.
    """

    gene_config: np.ndarray
    basis: np.ndarray
    score_config: np.ndarray
    cv_error: dict[str, float]


def _weights_for(positions: np.ndarray, queries: np.ndarray, k: int, spacing: float,
                 exclude: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor]:
    idx, geo, valid = neighbour_context(positions, queries, k, spacing=spacing, exclude=exclude)
    chunks = [kriging_weights(torch.from_numpy(geo[s:s + _CHUNK]), torch.from_numpy(valid[s:s + _CHUNK]))
              for s in range(0, len(idx), _CHUNK)]
    return idx, torch.cat(chunks) if chunks else torch.zeros(0, idx.shape[1], N_CONFIGS)


def _errors(idx: np.ndarray, w: torch.Tensor, values: np.ndarray, truth: np.ndarray) -> torch.Tensor:
    """``(N_CONFIGS, M)`` summed squared error of every configuration for every column."""
    v = torch.from_numpy(np.ascontiguousarray(values, np.float32))
    t = torch.from_numpy(np.ascontiguousarray(truth, np.float32))
    total = torch.zeros(N_CONFIGS, v.shape[1])
    for s in range(0, len(idx), _CHUNK):
        est = torch.einsum("qkc,qkm->qcm", w[s:s + _CHUNK], v[torch.from_numpy(idx[s:s + _CHUNK])])
        total += (est - t[s:s + _CHUNK, None, :]).square().sum(0)
    return total


def _decompose(y: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(basis (G, r), scores (n, r), remainder (n, G))`` of z-scored ``y``."""
    r = min(int(rank), *y.shape)
    if r <= 0:
        return np.zeros((y.shape[1], 0), np.float32), np.zeros((len(y), 0), np.float32), y
    _, _, vt = np.linalg.svd(y.astype(np.float64), full_matrices=False)
    basis = vt[:r].T.astype(np.float32)
    scores = y @ basis
    return basis, scores, y - scores @ basis.T


def _loo_weights(positions: np.ndarray, k: int, spacing: float,
                 rows: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Weights for predicting each of ``rows`` from the other spots (its own row left out)."""
    return _weights_for(positions, positions[rows], k, spacing, rows)


def _choose(idx: np.ndarray, w: torch.Tensor, y: np.ndarray, rows: np.ndarray,
            rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Configurations with the least leave-one-out error over ``rows``: ``(gene_config, basis, score_config)``."""
    basis, scores, rest = _decompose(y, rank)
    gene_config = _errors(idx, w, rest, rest[rows]).argmin(0).numpy()
    score_config = _errors(idx, w, scores, scores[rows]).argmin(0).numpy() if basis.shape[1] \
        else np.zeros(0, np.int64)
    return gene_config, basis, score_config


def _subset(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most ``MAX_SCORED`` of ``rows``, in order."""
    return rows if len(rows) <= MAX_SCORED else np.sort(rng.choice(rows, MAX_SCORED, replace=False))


def _estimate(idx: np.ndarray, w: torch.Tensor, y_ref: np.ndarray, gene_config: np.ndarray,
              basis: np.ndarray, score_config: np.ndarray) -> np.ndarray:
    nb = torch.from_numpy(np.ascontiguousarray(y_ref, np.float32))[torch.from_numpy(idx)]
    return estimate(w, nb, torch.from_numpy(gene_config), torch.from_numpy(basis),
                    torch.from_numpy(score_config)).numpy()


def estimate(weights: torch.Tensor, neighbour_values: torch.Tensor, gene_config: torch.Tensor,
             basis: torch.Tensor, score_config: torch.Tensor) -> torch.Tensor:
    """Kriged ``(B, G)`` estimate from the neighbours' ``(B, K, G)`` z-scored values.

    With a non-empty ``basis`` ``(G, r)`` the principal-direction scores and each gene's
    remainder are kriged with their own configurations and recombined.
    """
    if basis.shape[1] == 0:
        return krige(weights, neighbour_values, gene_config)
    scores = neighbour_values @ basis  # (B, K, r)
    rest = neighbour_values - scores @ basis.T
    return krige(weights, scores, score_config) @ basis.T + krige(weights, rest, gene_config)


def fit_kriging(positions: np.ndarray, y: np.ndarray, *, k: int, spacing: float, rank: int = 16,
                folds: int = 5, seed: int = 0) -> KrigingFit:
    """Choose each gene's kernel on the training spots, and whether to couple genes.

    Parameters
    ----------
    positions
        ``(n, 2)`` training spot positions (pixels).
    y
        ``(n, G)`` z-scored expression of the training spots.
    k
        Neighbours per query.
    spacing
        Median spot spacing in pixels (the kernels' length unit).
    rank
        Principal directions for gene coupling; 0 never couples.
    folds
        Cross-validation folds for the coupling decision (spots split at random).
    seed
        Seed of the fold assignment.

    Returns
    -------
    KrigingFit
    """
    positions = np.asarray(positions, np.float64)
    y = np.asarray(y, np.float32)
    n = len(positions)
    cv = {"without_coupling": float("nan"), "with_coupling": float("nan")}
    couple = False
    pick = np.random.default_rng([seed, 15485863])
    if rank > 0 and n >= 2 * folds and folds >= 2:
        fold = np.random.default_rng([seed, 104729]).permutation(n) % folds
        sse = {"without_coupling": 0.0, "with_coupling": 0.0}
        count = 0
        for f in range(folds):
            train_rows = np.flatnonzero(fold != f)
            held = _subset(np.flatnonzero(fold == f), pick)
            idx, w = _weights_for(positions[train_rows], positions[held], k, spacing, None)
            scored = _subset(np.arange(len(train_rows)), pick)
            loo = _loo_weights(positions[train_rows], k, spacing, scored)
            for key, r in (("without_coupling", 0), ("with_coupling", rank)):
                gc, basis, sc = _choose(*loo, y[train_rows], scored, r)
                est = _estimate(idx, w, y[train_rows], gc, basis, sc)
                sse[key] += float(np.square(est - y[held]).sum())
            count += y[held].size
        cv = {key: value / count for key, value in sse.items()}
        couple = cv["with_coupling"] < (1 - COUPLING_MARGIN) * cv["without_coupling"]
    scored = _subset(np.arange(n), pick)
    gene_config, basis, score_config = _choose(*_loo_weights(positions, k, spacing, scored), y, scored,
                                               rank if couple else 0)
    return KrigingFit(gene_config.astype(np.int64), basis, score_config.astype(np.int64), cv)
