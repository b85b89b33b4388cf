"""The ``histosge`` model's settings (no torch: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..training.config import TrainConfig, register_config, setting
from ..training.grouping import GROUPING_MODES

#: The gene head's non-negative output (:data:`napari_histosge.models.histosge.OUTPUTS`).
OUTPUT_FUNCTIONS = ("softplus", "relu")


@register_config
@dataclass
class HisToSGEConfig(TrainConfig):
    """Settings of HisToSGE (image + position; defaults follow the reference code).

    ``dim`` is the token width: the reference adds embeddings straight onto 1024-wide UNI
    features; here inputs are projected to ``dim`` first, 256 by default so CPU training
    stays quick. ``group_size`` is the number of spots attending to one another (50 in the
    reference). ``position_jitter`` moves each training position by up to this fraction of
    the median spot spacing (uniformly, per axis, fresh every epoch): a spot's counts come
    from its whole footprint, and the jitter trains the position embeddings between spots,
    where super-resolution predicts.

    ``image_init`` scales the initial weights from the image inputs into the tokens (0, the
    default, starts as a positions-only model; see :class:`.histosge.HisToSGE`).
    ``feature_dropout`` zeroes each image-feature column of each spot with this probability
    while training: without it HisToSGE memorises spots by their image features where those
    carry little (notes/training-defaults.md). ``val_fraction`` also drives early stopping
    (:mod:`napari_histosge.training.early_stopping`): where the validation share would hold
    fewer than ``min_validation_spots`` spots, its score would choose the epoch poorly, and
    every spot trains for ``schedule_epochs`` instead (:func:`.histosge_fit.epoch_plan`) —
    unless epochs were given to :func:`~napari_histosge.models.train_config`, ``--epochs`` or
    the Train widget (:meth:`implied`): a user's epochs are never silently replaced. Built
    directly, the class keeps its ``schedule_epochs``; give ``schedule_epochs=None`` to run
    exactly ``epochs``.
    """

    MODEL = "histosge"

    dim: int = setting(256, "token width the inputs are projected to", least=1)
    heads: int = setting(4, "attention heads (dim must be divisible by heads)", least=1)
    depth: int = setting(1, "transformer layers", least=1)
    dropout: float = setting(0.0, "dropout inside the transformer (0, as the paper)", least=0, below=1)
    feature_dropout: float = setting(0.5, "share of image-feature columns zeroed per spot while training "
                                     "(0 is off)", least=0, below=1)
    n_pos_bins: int = setting(64, "position-embedding bins per axis", least=1)
    head_hidden: int = setting(2048, "width of the gene head's hidden layer", least=1)
    output: str = setting("softplus", "non-negative output of the gene head ('relu' as the reference)",
                          choices=OUTPUT_FUNCTIONS)
    image_init: float = setting(0.0, "initial scale of the image-input weights (0: start from positions only; "
                                "1 is PyTorch's initialisation)", least=0)
    head_rank: int | None = setting(None, "pass the gene head's last layer through this many shared directions",
                                    kind=int, optional=True, none_means="full rank, as the paper", least=1)
    group_size: int = setting(50, "spots per self-attention group", least=1)
    grouping: str = setting("spatial", "how spots are grouped for attention", choices=GROUPING_MODES)
    position_jitter: float = setting(0.25, "training positions moved by up to this share of the spot spacing "
                                     "(0 is off)", least=0, most=1)
    min_validation_spots: int = setting(50, "fewest validation spots the epoch is chosen by; with fewer (a small "
                                        "section), every spot trains for schedule_epochs instead", least=0)
    schedule_epochs: int | None = setting(60, "epochs of that fixed schedule (chosen on the shared sections' "
                                          "held-out curves; at most epochs); epochs given without it run as given",
                                          kind=int, optional=True,
                                          none_means="the epochs asked for", least=1)
    average_from: int | None = setting(None, "keep the average of the weights of every epoch from this one to the "
                                       "last (weight averaging: every spot trains for epochs, no early "
                                       "stopping)", kind=int, optional=True,
                                       none_means="keep one epoch's weights", least=1)

    def check(self) -> None:
        """The token width must split evenly over the heads."""
        super().check()
        if self.dim % self.heads:
            raise InputError(f"training setting dim ({self.dim}) must be divisible by heads ({self.heads})")
        name, epochs = self.averaged_run()
        if self.average_from is not None and self.average_from > epochs:
            raise InputError(f"training setting average_from ({self.average_from}) must be at most {name} "
                             f"({epochs})")

    @classmethod
    def implied(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Epochs given without a schedule run as given, small sections included.

        The fixed schedule stands in for the default epochs only: a user's epochs are never replaced.
        """
        if given.get("epochs") is not None and "schedule_epochs" not in given:
            return {**given, "schedule_epochs": None}
        return given

    def averaged_run(self) -> tuple[str, int]:
        """``(setting, epochs)``: how long the HisToSGE runs whose weights ``average_from`` averages train."""
        return "epochs", self.epochs
