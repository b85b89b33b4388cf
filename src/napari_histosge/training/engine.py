"""The HisToSGE trainer: a progress generator over :func:`.loop.run_epochs`.

Per spot the model sees: z-scored image features and mean RGB (statistics fitted on the
training spots), the position scaled into [0, 1] by the training bounding box, and that
position discretised into ``n_pos_bins`` bins per axis for the learnable embeddings.
Spots attend to the other spots of their group (see :mod:`.grouping`).

Several sections (``TrainingData.sections``) have unrelated coordinate frames, so each
section's positions are scaled by that section's own box (``frames``), attention groups
never mix sections, and predicting needs the box of the section predicted on
(``TrainedModel.predict(..., frame=...)``; see :func:`section_frame`).
"""
from __future__ import annotations

import random
from os import PathLike
from typing import Any

import numpy as np

from ..device import pick_device
from ..errors import InputError
from ..progress import CancelToken, ProgressGenerator
from .trained_model import TrainedModel, trained_class
from .inputs import (
    CONDITIONED_KEYS,
    MODEL_KEYS,
    PER_SECTION,
    ModelInputs,
    TrainConfig,
    TrainingData,
    section_frame,
)
from .early_stopping import ValidationScore, evaluation_interval, split_validation
from .grouping import group_spots, median_spacing, pack_batches
from .loop import EpochHooks, TrainingDivergedError, run_epochs

__all__ = ["CONDITIONED_KEYS", "MODEL_KEYS", "PER_SECTION", "TrainConfig", "TrainedModel", "TrainingData",
           "TrainingDivergedError", "adamw", "check_resumable", "resume_into", "section_frame", "seed_all",
           "train", "trained_class"]


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (weights initialisation)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    data: TrainingData,
    config: TrainConfig,
    *,
    checkpoint_path: str | PathLike | None = None,
    resume: str | PathLike | None = None,
    meta: dict[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[TrainedModel]:
    """Train ``config.model`` on ``data`` with MSE loss, yielding one event per epoch.

    Parameters
    ----------
    data
        Training spots and targets.
    config
        Settings; ``config.epochs`` is the total, also when resuming.
    checkpoint_path
        Written atomically every ``config.checkpoint_every`` epochs and at the end.
    resume
        Checkpoint to continue from (weights, optimiser state, epoch, input statistics, the
        best-weights tracker): the run ends as the uninterrupted one would.
    meta
        Caller's metadata stored with the model (feature settings, normalisation, ...).
    cancel
        Checked between batches; cancelling raises ``CancelledError`` and leaves the last
        checkpoint intact.

    Yields
    ------
    Progress
        ``stage="train"``, ``step`` = epochs done, ``metrics={"epoch", "loss"}`` (and
        ``"val_pcc"`` where the validation spots were scored).

    Returns
    -------
    TrainedModel

    Raises
    ------
    TrainingDivergedError
        If the loss or the weights become NaN or infinite (nothing of that epoch is saved).
    """
    if config.model == "conditioned":
        from ..models.conditioned.fit import train_conditioned

        if data.sections is not None:
            # Its measured-neighbour context is looked up in one coordinate frame.
            raise InputError("the conditioned model trains on one section at a time; "
                             "train 'histosge' to use several sections")

        return (yield from train_conditioned(data, config, checkpoint_path=checkpoint_path, resume=resume,
                                             meta=meta, cancel=cancel))
    return (yield from train_histosge(data, config, checkpoint_path=checkpoint_path, resume=resume, meta=meta,
                                      cancel=cancel))


def train_histosge(data: TrainingData, config: TrainConfig, *, checkpoint_path=None, resume=None, meta=None,
                   cancel: CancelToken | None = None) -> ProgressGenerator[TrainedModel]:
    """:func:`train` for the ``histosge`` model."""
    from ..models import create_model

    device = pick_device(config.device)
    d = data.features.shape[1]
    # The validation spots follow ``seed``; weights, batches and jitter follow ``init_seed``.
    seed_all(config.weights_seed)
    data, val_data = split_validation(data, config)
    model = create_model(config.model, in_dim=d + 5, n_genes=len(data.genes), **config.model_hparams())
    model.to(device)
    optimizer = adamw(model.parameters(), config)
    start, history, resumed = 0, [], None
    if resume is not None:
        saved, start, history, inputs = resume_into(model, resume, config, data, check_resumable)
        state = saved.optimizer_state or {}
        optimizer_state, resumed = (state, None) if "param_groups" in state else (state.get("optimizer"),
                                                                                   state.get("best"))
        if optimizer_state:
            optimizer.load_state_dict(optimizer_state)
    else:
        inputs = ModelInputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins, data.frames)
    epoch_fit = HistosgeEpoch(model, optimizer, inputs, data, config, device, cancel)
    meta = dict(meta or {})
    meta.update(inputs.to_meta(), in_dim=d + 5, n_features=d, n_train_spots=len(data.spot_ids),
                position_jitter_px=epoch_fit.jitter_meta,
                n_validation_spots=0 if val_data is None else len(val_data.spot_ids))
    if data.sections is not None:
        meta["n_train_spots_per_section"] = [len(rows) for rows in data.section_rows()]
    trained = TrainedModel(model, config, data.genes, meta)
    hooks = EpochHooks(
        model=model, fit_epoch=epoch_fit, optimizer_state=optimizer.state_dict,
        score=None if val_data is None else ValidationScore(model, inputs, val_data, config, _group, device),
        evaluate_every=evaluation_interval(config.epochs))
    yield from run_epochs(hooks, trained, epochs=config.epochs, start=start, history=history, resumed=resumed,
                          checkpoint_path=checkpoint_path, checkpoint_every=config.checkpoint_every,
                          message=f"{len(data.spot_ids)} spots, {len(data.genes)} genes")
    model.eval()
    return trained


