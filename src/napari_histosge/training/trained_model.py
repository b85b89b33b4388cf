"""What every trained model shares (settings, genes, metadata, prediction, saving), and its checkpoint read back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, ClassVar

import numpy as np

from ..device import pick_device
from ..errors import InputError
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_dict, spot_group_settings
from .grouping import group_spots, pack_batches
from .inputs import PER_SECTION, ModelInputs, as_matrix
from .model_meta import ModelMeta


class TrainedModel:
    """What every trained model shares: its config, genes and metadata; predicts and saves.

    Each registered model's trained class (``ModelSpec.trained_class``) subclasses it and
    defines its per-row inputs (:meth:`prediction_inputs`) and forward passes
    (:meth:`predict_planned`); HisToSGE's is
    :class:`napari_histosge.models.histosge_trained.HisToSGETrainedModel`.

    ``meta`` (a :class:`~.model_meta.ModelMeta`, of the class ``meta_class`` names) holds
    what the caller passed to :func:`train` plus what training recorded: the input
    statistics, the loss per epoch, the epochs run, the network's sizes.
    """

    #: Whether the model can predict on a section it was not trained on. A model that reads
    #: measured spots it stores (conditioned) cannot: they lie on its own section only.
    predicts_other_sections: ClassVar[bool] = True
    #: The products it makes of a section (:mod:`.products`), its default first: HisToSGE's and
    #: the conditioned model's are an N-fold lattice of spots.
    products: ClassVar[tuple[str, ...]] = ("lattice",)
    #: How it predicts spots: the name of a function registered with
    #: :func:`~.products.register_spots`. Built in: ``"features"``, from image features at each
    #: disc (:meth:`predict`); ``"cells"``, as the mean of its grid cells under each disc (a
    #: :class:`~.cell_model.CellModel`).
    spots_from: ClassVar[str] = "features"
    #: The class of its metadata: a model that records more than every model subclasses it.
    meta_class: ClassVar[type[ModelMeta]] = ModelMeta
    #: The checkpoint it was read from (``None``: trained in this process).
    path: str | None = None
    meta: ModelMeta

    def __init__(self, model, config: TrainConfig, genes: list[str], meta: ModelMeta | Mapping[str, Any], *,
                 optimizer_state: dict | None = None) -> None:
        self.model = model
        self.config = config
        self.genes = list(genes)
        # A checkpoint's dict (or another class's record) becomes this model's own record.
        self.meta = meta if isinstance(meta, ModelMeta) and type(meta) is self.meta_class else self.meta_class.of(meta)
        self.optimizer_state = optimizer_state

    @property
    def device(self):
        """The device the network's weights are on."""
        return next(self.model.parameters()).device

    def _inputs(self) -> ModelInputs:
        return ModelInputs.from_meta(self.meta, spot_group_settings(self.config).n_pos_bins)

    @property
    def per_section(self) -> bool:
        """Whether the model was trained on several sections (predicting needs the section's frame)."""
        return self.meta.position_frame == PER_SECTION

    def _frame(self, frame) -> tuple[np.ndarray, np.ndarray] | None:
        """``frame`` checked, or ``None`` (the stored training box) for a one-section model."""
        if frame is None:
            if self.per_section:
                raise InputError("this model was trained on several sections, each scaled by its own box: "
                                 "pass frame=(min, max) of the predicted section's spot positions "
                                 "(training.section_frame)")
            return None
        lo, hi = (np.asarray(v, np.float64) for v in frame)
        if lo.shape != (2,) or hi.shape != (2,) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise InputError(f"frame must be (min, max), two finite (x, y) pairs; got shapes {lo.shape}, {hi.shape}")
        return lo, hi

    def predict(self, features, mean_rgb, positions, *, frame=None, batch_size: int | None = None) -> np.ndarray:
        """Predict log-normalised expression, ``(n, G)`` float32, rows in input order.

        Spots are grouped as in training (spatial neighbourhoods, no random rotation).

        Parameters
        ----------
        features, mean_rgb, positions
            Image features, mean RGB and full-res ``(x, y)`` of one section's positions.
        frame
            ``(min, max)`` box of that section's measured spots (:func:`section_frame`);
            required for a model trained on several sections, ``None`` uses the training box.
        batch_size
            Spots per forward pass.
        """
        positions = as_matrix(positions, "positions", 2, None, np.float64)
        rows = self.prediction_inputs(features, mean_rgb, positions, frame=frame)
        pred, _ = self.predict_planned(rows, self.plan_batches(positions, batch_size))
        return pred

    def prediction_inputs(self, features, mean_rgb, positions, *, frame=None) -> tuple[np.ndarray, ...]:
        """Per-row model inputs at ``positions`` (checked), as :meth:`predict_planned` takes them.

        Each model's trained class defines what its rows are; ``frame`` as in :meth:`predict`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define its prediction inputs")

    def plan_batches(self, positions, batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The forward passes that predict ``positions``: ``(index, mask)`` per pass, in order.

        Spots are grouped as in training (spatial neighbourhoods, no random rotation) and
        groups packed into batches (see :func:`~napari_histosge.training.grouping.pack_batches`).
        Splitting this plan into consecutive pieces and running each anywhere gives exactly
        the single-process result (:func:`napari_histosge.prediction.distributed.predict_distributed`).
        """
        positions = np.asarray(positions, np.float64)
        if len(positions) == 0:
            return []
        settings = spot_group_settings(self.config)
        groups = group_spots(positions, settings.group_size, mode=settings.grouping)
        return pack_batches(groups, int(batch_size or settings.batch_size))

    def predict_planned(self, rows: tuple[np.ndarray, ...], batches, *, first_batch: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the forward passes ``batches`` over per-row inputs ``rows``.

        Returns ``(pred, std)``: ``(n, G)`` float32 predictions for the ``n`` rows of
        ``rows`` (rows no batch names stay 0) and their spread (``None`` for a model without
        one). ``first_batch`` is the global number of ``batches[0]`` (used by sampling models).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define its forward passes")

    def gene_estimators(self) -> list[str] | None:
        """Per gene, how the model estimates it (the conditioned model's kriging); ``None`` where it is one model."""
        return None

    def training_summary(self) -> str:
        """How training went, for people: epochs run and, with early stopping, the epoch kept.

        The CLI prints it after training and the Train widget shows it when a job ends.
        """
        meta = self.meta
        ran = int(meta.stopped_at if meta.stopped_at is not None else len(meta.history))
        if meta.val_history and meta.best_epoch is not None:
            text = (f"epochs: {ran} of at most {self.config.epochs}; kept the weights of epoch "
                    f"{meta.best_epoch} (best on the validation spots)")
            score = meta.best_val_pcc
            if score is not None and np.isfinite(score):
                # The score two runs on the same spots can be compared by (e.g. with and
                # without image features); the same seed holds back the same spots.
                text += (f"\nvalidation PCC (mean per gene, {int(meta.n_validation_spots)} spots "
                         f"held back from training): {score:.4f}")
            return text
        return f"epochs: {ran}"

    def save(self, path: str | PathLike) -> None:
        """Write one checkpoint file (weights, config, genes, meta, optimiser state), atomically."""
        info = {"config": self.config.to_dict(), "genes": self.genes, "meta": self.meta.to_dict(),
                "epoch": int(self.meta.epochs_done)}
        save_checkpoint(path, state_dict=self.model.state_dict(), info=info, optimizer=self.optimizer_state)


@dataclass
class SavedModel:
    """A checkpoint written by :meth:`TrainedModel.save`, read back.

    The network's weights and what rebuilding the network needs; the model registry builds
    it (:func:`napari_histosge.models.load_model`). ``meta`` is the checkpoint's record as
    every model reads it; the model's trained class reads its own entries from it.
    """

    state: dict
    config: TrainConfig
    genes: list[str]
    meta: ModelMeta
    optimizer_state: dict | None
    #: Where the weights were read to (:func:`~napari_histosge.device.pick_device`).
    device: Any

    @classmethod
    def read(cls, path: str | PathLike, *, device: str = "auto") -> SavedModel:
        """Read checkpoint ``path`` onto ``device``.

        Raises
        ------
        InputError
            If the file is missing, corrupt, not a checkpoint, or its settings are invalid.
        """
        dev = pick_device(device)
        state, info, optimizer_state = load_checkpoint(path, map_location=dev)
        try:
            config = config_from_dict(info["config"])
            genes, meta = list(info["genes"]), dict(info["meta"])
            if not all(isinstance(key, str) for key in meta):
                raise TypeError("the metadata's keys are not names")
        except InputError as exc:
            raise InputError(f"the checkpoint's settings are invalid ({exc.problem})", path) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the checkpoint is incomplete or corrupt ({type(exc).__name__}: {exc})", path) from exc
        return cls(state, config, genes, ModelMeta.from_dict(meta), optimizer_state, dev)

    def load_weights(self, network, path: str | PathLike) -> None:
        """Load the saved weights into ``network`` (built for :attr:`config`), checked.

        Raises
        ------
        InputError
            Naming ``path``, if the weights do not fit ``network`` (another version's model) or
            are NaN or infinite.
        """
        wanted = set(network.state_dict())
        missing, extra = sorted(wanted - set(self.state)), sorted(set(self.state) - wanted)
        if missing or extra:
            # A model whose parts changed between versions (e.g. the conditioned model's kriging).
            raise InputError(
                f"the checkpoint's weights do not fit this version's '{self.config.model}' model (missing: "
                f"{', '.join(missing[:4]) or 'none'}; unexpected: {', '.join(extra[:4]) or 'none'}); it was "
                "probably written by another napari-histosge version: train the model again", path)
        try:
            network.load_state_dict(self.state)
        except RuntimeError as exc:  # a weight of the wrong shape
            raise InputError(f"the checkpoint is incomplete or corrupt ({type(exc).__name__}: {exc})", path) from exc
        refuse_non_finite(self.state, path)


def refuse_non_finite(state: dict, path) -> None:
    """Raise :class:`InputError` naming ``path`` if a floating-point weight in ``state`` is NaN or infinite."""
    import torch

    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"the checkpoint's weights are NaN or infinite ({', '.join(bad[:3])}): the training "
                         "that wrote it diverged; train again with a lower learning rate", path)

