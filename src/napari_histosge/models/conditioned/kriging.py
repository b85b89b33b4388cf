"""Local kriging of the measured neighbours: the conditioned model's estimate from its neighbourhood.

Each query's ``k`` nearest measured spots are combined with simple-kriging weights of a
Gaussian-process prior with an exponential kernel ``exp(-d / length_scale)`` plus a nugget
(``noise_ratio`` = noise / signal variance), on per-gene z-scored values (prior mean 0).
The weights come from the geometry of the whole neighbourhood (query-to-neighbour AND
neighbour-to-neighbour distances), so clustered neighbours share weight and the lattice's
directions matter.

Every gene takes one of three estimators (:data:`PLAIN`, :data:`COUPLED`, :data:`DRIFT`),
each with its own kernels, chosen on the training spots by :mod:`.kriging_fit`:

- plain: the gene's own values are kriged;
- coupled: the top principal directions of the expression are kriged as their own
  "genes" and the gene's remainder separately, so structure shared by many genes (e.g.
  cortical layers) is estimated from all of them;
- drift: as coupled, but the principal scores are the image trend (:mod:`.image_trend`)
  at the query plus the kriged difference between the neighbours' scores and their trend
  (kriging with an external drift).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...errors import InputError

#: Kernel length scales, in median spot spacings.
LENGTH_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Nugget / signal variance ratios: large values shrink a noisy gene towards its mean.
NOISE_RATIOS = (0.03, 0.3, 3.0, 30.0, 300.0)
#: Kernel configurations (length scale x noise ratio); config ``c`` is
#: ``(LENGTH_SCALES[c // len(NOISE_RATIOS)], NOISE_RATIOS[c % len(NOISE_RATIOS)])``.
N_CONFIGS = len(LENGTH_SCALES) * len(NOISE_RATIOS)
#: Per-gene estimators (values of :attr:`KrigingPlan.choice`).
PLAIN, COUPLED, DRIFT = 0, 1, 2
ESTIMATORS = ("plain", "coupled", "drift")


class KrigingPlan(NamedTuple):
    """Per-gene estimators and their kernels, as tensors (the conditioned model's buffers).

    ``plain_config`` and ``rest_config`` are ``(G,)`` kernel configurations of a gene's own
    values and of its remainder off the ``(G, r)`` ``basis``; ``score_config`` and
    ``drift_config`` are ``(r,)`` configurations of the principal scores and of their
    difference from the image trend; ``choice`` is ``(G,)``: :data:`PLAIN`, :data:`COUPLED`
    or :data:`DRIFT`.
    """

    plain_config: torch.Tensor
    rest_config: torch.Tensor
    basis: torch.Tensor
    score_config: torch.Tensor
    drift_config: torch.Tensor
    choice: torch.Tensor


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


def estimate(weights: torch.Tensor, neighbour_values: torch.Tensor, plan: KrigingPlan,
             neighbour_drift: torch.Tensor | None, query_drift: torch.Tensor | None) -> torch.Tensor:
    """Kriged ``(B, G)`` estimate from the neighbours' ``(B, K, G)`` z-scored values.

    Parameters
    ----------
    weights
        ``(B, K, N_CONFIGS)`` from :func:`kriging_weights`.
    neighbour_values
        ``(B, K, G)`` the neighbours' z-scored values.
    plan
        Per-gene estimators and kernels.
    neighbour_drift, query_drift
        ``(B, K, r)`` and ``(B, r)``: the image trend of the principal scores at the
        neighbours and at the query (used by :data:`DRIFT` genes only; ``None`` where
        no gene is one).

    Returns
    -------
    torch.Tensor
        ``(B, G)``.

    Raises
    ------
    InputError
        The plan has :data:`DRIFT` genes but ``neighbour_drift`` or ``query_drift`` is ``None``.
    """
    out = neighbour_values.new_zeros(neighbour_values.shape[0], neighbour_values.shape[2])
    plain = plan.choice == PLAIN
    if plain.any():
        cols = plain.nonzero().squeeze(1)
        out[:, cols] = krige(weights, neighbour_values.index_select(2, cols), plan.plain_config[cols])
    if plan.basis.shape[1] == 0 or plain.all():
        return out
    cols = (~plain).nonzero().squeeze(1)
    basis = plan.basis[cols]  # (g, r): the principal directions restricted to these genes
    scores = neighbour_values @ plan.basis  # (B, K, r)
    rest = neighbour_values.index_select(2, cols) - scores @ basis.T
    low = torch.zeros_like(out[:, cols])
    coupled = plan.choice[cols] == COUPLED
    if coupled.any():
        low += (krige(weights, scores, plan.score_config) @ basis.T) * coupled
    if not coupled.all():
        if neighbour_drift is None or query_drift is None:
            raise InputError("the kriging plan has drift genes but no image trend at the neighbours and the query")
        drifted = query_drift + krige(weights, scores - neighbour_drift, plan.drift_config)
        low += (drifted @ basis.T) * ~coupled
    out[:, cols] = low + krige(weights, rest, plan.rest_config[cols])
    return out
