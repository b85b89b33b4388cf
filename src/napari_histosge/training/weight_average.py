"""Weight averaging: the mean of a network's weights over the last epochs of a run.

One epoch's weights of a small-data run move a lot from epoch to epoch; their mean over a
stretch of epochs (stochastic weight averaging, Izmailov et al. 2018) does not depend on
which epoch happened to be kept. The running mean is
:class:`torch.optim.swa_utils.AveragedModel`'s; its state resumes with the run.
"""

from __future__ import annotations

from typing import Any

from .model_meta import ModelMeta

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running mean of ``model``'s weights over the epochs from ``first`` (1-based) on."""

    def __init__(self, model, first: int) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.model, self.first = model, int(first)
        self.average = AveragedModel(model)

    @property
    def count(self) -> int:
        """Epochs averaged so far."""
        return int(self.average.n_averaged)

    def offer(self, epoch: int) -> None:
        """Add the weights after epoch ``epoch`` (1-based) if it is ``first`` or later."""
        if epoch >= self.first:
            self.average.update_parameters(self.model)

    def apply(self) -> bool:
        """Copy the average into the model; ``False`` (nothing changed) before any epoch was averaged."""
        if not self.count:
            return False
        self.model.load_state_dict(self.average.module.state_dict())
        return True

    def record(self, meta: ModelMeta) -> None:
        """Write the averaged epochs into the model's metadata."""
        # Every epoch from ``first`` on is averaged, so the last is ``first + count - 1``.
        meta.averaged_epochs = None if not self.count else [self.first, self.first + self.count - 1]

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the running mean and its epochs."""
        return {"average": self.average.state_dict(), "first": self.first}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the running mean of :meth:`state_dict` (of a run with the same ``first``)."""
        self.average.load_state_dict(state["average"])
