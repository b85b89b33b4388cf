"""The HisToSGE model: image features + position encoding -> self-attention over a group of spots -> genes.

Follows the reference implementation (wenwenmin/HisToSGE): learnable x/y position
embeddings added to the spot tokens, a pre-norm transformer (``depth`` 1, 4 heads,
GELU feed-forward as wide as the tokens, no dropout), and a gene head
``Linear -> ReLU -> LayerNorm(2048) -> Linear`` with a non-negative output (log
expression is non-negative). The reference ends in a ReLU (``output="relu"``); the default
here is a softplus: a ReLU output sends sparse genes to exactly 0, where its gradient
vanishes and they stay constant (PCC 0); the softplus keeps a gradient for them (see
notes/training-defaults.md for what it changed). Unlike the reference, the input (image
features, mean RGB and the continuous normalised position) is first projected to ``dim``
so the token width does not have to equal the feature width, and the image columns of that
projection start at zero (``image_init``): training starts from a positions-only model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError

#: Non-negative output functions: the reference's ReLU, or a softplus that never stops learning.
OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "softplus": F.softplus}

#: Columns appended to the image features in every input row: mean R, G, B, then x, y in [0, 1].
EXTRA_INPUTS = 5
#: The last columns of an input row: x, y in [0, 1]. Every column before them comes from the image.
POSITION_INPUTS = 2


class HisToSGE(nn.Module):
    """Multi-head self-attention over groups of spots.

    Parameters
    ----------
    in_dim
        Width of each input row: image features (D) + mean RGB (3) + normalised position (2).
    n_genes
        Number of genes predicted.
    dim
        Token width inside the transformer.
    heads
        Attention heads (must divide ``dim``).
    depth
        Transformer layers.
    dropout
        Dropout inside the transformer.
    n_pos_bins
        Bins per axis of the learnable position embedding tables.
    head_hidden
        Hidden width of the gene head (2048 in the paper).
    mlp_dim
        Feed-forward width in each transformer layer; ``None`` means ``dim`` (as the paper).
    output
        ``"softplus"`` (default) or ``"relu"`` (the reference) on the gene head.
    image_init
        Scale of the initial weights from the image columns (features and mean RGB) into the
        tokens, relative to PyTorch's default initialisation. 0 (the default) starts the model
        as a positions-only model: image features then enter only as far as training pulls
        them in, and early stopping keeps that shrinkage. With PyTorch's initialisation
        (1.0) the 86 image columns dominate the tokens from the first step and the model
        memorises spots by their features (notes/training-defaults.md).
    head_rank
        ``None`` (the default, as the paper): every gene reads the head's ``head_hidden``
        units directly. A number factorises that last layer through ``head_rank`` shared
        directions, so each gene can follow only what the genes have in common (a
        regulariser for sparse genes; notes/benchmarks-log.md lists what it changed).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        n_genes: int,
        dim: int = 256,
        heads: int = 4,
        depth: int = 1,
        dropout: float = 0.0,
        n_pos_bins: int = 64,
        head_hidden: int = 2048,
        mlp_dim: int | None = None,
        output: str = "softplus",
        image_init: float = 0.0,
        head_rank: int | None = None,
    ) -> None:
        super().__init__()
        for label, value in (("in_dim", in_dim), ("n_genes", n_genes), ("dim", dim), ("heads", heads),
                             ("depth", depth), ("n_pos_bins", n_pos_bins), ("head_hidden", head_hidden)):
            if int(value) < 1:
                raise InputError(f"model setting {label} must be at least 1, got {value}")
        if head_rank is not None and (isinstance(head_rank, bool) or not isinstance(head_rank, int)
                                      or head_rank < 1):
            raise InputError(f"model setting head_rank must be a whole number >= 1 or None, got {head_rank!r}")
        if dim % heads:
            raise InputError(f"model setting dim ({dim}) must be divisible by heads ({heads})")
        if output not in OUTPUTS:
            raise InputError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")
        self.output = OUTPUTS[output]
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.n_genes, self.n_pos_bins = int(in_dim), int(n_genes), int(n_pos_bins)
        self.embed = nn.Linear(self.in_dim, dim)
        if isinstance(image_init, bool) or not isinstance(image_init, (int, float)) or not image_init >= 0:
            raise InputError(f"model setting image_init must be a number >= 0, got {image_init}")
        with torch.no_grad():
            self.embed.weight[:, : max(self.in_dim - POSITION_INPUTS, 0)].mul_(float(image_init))
        self.x_embed = nn.Embedding(self.n_pos_bins, dim)
        self.y_embed = nn.Embedding(self.n_pos_bins, dim)
        # Small init: bins never seen in training (between spots) then barely perturb tokens.
        nn.init.normal_(self.x_embed.weight, std=0.02)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=int(mlp_dim or dim), dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        # Layers built in forward order: the random initialisation (and so a seeded run) is
        # the same as before ``head_rank`` existed.
        hidden = [nn.Linear(dim, head_hidden), nn.ReLU(), nn.LayerNorm(head_hidden)]
        readout = ([nn.Linear(head_hidden, self.n_genes)] if head_rank is None else
                   [nn.Linear(head_hidden, head_rank, bias=False), nn.Linear(head_rank, self.n_genes)])
        self.gene_head = nn.Sequential(*hidden, *readout)

    def forward(
        self, x: torch.Tensor, pos_bins: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict expression for every spot of every group.

        Parameters
        ----------
        x
            ``(B, S, in_dim)`` float inputs, one group of up to ``S`` spots per row.
        pos_bins
            ``(B, S, 2)`` long position bins (x, y) in ``[0, n_pos_bins)``.
        key_padding_mask
            ``(B, S)`` bool, ``True`` where a slot is padding.

        Returns
        -------
        torch.Tensor
            ``(B, S, n_genes)`` non-negative predictions (padding rows are meaningless).
        """
        h = self.embed(x) + self.x_embed(pos_bins[..., 0]) + self.y_embed(pos_bins[..., 1])
        h = self.transformer(h, src_key_padding_mask=key_padding_mask)
        return self.output(self.gene_head(h))