class HistosgeEpoch:
    """One training epoch of HisToSGE (the ``fit_epoch`` hook); returns the mean training loss.

    Each epoch draws its jitter, groups and batch order from its own seed, so a resumed run
    replays exactly what one long run would do.
    """

    def __init__(self, model, optimizer, inputs: ModelInputs, data: TrainingData, config: TrainConfig, device,
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
        groups = _group(self.data.positions, self.section_rows, config, rng)
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


def _group(positions: np.ndarray, section_rows: list[np.ndarray], config: TrainConfig,
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


def resume_into(model, path, config: TrainConfig, data: TrainingData, check,
                saved: TrainedModel | None = None) -> tuple[TrainedModel, int, list, ModelInputs]:
    """Load checkpoint ``path`` into ``model`` after ``check(saved, config, data, d, path)``.

    Returns the saved model (for its optimiser state), the epochs done, the loss history up
    to them and the frozen input statistics: what both trainers need to continue a run.
    ``saved`` is the checkpoint already loaded from ``path``, where the caller needed it first.
    """
    if saved is None:
        saved = TrainedModel.load(path, device="cpu")
    check(saved, config, data, data.features.shape[1], path)
    model.load_state_dict(saved.model.state_dict())
    start = int(saved.meta.get("epochs_done", 0))
    history = [float(v) for v in saved.meta.get("history", [])][:start]
    return saved, start, history, ModelInputs.from_meta(saved.meta, config.n_pos_bins)


def check_resumable(saved: TrainedModel, config: TrainConfig, data: TrainingData, d: int, path) -> None:
    """Raise :class:`InputError` (naming ``path``) unless checkpoint ``saved`` can continue on ``data``
    with ``config`` (same model settings, genes, feature width ``d`` and number of sections)."""
    if saved.config.model != config.model or saved.config.model_hparams() != config.model_hparams():
        raise InputError(
            f"the checkpoint was trained with different model settings "
            f"({saved.config.model} {saved.config.model_hparams()}) than requested "
            f"({config.model} {config.model_hparams()})", path)
    if saved.genes != data.genes:
        raise InputError("the checkpoint predicts different genes than the training data", path)
    if int(saved.meta.get("n_features", -1)) != d:
        raise InputError(
            f"the checkpoint expects {saved.meta.get('n_features')} image features, the data has {d}", path)
    saved_sections = len(saved.meta["section_frames"]) if saved.per_section else None
    wanted = None if data.sections is None else data.n_sections
    if saved_sections != wanted:
        raise InputError(f"the checkpoint was trained on {saved_sections or 1} section(s), "
                         f"the data has {wanted or 1}", path)


def adamw(params, config: TrainConfig):
    """AdamW over ``params`` with the config's learning rate and decay, fused where the device has it."""
    import torch

    params = list(params)  # may be a generator: both attempts need it
    try:
        # The fused kernel is one pass over each parameter: many times faster than the
        # default per-tensor loop on CPU, where the optimiser step otherwise dominates.
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # device without a fused kernel
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

