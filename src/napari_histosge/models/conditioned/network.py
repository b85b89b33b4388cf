"""A model conditioned on histology AND the measured low-resolution expression (HaDM-ST style).

For a query position it sees its own image features and the ``k`` nearest measured spots
(their expression, image features and offsets). Genes are handled on a per-gene z-scored
scale (statistics of the training spots) so every gene weighs the same in the losses.

Components, each switchable (see :class:`.config.ConditionedConfig`):

- **semantic distillation** (``distill``): image inputs are projected to ``distill_dim``
  and an auxiliary head must predict the expression from that projection alone;
- **neighbour conditioning** (``use_neighbours``): the measured neighbours' values are
  combined by local kriging (:mod:`.kriging`: per gene plain, coupled through the
  expression's principal directions, or around the image trend of those directions,
  ``image_trend``, :mod:`.image_trend`; chosen with its kernels on the training spots when
  the model is built, :mod:`.kriging_fit`), with the sequencing-depth term for sparse genes
  (``depth_term``, :mod:`.sequencing_depth`), plus ``gain_g (A(s_q) - A(mean_k s_k))``, the
  distilled image->expression head ``A`` applied to the image difference between the query
  and its neighbours; then a zero-initialised residual MLP;
- **diffusion** (``diffusion``): a small conditional denoiser over the residual gene vector
  ``y - mean``, sampled with deterministic DDIM in a few steps; samples give a per-gene spread;
- **channel-aware adversarial term** (``adversarial`` > 0): a discriminator over per-gene
  spatial patches (the gene's value at the query next to its measured neighbours' values);
- **HisToSGE companion** (``histosge_weight`` > 0): ``histosge_members`` HisToSGE models
  (image + position, :mod:`napari_histosge.models.histosge`) trained on the same spots
  travel inside this one as ``histosge``; the prediction blends their mean into the
  conditional mean (see
  :class:`~napari_histosge.models.conditioned.trained.ConditionedTrainedModel`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InputError
from ..histosge import HisToSGE
from .kriging import KrigingPlan, estimate, krige, kriging_weights
from .kriging_fit import KrigingFit

#: Genes the discriminator looks at per step (random subset): keeps the adversarial term cheap.
ADV_GENES = 64


def _cosine_alpha_bar(steps: int) -> torch.Tensor:
    """Cumulative signal level per diffusion step (cosine schedule, Nichol & Dhariwal)."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return (f[1:] / f[0]).clamp(1e-5, 0.9999).float()


