"""The sub-spot model's parameters as a torch module, so they save and load like every model's.

Nothing here is trained by gradient descent: the module holds the fitted image modulation
(one linear map from cell features to each gene's log rate), the statistics that
standardise cell features, and the measured footprints the prior and the consistency step
read (their centres and their rates), and how much of each gene's pattern within a
footprint the consistency step keeps.
"""

from __future__ import annotations

import numpy as np


def _module_base():
    import torch

    return torch.nn.Module


class SubspotNetwork(_module_base()):  # type: ignore[misc]
    """Fitted parameters of the ``subspot`` model.

    Parameters
    ----------
    in_dim
        Cell features per cell.
    n_genes
        Genes predicted.
    n_footprints
        Measured footprints stored (their centres and rates).
    relative_modulation
        Whether the modulation is taken relative to its own level at the footprints
        (``footprint_modulation``), smoothed like the prior: a histology prior's map predicts
        a cell's level against the whole section, which the measurement already carries.
    """

    def __init__(self, in_dim: int, n_genes: int, n_footprints: int = 1, relative_modulation: bool = False) -> None:
        import torch

        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.register_buffer("coef", torch.zeros(n_genes, in_dim))
        self.register_buffer("footprint_xy", torch.zeros(n_footprints, 2, dtype=torch.float64))
        self.register_buffer("footprint_rate", torch.zeros(n_footprints, n_genes))
        # Per gene, how much of its pattern within a footprint consistency keeps (1: all).
        self.register_buffer("detail", torch.ones(n_genes))
        # The footprints' total counts and each gene's dispersion around the model: the
        # counting noise consistency reads the measurement through.
        self.register_buffer("footprint_depth", torch.zeros(n_footprints, dtype=torch.float64))
        self.register_buffer("dispersion", torch.full((n_genes,), 1e6))
        if relative_modulation:  # only then stored: earlier checkpoints load unchanged
            self.register_buffer("footprint_modulation", torch.zeros(n_footprints, n_genes))

    def modulation(self, features: np.ndarray) -> np.ndarray:
        """``(n, G)`` float32: each gene's log-rate change the image predicts for these cells."""
        mean, std = self.feature_mean.cpu().numpy(), self.feature_std.cpu().numpy()
        z = (np.asarray(features, np.float32) - mean) / std
        return (z @ self.coef.cpu().numpy().T).astype(np.float32)

    def footprint_level(self) -> np.ndarray | None:
        """``(n_footprints, G)`` the modulation's mean over each footprint's cells; ``None``: absolute."""
        level = getattr(self, "footprint_modulation", None)
        return None if level is None else level.cpu().numpy().astype(np.float64)

    def forward(self, features):  # a torch forward pass, for completeness: the modulation
        """The modulation of a tensor of cell features."""
        return ((features - self.feature_mean) / self.feature_std) @ self.coef.T
