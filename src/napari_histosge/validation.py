"""Early stopping for the HisToSGE trainer: a validation share of the training spots.

The paper trains for a fixed 1000 epochs. On a 3,500-spot DLPFC slice that overfits badly
(held-out PCC over the top-1000 HVGs 0.094 after 100 epochs, 0.048 after 1000; see
docs/benchmarks.md), so by default ``val_fraction`` of the training spots are held back,
scored every few epochs by their mean per-gene PCC (the measure the recovery protocol
reports), and the weights of the best score are kept; training stops once ``PATIENCE``
scores in a row brought no improvement. ``val_fraction=0`` trains on every spot for all
epochs, as the paper does. A resumed run starts its search for the best weights from the
weights it resumed with.

The score is PCC rather than the training loss (MSE): on her2st B4 the MSE of the
validation spots was lowest at epoch 20, where the HVGs' held-out PCC was -0.029, against
0.056 at epoch 460, the best by PCC (measured 2026-11-24, seed 0).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .training_inputs import TrainConfig, TrainingData, _Inputs

#: Evaluations without improvement before training stops.
PATIENCE = 10
#: Evaluations spread over a run (every ``epochs // EVALUATIONS`` epochs, at least every epoch).
EVALUATIONS = 50
#: Fewer training spots than this: no validation share (too few to score anything).
MIN_SPOTS = 20


def split_validation(data: TrainingData, config: TrainConfig) -> tuple[TrainingData, TrainingData | None]:
    """``(spots to fit, validation spots)``; ``None`` for the latter when there is no validation.

    The validation spots are a seeded random share of every section, so each section keeps
    its training spots and its coordinate box.
    """
    val = validation_rows(data, config)
    if val is None:
        return data, None
    return _subset(data, np.setdiff1d(np.arange(len(data.spot_ids)), val)), _subset(data, val)


def validation_rows(data: TrainingData, config: TrainConfig) -> np.ndarray | None:
    """Sorted rows of ``data`` that :func:`split_validation` holds back (``None``: none)."""
    n = len(data.spot_ids)
    if config.val_fraction <= 0 or n < MIN_SPOTS:
        return None
    rng = np.random.default_rng([config.seed, 7919])
    val = np.zeros(n, bool)
    for rows in data.section_rows():
        k = int(round(config.val_fraction * len(rows)))
        if 0 < k < len(rows):
            val[rng.choice(rows, k, replace=False)] = True
    return np.flatnonzero(val) if val.any() else None


def _subset(data: TrainingData, rows: np.ndarray) -> TrainingData:
    return replace(
        data, features=data.features[rows], mean_rgb=data.mean_rgb[rows], positions=data.positions[rows],
        targets=data.targets[rows], spot_ids=[data.spot_ids[i] for i in rows],
        sections=None if data.sections is None else data.sections[rows],
        frames=data.frames,  # boxes of the whole sections: positions scale as in the full run
        total_counts=None if data.total_counts is None else data.total_counts[rows],
    )


class ValidationScore:
    """Mean per-gene PCC of the model on the validation spots (higher is better).

    Spots are grouped for attention as at prediction time; a gene constant in the
    predictions or the targets scores 0.

    Parameters
    ----------
    model
        The HisToSGE network being trained.
    inputs
        The trainer's input transform (statistics of the fitted spots).
    val
        Validation spots.
    config
        Training settings (grouping, batch size, seed).
    group
        ``group(positions, section_rows, config, rng)`` -> attention groups.
    device
        Torch device of the model.
    """

    def __init__(self, model: Any, inputs: _Inputs, val: TrainingData, config: TrainConfig, group, device) -> None:
        import torch

        from .models.grouping import pack_batches

        frame = None if val.sections is None else inputs.spot_frames(val.sections)
        x, bins = inputs(val.features, val.mean_rgb, val.positions, frame)
        self.model = model
        self.x, self.bins = torch.from_numpy(x).to(device), torch.from_numpy(bins).to(device)
        self.y = torch.from_numpy(val.targets).to(device)
        rows = [r for r in val.section_rows() if len(r)]
        groups = group(val.positions, rows, config, np.random.default_rng([config.seed, 31337]))
        self.batches = [(torch.from_numpy(i).to(device), torch.from_numpy(m).to(device))
                        for i, m in pack_batches(groups, config.batch_size)]

    def __call__(self) -> float:
        import torch

        self.model.eval()
        preds, truth = [], []
        with torch.no_grad():
            for index, mask in self.batches:
                keep = ~mask
                preds.append(self.model(self.x[index], self.bins[index], mask)[keep])
                truth.append(self.y[index][keep])
        return mean_gene_pcc(torch.cat(preds), torch.cat(truth))


def mean_gene_pcc(pred, truth) -> float:
    """Mean per-gene Pearson correlation of two ``(n, G)`` tensors; a gene constant in
    either scores 0 (the validation criterion of both models)."""
    import torch

    p, y = pred.double(), truth.double()
    p, y = p - p.mean(0), y - y.mean(0)
    denom = (p.square().sum(0) * y.square().sum(0)).sqrt()
    pcc = torch.where(denom > 0, (p * y).sum(0) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return float(pcc.mean())


class BestWeights:
    """The weights of the best validation score seen so far (higher is better).

    Both trainers keep one: ``offer`` each new score, ``restore`` at the end. ``stale``
    counts the scores since the last improvement (for stopping early).
    """

    def __init__(self, model: Any, score: float, epoch: int) -> None:
        self.model = model
        self.score, self.epoch, self.stale = float(score), int(epoch), 0
        self.state = self._copy()

    def _copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def offer(self, score: float, epoch: int) -> None:
        """Keep the model's current weights if ``score`` beats the best so far."""
        if score > self.score:
            self.score, self.epoch, self.stale = float(score), int(epoch), 0
            self.state = self._copy()
        else:
            self.stale += 1

    def restore(self) -> None:
        """Load the best weights back into the model."""
        self.model.load_state_dict(self.state)


def evaluation_interval(epochs: int) -> int:
    """Epochs between validation scores."""
    return max(1, int(epochs) // EVALUATIONS)