class ConditionedModel(nn.Module):
    """Histology + measured-neighbour generator.

    Parameters
    ----------
    in_dim
        Width of the (z-scored) image input: image features + mean RGB.
    n_genes
        Genes predicted.
    dim
        Hidden width.
    dropout
        Dropout in the residual and denoiser MLPs.
    distill_dim
        Width of the distilled image representation.
    neighbours
        Measured neighbours per query (the discriminator's patch size).
    use_neighbours, distill, diffusion
        Switch components on/off.
    adversarial
        Weight of the channel-aware adversarial term (0 builds no discriminator).
    diffusion_steps
        Training noise levels of the diffusion schedule.
    n_ref
        Size of the stored reference set (the measured spots).
    n_basis
        Principal directions used to couple genes in the kriging (0: none).
    histosge_kwargs
        Constructor arguments of the companion :class:`.histosge.HisToSGE` models (``None``: none).
    n_companions
        How many companion models (an ensemble; their mean is blended in).
    sequencing_depth
        Carry the sequencing-depth term (:mod:`.sequencing_depth`): the reference spots'
        log depth and each gene's slope on it.

    Notes
    -----
    The kriging plan and the image trend are buffers filled from
    :class:`.kriging_fit.KrigingFit` by :meth:`set_kriging`; they are not trained.
    """

    # Buffers (registered in __init__), declared so type checkers see tensors, not modules.
    ref_positions: torch.Tensor
    ref_targets: torch.Tensor
    ref_image: torch.Tensor
    gene_mean: torch.Tensor
    gene_std: torch.Tensor
    plain_config: torch.Tensor
    rest_config: torch.Tensor
    score_config: torch.Tensor
    drift_config: torch.Tensor
    choice: torch.Tensor
    basis: torch.Tensor
    ref_drift: torch.Tensor
    trend_weight: torch.Tensor
    trend_bias: torch.Tensor
    ref_depth: torch.Tensor
    depth_slope: torch.Tensor
    depth_config: torch.Tensor
    alpha_bar: torch.Tensor

    def __init__(
        self,
        *,
        in_dim: int,
        n_genes: int,
        dim: int = 256,
        dropout: float = 0.0,
        distill_dim: int = 64,
        neighbours: int = 8,
        use_neighbours: bool = True,
        distill: bool = True,
        diffusion: bool = True,
        adversarial: float = 0.0,
        diffusion_steps: int = 100,
        n_ref: int = 0,
        n_basis: int = 0,
        histosge_kwargs: dict | None = None,
        n_companions: int = 1,
        sequencing_depth: bool = False,
    ) -> None:
        super().__init__()
        for label, value in (("in_dim", in_dim), ("n_genes", n_genes), ("dim", dim), ("distill_dim", distill_dim),
                             ("neighbours", neighbours), ("diffusion_steps", diffusion_steps),
                             ("n_companions", n_companions)):
            if int(value) < 1:
                raise InputError(f"model setting {label} must be at least 1, got {value}")
        g, ds = int(n_genes), int(distill_dim)
        self.in_dim, self.n_genes, self.k = int(in_dim), g, int(neighbours)
        self.use_neighbours, self.distill, self.use_diffusion = bool(use_neighbours), bool(distill), bool(diffusion)
        self.adversarial = float(adversarial)
        # The reference set travels inside the weights file (buffers are part of state_dict).
        self.register_buffer("ref_positions", torch.zeros(int(n_ref), 2, dtype=torch.float64))
        self.register_buffer("ref_targets", torch.zeros(int(n_ref), g))  # z-scored
        self.register_buffer("ref_image", torch.zeros(int(n_ref), self.in_dim))  # z-scored
        self.register_buffer("gene_mean", torch.zeros(g))
        self.register_buffer("gene_std", torch.ones(g))
        # The kriging plan (chosen from the training spots, see .kriging_fit.fit_kriging).
        r = int(n_basis)
        for name, size in (("plain_config", g), ("rest_config", g), ("score_config", r), ("drift_config", r),
                           ("choice", g)):
            self.register_buffer(name, torch.zeros(size, dtype=torch.long))
        self.register_buffer("basis", torch.zeros(g, r))
        # The image trend of the principal scores, at the reference spots and as a linear map.
        self.register_buffer("ref_drift", torch.zeros(int(n_ref), r))
        self.register_buffer("trend_weight", torch.zeros(self.in_dim, r))
        self.register_buffer("trend_bias", torch.zeros(r))
        # The sequencing-depth term (see .sequencing_depth): z-scored log depth of the
        # reference spots, each gene's slope on it and the depth's own kernel configuration.
        self.use_depth = bool(sequencing_depth)
        if self.use_depth:
            self.register_buffer("ref_depth", torch.zeros(int(n_ref)))
            self.register_buffer("depth_slope", torch.zeros(g))
            self.register_buffer("depth_config", torch.zeros(1, dtype=torch.long))

        self.project = nn.Sequential(nn.Linear(self.in_dim, dim), nn.GELU(), nn.Linear(dim, ds), nn.LayerNorm(ds))
        self.aux = nn.Linear(ds, g)  # distilled image -> expression
        self.diff_gain = nn.Parameter(torch.zeros(g))
        self.encode = nn.Linear(g, dim)
        self.context_dim = 2 * ds + dim
        # Layers created in network order: a seed initialises them in that order.
        residual_in, residual_out = nn.Linear(self.context_dim, dim), nn.Linear(dim, g)
        nn.init.zeros_(residual_out.weight)
        nn.init.zeros_(residual_out.bias)
        self.residual = nn.Sequential(residual_in, nn.GELU(), nn.Dropout(dropout), residual_out)
        if self.use_diffusion:
            self.register_buffer("alpha_bar", _cosine_alpha_bar(int(diffusion_steps)))
            self.t_embed = nn.Embedding(int(diffusion_steps), dim)
            self.d_in = nn.Linear(g, dim)
            self.d_ctx = nn.Linear(self.context_dim, dim)
            # Predicts the clean residual (x0), from zero: an untrained denoiser samples the mean.
            denoiser_hidden, denoiser_out = nn.Linear(dim, dim), nn.Linear(dim, g)
            nn.init.zeros_(denoiser_out.weight)
            nn.init.zeros_(denoiser_out.bias)
            self.denoiser = nn.Sequential(nn.GELU(), denoiser_hidden, nn.GELU(), nn.Dropout(dropout), denoiser_out)
        # The companion HisToSGE models (trained on their own, before this model; never by its losses).
        self.histosge = (nn.ModuleList([HisToSGE(**histosge_kwargs) for _ in range(int(n_companions))])
                         if histosge_kwargs else None)
        if self.adversarial > 0:
            self.gene_embed = nn.Embedding(g, 16)
            self.discriminator = nn.Sequential(nn.Linear(1 + 2 * self.k + 16, 64), nn.LeakyReLU(0.2),
                                               nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    # -- the deterministic conditional mean ------------------------------------------------
    def forward(self, img_q: torch.Tensor, ref_index: torch.Tensor, geo: torch.Tensor,
                valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Conditional mean for a batch of queries, on the z-scored gene scale.

        Parameters
        ----------
        img_q
            ``(B, in_dim)`` z-scored image inputs of the queries.
        ref_index
            ``(B, K)`` rows of the reference set (the neighbours).
        geo
            ``(B, K, GEO_DIM)`` neighbour geometry from :func:`.neighbours.neighbour_context`.
        valid
            ``(B, K)`` bool, ``False`` at padding slots.

        Returns
        -------
        dict
            ``mean`` ``(B, G)``, ``aux`` ``(B, G)`` (image-only prediction), ``context``
            ``(B, context_dim)`` (what the denoiser is conditioned on); with the depth term,
            ``depth`` ``(B,)``: the neighbours' kriged z-scored log depth at each query.
        """
        s_q = self.project(img_q)
        aux_q = self.aux(s_q)
        if self.use_neighbours:
            with torch.no_grad():  # geometry only: nothing to learn in the kriging weights
                weights = kriging_weights(geo, valid).to(img_q.dtype)
            plan = KrigingPlan(self.plain_config, self.rest_config, self.basis, self.score_config,
                               self.drift_config, self.choice)
            query_drift = img_q @ self.trend_weight + self.trend_bias
            values = self.ref_targets[ref_index]
            if self.use_depth:
                # The genes' kriging sees their neighbours' values less the depth's share; the
                # depth is kriged with its own kernel and added back (see .sequencing_depth).
                depth_nb = self.ref_depth[ref_index][..., None]
                values = values - depth_nb * self.depth_slope
            kriged = estimate(weights, values, plan, self.ref_drift[ref_index], query_drift)
            if self.use_depth:
                depth_q = krige(weights, depth_nb, self.depth_config)  # (B, 1) z-scored log depth
                kriged = kriged + depth_q * self.depth_slope
            m = valid[..., None].to(s_q.dtype)
            s_nb = (self.project(self.ref_image[ref_index]) * m).sum(1) / m.sum(1).clamp_min(1.0)
            # The image difference between the query and its neighbourhood, through the aux head.
            base = kriged + self.diff_gain * (aux_q - self.aux(s_nb))
        else:
            base = aux_q
            s_nb = torch.zeros_like(s_q)
        context = torch.cat([s_q, s_nb, self.encode(base)], dim=-1)
        out = {"mean": base + self.residual(context), "aux": aux_q, "context": context}
        if self.use_neighbours and self.use_depth:
            out["depth"] = depth_q[:, 0]
        return out

    @torch.no_grad()
    def set_kriging(self, fit: KrigingFit, ref_image: np.ndarray) -> None:
        """Load a :class:`.kriging_fit.KrigingFit` (and the trend at the ``(n_ref, in_dim)`` reference images)."""
        plan = fit.plan()
        for name in KrigingPlan._fields:
            getattr(self, name).copy_(getattr(plan, name))
        if fit.trend is not None:
            self.ref_drift.copy_(torch.from_numpy(fit.trend(ref_image)))
            self.trend_weight.copy_(torch.from_numpy(fit.trend.weight.astype("float32")))
            self.trend_bias.copy_(torch.from_numpy(fit.trend.bias.astype("float32")))

    @torch.no_grad()
    def set_depth(self, ref_depth: np.ndarray, slopes: np.ndarray, config: int) -> None:
        """Load the depth term: ``(n_ref,)`` z-scored log depth, ``(G,)`` slopes, the depth's kernel."""
        self.ref_depth.copy_(torch.as_tensor(ref_depth, dtype=self.ref_depth.dtype))
        self.depth_slope.copy_(torch.as_tensor(slopes, dtype=self.depth_slope.dtype))
        self.depth_config.fill_(int(config))

    def to_expression(self, z: torch.Tensor) -> torch.Tensor:
        """z-scored genes -> log-normalised expression (non-negative)."""
        return F.relu(z * self.gene_std + self.gene_mean)

    # -- diffusion over the residual gene vector -------------------------------------------
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Predict the clean residual from ``x_t`` at steps ``t`` given the context."""
        h = self.d_in(x_t) + self.t_embed(t) + self.d_ctx(context)
        return self.denoiser(h)

    def diffusion_loss(self, residual: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Clean-sample (x0) prediction MSE at random noise levels; the residual is the clean sample."""
        t = torch.randint(0, len(self.alpha_bar), (len(residual),), device=residual.device)
        a = self.alpha_bar[t][:, None]
        noise = torch.randn_like(residual)
        x_t = a.sqrt() * residual + (1 - a).sqrt() * noise
        return F.mse_loss(self.denoise(x_t, t, context), residual)

    @torch.no_grad()
    def sample_residual(self, context: torch.Tensor, steps: int, generator: torch.Generator | None) -> torch.Tensor:
        """One residual sample per context row by deterministic DDIM (eta = 0) in ``steps`` steps."""
        n_t = len(self.alpha_bar)
        ts = torch.linspace(n_t - 1, 0, max(1, int(steps))).round().long().unique_consecutive()
        x = torch.randn(len(context), self.n_genes, generator=generator, device="cpu").to(context.device)
        for i, t in enumerate(ts):
            a = self.alpha_bar[t]
            x0 = self.denoise(x, t.expand(len(x)).to(context.device), context)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_next = self.alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=x.device)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x

    # -- channel-aware adversarial term ----------------------------------------------------
    def discriminate(self, centre: torch.Tensor, ref_index: torch.Tensor, geo: torch.Tensor,
                     genes: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, len(genes))`` of "real" for per-gene patches: centre value next to the neighbours'."""
        y_k = self.ref_targets[ref_index][..., genes].transpose(1, 2)  # (B, g, K)
        k = y_k.shape[-1]
        if k < self.k:  # tiny reference sets: pad the patch
            y_k = F.pad(y_k, (0, self.k - k))
            geo = F.pad(geo, (0, 0, 0, self.k - k))
        dist = geo[..., 2][:, None, :].expand(-1, len(genes), -1)
        emb = self.gene_embed(genes)[None].expand(len(centre), -1, -1)
        patch = torch.cat([centre[..., genes, None], y_k, dist, emb], dim=-1)
        return self.discriminator(patch).squeeze(-1)

    def denoiser_parameters(self) -> list[nn.Parameter]:
        """The diffusion denoiser's parameters (empty without the diffusion component)."""
        if not self.use_diffusion:
            return []
        return [p for m in (self.t_embed, self.d_in, self.d_ctx, self.denoiser) for p in m.parameters()]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the discriminator's and the companion HisToSGE models'."""
        skip = {id(p) for p in self.discriminator_parameters()}
        if self.histosge is not None:
            skip |= {id(p) for p in self.histosge.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The discriminator's parameters (empty when the adversarial term is off)."""
        if self.adversarial <= 0:
            return []
        return list(self.discriminator.parameters()) + list(self.gene_embed.parameters())
