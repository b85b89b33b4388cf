"""Training HisToSGE: a progress generator over :func:`napari_histosge.training.engine.run_epochs`.

Per spot the model sees: z-scored image features and mean RGB (statistics fitted on the
training spots), the position scaled into [0, 1] by the training bounding box, and that
position discretised into ``n_pos_bins`` bins per axis for the learnable embeddings.
Spots attend to the other spots of their group (see :mod:`napari_histosge.training.grouping`).

Several sections (``TrainingData.sections``) have unrelated coordinate frames, so each
section's positions are scaled by that section's own box (``frames``), attention groups
never mix sections, and predicting needs the box of the section predicted on
(``TrainedModel.predict(..., frame=...)``; see :func:`napari_histosge.training.inputs.section_frame`).

Importing this module registers the ``histosge`` model (:mod:`.registry`).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import numpy as np

from ..device import pick_device
from ..progress import CancelToken, ProgressGenerator
from ..training.early_stopping import ValidationScore, evaluation_interval, split_validation, validation_rows
from ..training.engine import EpochHooks, run_epochs
from ..training.grouping import group_spots, median_spacing, pack_batches
from ..training.inputs import ModelInputs, TrainingData
from ..training.model_meta import ModelMeta
from ..training.start import adamw, check_initialisable, check_resumable, init_provenance, resume_into, seed_all
from ..training.trained_model import TrainedModel
from .histosge import HisToSGE
from .histosge_config import HisToSGEConfig
from .histosge_trained import HisToSGETrainedModel
from .registry import ModelSpec, create_model, load_model, model_hparams, register_model

SPEC_NAME = "histosge"
#: Settings passed to the network's constructor (:class:`.histosge.HisToSGE`).
HPARAM_KEYS = ("dim", "heads", "depth", "dropout", "n_pos_bins", "head_hidden", "output", "image_init", "head_rank")


def train_histosge(data: TrainingData, config: HisToSGEConfig, *, checkpoint_path: str | PathLike | None = None,
                   resume: str | PathLike | None = None, meta: ModelMeta | Mapping[str, Any] | None = None,
                   cancel: CancelToken | None = None, init: TrainedModel | None = None,
                   ) -> ProgressGenerator[TrainedModel]:
    """Train HisToSGE: the ``histosge`` trainer of :func:`napari_histosge.models.registry.train`.

    Same parameters and result as that function. With ``init`` the run starts from its
    weights (fine-tuning); the input statistics and the position frame are this data's.
    """
    device = pick_device(config.device)
    d = data.features.shape[1]
    # The validation spots follow ``seed``; weights, batches and jitter follow ``init_seed``.
    seed_all(config.weights_seed)
    epochs, validate = epoch_plan(data, config)
    data, val_data = split_validation(data, config) if validate else (data, None)
    model = create_model(SPEC_NAME, in_dim=d + 5, n_genes=len(data.genes), **model_hparams(config))
    model.to(device)
    optimizer = adamw(model.parameters(), config)
    start, resumed = 0, None
    history: list[float] = []
    if resume is not None:
        saved = load_model(resume, device="cpu")
        check_resumable(saved, config, data, resume, HPARAM_KEYS)
        start, history, inputs = resume_into(model, saved, config)
        state = saved.optimizer_state or {}
        optimizer_state, resumed = (state, None) if "param_groups" in state else (state.get("optimizer"), state)
        if optimizer_state:
            optimizer.load_state_dict(optimizer_state)
    else:
        inputs = ModelInputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins, data.frames)
        if init is not None:
            check_initialisable(init, config, data, HPARAM_KEYS, SPEC_NAME)
            model.load_state_dict(init.model.state_dict())
    epoch_fit = HistosgeEpoch(model, optimizer, inputs, data, config, device, cancel)
    meta = ModelMeta.of(meta)
    inputs.record(meta)
    meta.in_dim, meta.n_features, meta.n_train_spots = d + 5, d, len(data.spot_ids)
    meta.position_jitter_px = epoch_fit.jitter_meta
    meta.n_validation_spots = 0 if val_data is None else len(val_data.spot_ids)
    if not validate and config.val_fraction > 0 and config.average_from is None:
        meta.schedule_epochs = epochs  # a fixed schedule instead of early stopping
    if init is not None:
        meta.init = init_provenance(init)
    if data.sections is not None:
        meta.n_train_spots_per_section = [len(rows) for rows in data.section_rows()]
    trained = HisToSGETrainedModel(model, config, data.genes, meta)
    hooks = EpochHooks(
        model=model, fit_epoch=epoch_fit, optimizer_state=optimizer.state_dict,
        score=None if val_data is None else ValidationScore(model, inputs, val_data, config, section_groups, device),
        evaluate_every=evaluation_interval(config.epochs), average_from=config.average_from)
    yield from run_epochs(hooks, trained, epochs=epochs, start=start, history=history, resumed=resumed,
                          checkpoint_path=checkpoint_path, checkpoint_every=config.checkpoint_every,
                          message=f"{len(data.spot_ids)} spots, {len(data.genes)} genes")
    model.eval()
    return trained


def epoch_plan(data: TrainingData, config: HisToSGEConfig) -> tuple[int, bool]:
    """``(epochs, validate)``: how long HisToSGE trains on ``data`` and whether it stops early.

    With a validation share of at least ``config.min_validation_spots`` spots: up to
    ``config.epochs``, early stopping on that share. With fewer (a small section), the
    validation score would choose the epoch poorly: every spot trains for
    ``config.schedule_epochs`` (at most ``config.epochs``; ``config.epochs`` when it is
    ``None``, as when the epochs were given), without validation.
    ``val_fraction=0`` trains every spot for ``config.epochs``, as the paper, and so does
    weight averaging (``config.average_from``), which keeps the mean of the last epochs.
    """
    if config.val_fraction <= 0 or config.average_from is not None:
        return config.epochs, False
    rows = validation_rows(data, config)
    if rows is not None and len(rows) >= config.min_validation_spots:
        return config.epochs, True
    if config.schedule_epochs is None:
        return config.epochs, False
    return min(config.epochs, config.schedule_epochs), False


class HistosgeEpoch:
    """One training epoch of HisToSGE (the ``fit_epoch`` hook); returns the mean training loss.

    Each epoch draws its jitter, groups and batch order from its own seed, so a resumed run
    replays exactly what one long run would do.
    """

    def __init__(self, model, optimizer, inputs: ModelInputs, data: TrainingData, config: HisToSGEConfig, device,
                 cancel: CancelToken | None) -> None:
        import torch

        self.model, self.optimizer, self.inputs, self.data, self.config = model, optimizer, inputs, data, config
        self.device, self.cancel = device, cancel
        self.section_rows = data.section_rows()
        # One frame per spot for several sections; None keeps the one-section path unchanged.
        self.frame = None if data.sections is None else inputs.spot_frames(data.sections)
        if data.sections is None:
            self.jitter = self.jitter_meta = config.position_jitter * median_spacing(data.positions, undefined=0.0)
        else:
            # Spacing per section: sections overlap in coordinates and may differ in pixel size.
            spacing = np.array([median_spacing(data.positions[r], undefined=0.0) for r in self.section_rows])
            self.jitter_meta = (config.position_jitter * spacing).tolist()
            self.jitter = (config.position_jitter * spacing)[data.sections][:, None]
        x, bins = inputs(data.features, data.mean_rgb, data.positions, self.frame)
        self.x, self.bins = torch.from_numpy(x).to(device), torch.from_numpy(bins).to(device)
        self.y = torch.from_numpy(data.targets).to(device)

    def __call__(self, epoch: int) -> float:
        """Train epoch ``epoch``; returns the mean MSE over the training spots."""
        import torch

        config, d = self.config, self.data.features.shape[1]
        rng = np.random.default_rng([config.weights_seed, epoch])
        torch.manual_seed(config.weights_seed * 1_000_003 + epoch)
        self.model.train()
        bins = self.bins
        if np.any(self.jitter > 0):
            moved = self.data.positions + rng.uniform(-self.jitter, self.jitter, self.data.positions.shape)
            unit, bins_np = self.inputs.position(moved, self.frame)
            self.x[:, -2:] = torch.from_numpy(unit).to(self.device)
            bins = torch.from_numpy(bins_np).to(self.device)
        groups = section_groups(self.data.positions, self.section_rows, config, rng)
        groups = [groups[i] for i in rng.permutation(len(groups))]
        total, count = 0.0, 0
        for index, mask in pack_batches(groups, config.batch_size):
            if self.cancel is not None:
                self.cancel.raise_if_cancelled()
            idx_t, keep = torch.from_numpy(index).to(self.device), torch.from_numpy(~mask).to(self.device)
            x_b = self.x[idx_t]
            if config.feature_dropout > 0 and d > 0:
                # Drop image-feature columns per spot (inverted dropout): with few informative
                # pixels per spot the model otherwise memorises spots by their features.
                drop = torch.rand(x_b.shape[:-1] + (d,), device=self.device) < config.feature_dropout
                x_b = torch.cat([x_b[..., :d].masked_fill(drop, 0.0) / (1.0 - config.feature_dropout),
                                 x_b[..., d:]], dim=-1)
            pred = self.model(x_b, bins[idx_t], torch.from_numpy(mask).to(self.device))
            loss = torch.nn.functional.mse_loss(pred[keep], self.y[idx_t][keep])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n_real = int(keep.sum())
            total, count = total + float(loss.detach()) * n_real, count + n_real
        return total / count


def section_groups(positions: np.ndarray, section_rows: list[np.ndarray], config: HisToSGEConfig,
           rng: np.random.Generator) -> list[np.ndarray]:
    """Attention groups of one epoch, made within each section (a group never mixes sections)."""
    rng_or_none = rng if config.grouping == "spatial" else None
    if len(section_rows) == 1:
        return group_spots(positions, config.group_size, mode=config.grouping, rng=rng_or_none)
    groups: list[np.ndarray] = []
    for rows in section_rows:
        groups += [rows[g] for g in group_spots(positions[rows], config.group_size, mode=config.grouping,
                                                rng=rng_or_none)]
    return groups


#: The ``histosge`` model (its settings: :class:`.histosge_config.HisToSGEConfig`).
SPEC = register_model(ModelSpec(name=SPEC_NAME, network=HisToSGE, trainer=train_histosge,
                                trained_class=HisToSGETrainedModel, hparam_keys=HPARAM_KEYS, takes_init=True))
