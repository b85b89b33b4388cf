"""HisToSGE's trained model: per-spot image features and positions in, one forward pass per planned batch."""

from __future__ import annotations

import numpy as np

from ..training.inputs import as_matrix
from ..training.trained_model import TrainedModel

__all__ = ["HisToSGETrainedModel"]


class HisToSGETrainedModel(TrainedModel):
    """A trained HisToSGE network: predicts from z-scored image features, mean RGB and positions."""

    def training_summary(self) -> str:
        """The shared summary, the averaged epochs, or the fixed schedule of a section too small to validate on."""
        ran = len(self.meta.history)
        averaged = self.meta.averaged_epochs
        if averaged:
            return (f"epochs: {ran} on every training spot; kept the mean of the weights of epochs "
                    f"{averaged[0]}-{averaged[1]} (weight averaging)")
        if self.meta.schedule_epochs is None:
            return super().training_summary()
        why = f"too few spots to hold back {getattr(self.config, 'min_validation_spots', 0)} for choosing the epoch"
        if getattr(self.config, "schedule_epochs", None) is None:
            return f"epochs: {ran} on every training spot, as asked ({why})"
        return f"epochs: {ran} on every training spot (a fixed schedule: {why})"

    def prediction_inputs(self, features, mean_rgb, positions, *, frame=None) -> tuple[np.ndarray, ...]:
        """Per-row model inputs at ``positions`` (checked), as :meth:`predict_planned` takes them.

        For HisToSGE these are ``(x, bins)``: the normalised image columns plus the unit
        position, and the position-embedding bins. ``frame`` as in :meth:`predict`.
        """
        d = int(self.meta.n_features or 0)
        positions = as_matrix(positions, "positions", 2, None, np.float64)
        n = len(positions)
        features = as_matrix(features, "features", d, n)
        mean_rgb = as_matrix(mean_rgb, "mean_rgb", 3, n)
        return self._inputs()(features, mean_rgb, positions, self._frame(frame))

    def predict_planned(self, rows: tuple[np.ndarray, ...], batches, *, first_batch: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the forward passes ``batches`` over per-row inputs ``rows``.

        Returns ``(pred, std)``: ``(n, G)`` float32 predictions for the ``n`` rows of
        ``rows`` (rows no batch names stay 0) and ``None`` (this model has no spread).
        ``first_batch`` is the global number of ``batches[0]`` (used by sampling models).
        """
        import torch

        x, bins = rows
        out = np.zeros((len(x), len(self.genes)), dtype=np.float32)
        if len(x) == 0:
            return out, None
        device = self.device
        x_t, bins_t = torch.from_numpy(x).to(device), torch.from_numpy(bins).to(device)
        self.model.eval()
        with torch.inference_mode():
            for index, mask in batches:
                idx_t = torch.from_numpy(index).to(device)
                pred = self.model(x_t[idx_t], bins_t[idx_t], torch.from_numpy(mask).to(device))
                keep = ~mask
                out[index[keep]] = pred[torch.from_numpy(keep).to(device)].float().cpu().numpy()
        return out, None
