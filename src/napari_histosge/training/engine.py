"""The training engine: the epoch loop every model trains through.

A model's trainer prepares its network, data and optimiser, then hands :func:`run_epochs` a
few hooks (:class:`EpochHooks`: fit one epoch, score the validation spots, the optimiser
state to save). The loop owns what must behave the same for every model: the loss history,
the divergence check, the best-weights tracker (:class:`.early_stopping.BestWeights`),
early stopping or weight averaging (:class:`.weight_average.WeightAverage`), when
checkpoints are written, what a checkpoint holds to resume from, and the progress events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import HistosgeError
from ..progress import Progress, ProgressGenerator
from .checkpoint import write_atomically
from .early_stopping import PATIENCE, SMOOTHING, BestWeights
from .weight_average import WeightAverage


class TrainingDivergedError(HistosgeError):
    """The training loss or the weights became NaN or infinite (usually a too-high learning rate)."""


@dataclass
class EpochHooks:
    """What a model plugs into :func:`run_epochs`.

    Attributes
    ----------
    model
        The network being trained (its weights are tracked and checked).
    fit_epoch
        ``fit_epoch(epoch)`` trains epoch ``epoch`` (0-based) and returns its mean training loss.
    optimizer_state
        ``optimizer_state()`` -> what resuming needs of the optimiser(s).
    score
        ``score()`` -> validation score of the current weights (higher is better); ``None``
        trains without validation.
    evaluate_every
        Epochs between validation scores (and the last epoch).
    patience
        Scores without a gain before training stops; ``None`` never stops early.
    initial_candidate
        Whether the weights training starts from may be kept (a model whose initial
        weights are a designed estimator); otherwise the kept epoch is always >= 1.
    smoothing
        Validation scores averaged before comparing (see :class:`.early_stopping.BestWeights`).
    finish
        ``finish(restored, best)``: a progress generator run after the best weights are
        restored and before the final checkpoint (e.g. refitting a part to them).
    average_from
        Keep the mean of the weights of every epoch from this one (1-based) to the last
        instead of one epoch's (give no ``score`` with it); ``None``: off.
    """

    model: Any
    fit_epoch: Callable[[int], float]
    optimizer_state: Callable[[], Any]
    score: Callable[[], float] | None = None
    evaluate_every: int = 1
    patience: int | None = PATIENCE
    initial_candidate: bool = False
    smoothing: int = SMOOTHING
    finish: Callable[[bool, BestWeights], Generator] | None = None
    average_from: int | None = None


def run_epochs(hooks: EpochHooks, trained, *, epochs: int, start: int = 0, history: list[float] | None = None,
               resumed: dict | None = None, checkpoint_path: str | PathLike | None = None,
               checkpoint_every: int = 1, message: str = "") -> ProgressGenerator[BestWeights]:
    """Train epochs ``start .. epochs - 1`` through ``hooks``, keeping the best validated weights.

    Parameters
    ----------
    hooks
        The model's part of training.
    trained
        The :class:`.trained_model.TrainedModel` being trained: its ``meta`` gets the history,
        the epochs done and the validation record; it is saved to ``checkpoint_path``.
    epochs
        Total epochs (also when resuming).
    start, history
        Epochs already done and their losses (a resumed run).
    resumed
        The resumed checkpoint's training state (its ``"best"`` tracker and ``"average"``
        running mean), if any.
    checkpoint_path, checkpoint_every
        Where and how often a checkpoint is written; also at the end.
    message
        Text of the first progress event.

    Raises
    ------
    TrainingDivergedError
        If an epoch's loss or the weights after it are not finite; the file that was at
        ``checkpoint_path`` before the run is put back (a new file keeps the last finite epoch).
    """
    meta, history = trained.meta, list(history or [])
    best = BestWeights(hooks.model, hooks.smoothing)
    average = None if hooks.average_from is None else WeightAverage(hooks.model, hooks.average_from)
    if resumed is not None:
        if resumed.get("best") is not None:
            best.load_state_dict(resumed["best"])
        if average is not None and resumed.get("average") is not None:
            average.load_state_dict(resumed["average"])
    elif hooks.score is not None and hooks.initial_candidate:
        best.offer(hooks.score(), start)

    def snapshot(done: int) -> None:
        meta.history, meta.epochs_done = list(history), done
        best.record(meta)
        if average is not None:
            average.record(meta)
        trained.optimizer_state = {"optimizer": hooks.optimizer_state(), "best": best.state_dict(),
                                   "average": None if average is None else average.state_dict()}

    # What was at the checkpoint path before this run: put back if the run diverges.
    previous = Path(checkpoint_path).read_bytes() if checkpoint_path and Path(checkpoint_path).is_file() else None
    snapshot(start)
    yield Progress("train", start, epochs, message)
    stopped = False
    for epoch in range(start, epochs):
        loss = hooks.fit_epoch(epoch)
        done = epoch + 1
        try:
            check_finite(loss, hooks.model, done)
        except TrainingDivergedError:
            if previous is not None and checkpoint_path is not None:
                write_atomically(checkpoint_path, previous)
            raise
        history.append(loss)
        if average is not None:
            average.offer(done)
        metrics = {"epoch": done, "loss": loss}
        if hooks.score is not None and (done % hooks.evaluate_every == 0 or done == epochs):
            metrics["val_pcc"] = best.offer(hooks.score(), done)
        stopped = hooks.patience is not None and best.stale >= hooks.patience
        snapshot(done)
        if checkpoint_path is not None and not stopped and (done % checkpoint_every == 0 or done == epochs):
            trained.save(checkpoint_path)
        yield Progress("train", done, epochs, metrics=metrics)
        if stopped:
            meta.stopped_at = done
            yield Progress("train", epochs, epochs,
                           f"stopped at epoch {done}: no gain on the validation spots in {hooks.patience} scores")
            break
    restored = best.epoch is not None and start < epochs and best.epoch != len(history)
    if restored:
        best.restore()
    if average is not None and start < epochs:
        restored = average.apply()  # the mean of the weights replaces the last epoch's
    if hooks.finish is not None:
        yield from hooks.finish(restored, best)
    if restored or stopped:
        snapshot(epochs)  # the run is complete: resuming it trains no further
    if checkpoint_path is not None and (restored or stopped or start >= epochs or hooks.finish is not None):
        trained.save(checkpoint_path)
    return best


def check_finite(loss: float, model, epoch: int) -> None:
    """Raise :class:`TrainingDivergedError` if ``loss`` or any weight of ``model`` is NaN or infinite."""
    import torch

    bad = not math.isfinite(loss)
    if not bad:
        with torch.no_grad():
            # One device sync for all parameters, not one per tensor (every epoch, on a GPU too).
            bad = not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if bad:
        what = "loss" if not math.isfinite(loss) else "weights"
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch}: the {what} became NaN or infinite; train again with a lower "
            "learning rate (--lr); the checkpoint file holds no model of this epoch")

