"""Early stopping: one validation split for every model, and the tracker of the best weights.

By default ``val_fraction`` of the training spots are held back (:func:`validation_rows`,
the one split every trainer and the conditioned model's companion choice use), scored every
few epochs by their mean per-gene PCC (the measure the recovery protocol reports), and the
weights of the best score are kept (:class:`BestWeights`); training stops once ``PATIENCE``
scores in a row brought no gain. ``val_fraction=0`` trains on every spot for all epochs, as
the paper does.

A handful of validation spots make a noisy score, so the split holds back at least
``MIN_VALIDATION_SPOTS`` spots where the share allows it, and the tracker compares the mean of
the last ``SMOOTHING`` scores rather than single ones. The weights training starts from are
never kept (an untrained model), unless a model's initial weights are a designed estimator
(see :class:`.engine.EpochHooks`). The score is PCC rather than the training loss (MSE): the
validation MSE can be lowest early, where the genes' held-out PCC is still near zero
(notes/training-defaults.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .config import TrainConfig
from .grouping import pack_batches
from .inputs import ModelInputs, TrainingData
from .model_meta import ModelMeta

#: Evaluations without improvement before training stops.
PATIENCE = 10
#: Evaluations spread over a run (every ``epochs // EVALUATIONS`` epochs, at least every epoch).
EVALUATIONS = 50
#: Fewer training spots than this: no validation share (too few to score anything).
MIN_SPOTS = 20
#: Validation spots held back at least (where that leaves most spots to train on).
MIN_VALIDATION_SPOTS = 20
#: The most of a section the validation share may take to reach ``MIN_VALIDATION_SPOTS``.
MAX_VALIDATION_SHARE = 0.2
#: Consecutive validation scores averaged before comparing (1: single scores).
SMOOTHING = 3


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
        k = validation_count(len(rows), config.val_fraction)
        if 0 < k < len(rows):
            val[rng.choice(rows, k, replace=False)] = True
    return np.flatnonzero(val) if val.any() else None


def validation_count(n: int, fraction: float) -> int:
    """How many of a section's ``n`` training spots the split holds back for ``fraction``.

    ``fraction`` of them, raised to :data:`MIN_VALIDATION_SPOTS` where that stays within
    :data:`MAX_VALIDATION_SHARE` of the section (and to as many as that share allows otherwise).
    """
    if fraction <= 0:
        return 0
    wanted = int(round(fraction * n))
    floor = min(MIN_VALIDATION_SPOTS, int(MAX_VALIDATION_SHARE * n))
    return max(wanted, floor)


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

    def __init__(self, model: Any, inputs: ModelInputs, val: TrainingData, config: TrainConfig, group, device) -> None:
        import torch

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
        """Mean per-gene PCC of the current weights on the validation spots."""
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
    """Mean per-gene Pearson correlation of two ``(n, G)`` tensors (the validation criterion).

    A gene constant in either scores 0.
    """
    import torch

    p, y = pred.double(), truth.double()
    p, y = p - p.mean(0), y - y.mean(0)
    denom = (p.square().sum(0) * y.square().sum(0)).sqrt()
    pcc = torch.where(denom > 0, (p * y).sum(0) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return float(pcc.mean())


class BestWeights:
    """The weights of the best validation score so far (higher is better), for early stopping.

    ``offer`` each new score with its epoch; the score compared is the mean of the last
    :data:`SMOOTHING` scores offered, so one lucky score on few spots does not decide.
    ``restore`` loads the kept weights back. ``stale`` counts the scores since the last gain.
    :meth:`state_dict` / :meth:`load_state_dict` carry all of it through a checkpoint, so a
    resumed run keeps, and stops at, what the uninterrupted run would.
    """

    def __init__(self, model: Any, smoothing: int = SMOOTHING) -> None:
        self.model, self.smoothing = model, int(smoothing)
        self.score, self.stale = float("-inf"), 0
        self.epoch: int | None = None
        self.state: dict | None = None
        self.history: list[list[float]] = []  # [epoch, score] per score offered

    def _copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def offer(self, score: float, epoch: int) -> float:
        """Record ``score`` of the model's current weights; keep them if the smoothed score gains.

        A non-finite score never gains. Returns ``score``.
        """
        score = float(score)
        self.history.append([int(epoch), score])
        recent = [s for _, s in self.history[-self.smoothing:]]
        smoothed = float(np.mean(recent)) if np.all(np.isfinite(recent)) else float("nan")
        if np.isfinite(smoothed) and smoothed > self.score:
            self.score, self.epoch, self.stale = smoothed, int(epoch), 0
            self.state = self._copy()
        else:
            self.stale += 1
        return score

    def restore(self) -> None:
        """Load the kept weights back into the model (nothing kept: the weights stay)."""
        if self.state is not None:
            self.model.load_state_dict(self.state)

    def kept_score(self) -> float | None:
        """The validation score of the kept epoch itself (not smoothed); ``None`` before any."""
        return next((s for e, s in self.history if e == self.epoch), None)

    def record(self, meta: ModelMeta) -> None:
        """Write into the trained model's metadata the scores, the kept epoch and its score."""
        meta.val_history, meta.best_epoch = [list(v) for v in self.history], self.epoch
        meta.best_val_pcc = self.kept_score() if self.history else None

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue tracking after a resume (the kept weights included)."""
        return {"score": self.score, "epoch": self.epoch, "stale": self.stale, "weights": self.state,
                "history": [list(v) for v in self.history], "smoothing": self.smoothing}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of an earlier run."""
        self.score, self.stale = float(state["score"]), int(state["stale"])
        self.epoch = None if state["epoch"] is None else int(state["epoch"])
        self.state = state["weights"]
        self.history = [[int(e), float(s)] for e, s in state["history"]]
        self.smoothing = int(state.get("smoothing", self.smoothing))


def evaluation_interval(epochs: int) -> int:
    """Epochs between validation scores."""
    return max(1, int(epochs) // EVALUATIONS)
