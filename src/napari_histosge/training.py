"""Training as a progress generator, and the trained model that predicts and saves itself.

Per spot the model sees: z-scored image features and mean RGB (statistics fitted on the
training spots), the position scaled into [0, 1] by the training bounding box, and that
position discretised into ``n_pos_bins`` bins per axis for the learnable embeddings.
Spots attend to the other spots of their group (see :mod:`.models.grouping`).

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

from .errors import InputError
from .progress import CancelToken, Progress, ProgressGenerator
from .trained_model import TrainedModel, _trained_class
from .training_inputs import (
    CONDITIONED_KEYS,
    MODEL_KEYS,
    PER_SECTION,
    TrainConfig,
    TrainingData,
    _Inputs,
    section_frame,
)

__all__ = ["CONDITIONED_KEYS", "MODEL_KEYS", "PER_SECTION", "TrainConfig", "TrainedModel", "TrainingData",
           "_trained_class", "section_frame", "train"]


def _seed_all(seed: int) -> None:
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
        Checkpoint to continue from (weights, optimiser state, epoch, input statistics).
    meta
        Caller's metadata stored with the model (feature settings, normalisation, ...).
    cancel
        Checked between batches; cancelling raises ``CancelledError`` and leaves the last
        checkpoint intact.

    Yields
    ------
    Progress
        ``stage="train"``, ``step`` = epochs done, ``metrics={"epoch", "loss"}``.

    Returns
    -------
    TrainedModel
    """
    import torch

    from .device import pick_device
    from .models import create_model
    from .models.grouping import pack_batches
    from .models.neighbours import median_spacing

    if config.model == "conditioned":
        from .models.conditioned_fit import train_conditioned

        if data.sections is not None:
            # Its measured-neighbour context is looked up in one coordinate frame.
            raise InputError("the conditioned model trains on one section at a time; "
                             "train 'histosge' to use several sections")

        return (yield from train_conditioned(data, config, checkpoint_path=checkpoint_path, resume=resume,
                                             meta=meta, cancel=cancel))
    from .validation import PATIENCE, BestWeights, ValidationScore, evaluation_interval, split_validation

    device = pick_device(config.device)
    d = data.features.shape[1]
    # The validation spots follow ``seed``; weights, batches and jitter follow ``init_seed``.
    weights_seed = config.weights_seed
    _seed_all(weights_seed)
    data, val_data = split_validation(data, config)
    model = create_model(config.model, in_dim=d + 5, n_genes=len(data.genes), **config.model_hparams())
    model.to(device)
    optimizer = _adamw(model.parameters(), config)
    meta = dict(meta or {})
    history: list[float] = []
    start = 0
    val_history: list[list[float]] = []
    if resume is not None:
        saved, start, history, inputs = resume_into(model, resume, config, data, _check_resumable)
        val_history = [list(v) for v in saved.meta.get("val_history", []) if v[0] <= start]
        if saved.optimizer_state is not None:
            optimizer.load_state_dict(saved.optimizer_state)
    else:
        inputs = _Inputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins, data.frames)
    section_rows = data.section_rows()
    # One frame per spot for several sections; None keeps the one-section path unchanged.
    frame = None if data.sections is None else inputs.spot_frames(data.sections)
    if data.sections is None:
        jitter_px = config.position_jitter * median_spacing(data.positions, undefined=0.0)
        jitter, jitter_meta = jitter_px, jitter_px
    else:
        # Spacing per section: sections overlap in coordinates and may differ in pixel size.
        spacing = np.array([median_spacing(data.positions[rows], undefined=0.0) for rows in section_rows])
        jitter_meta = (config.position_jitter * spacing).tolist()
        jitter = (config.position_jitter * spacing)[data.sections][:, None]
    meta.update(inputs.to_meta(), in_dim=d + 5, n_features=d, n_train_spots=len(data.spot_ids),
                position_jitter_px=jitter_meta, n_validation_spots=0 if val_data is None else len(val_data.spot_ids))
    if data.sections is not None:
        meta["n_train_spots_per_section"] = [len(rows) for rows in section_rows]

    x, bins = inputs(data.features, data.mean_rgb, data.positions, frame)
    x_t, bins_t = torch.from_numpy(x).to(device), torch.from_numpy(bins).to(device)
    y_t = torch.from_numpy(data.targets).to(device)
    trained = TrainedModel(model, config, data.genes, meta)
    held_out = None if val_data is None else ValidationScore(model, inputs, val_data, config, _group, device)
    interval = evaluation_interval(config.epochs)
    best = BestWeights(model, held_out(), start) if held_out is not None else None

    def snapshot(epochs_done: int) -> None:
        meta.update(history=list(history), epochs_done=epochs_done, val_history=[list(v) for v in val_history],
                    best_epoch=best.epoch if best is not None else epochs_done,
                    best_val_pcc=best.score if best is not None else None)
        trained.optimizer_state = optimizer.state_dict()

    snapshot(start)
    yield Progress("train", start, config.epochs, f"{len(data.spot_ids)} spots, {len(data.genes)} genes")
    for epoch in range(start, config.epochs):
        # Per-epoch seeds make a resumed run replay exactly what one long run would do.
        rng = np.random.default_rng([weights_seed, epoch])
        torch.manual_seed(weights_seed * 1_000_003 + epoch)
        model.train()
        if np.any(jitter > 0):
            unit, jittered = inputs.position(data.positions + rng.uniform(-jitter, jitter, data.positions.shape),
                                             frame)
            x_t[:, -2:] = torch.from_numpy(unit).to(device)
            bins_t = torch.from_numpy(jittered).to(device)
        groups = _group(data.positions, section_rows, config, rng)
        groups = [groups[i] for i in rng.permutation(len(groups))]
        total, count = 0.0, 0
        for index, mask in pack_batches(groups, config.batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled()
            idx_t = torch.from_numpy(index).to(device)
            keep = torch.from_numpy(~mask).to(device)
            x_b = x_t[idx_t]
            if config.feature_dropout > 0 and d > 0:
                # Drop image-feature columns per spot (inverted dropout): with few informative
                # pixels per spot the model otherwise memorises spots by their features.
                drop = torch.rand(x_b.shape[:-1] + (d,), device=device) < config.feature_dropout
                x_b = torch.cat([x_b[..., :d].masked_fill(drop, 0.0) / (1.0 - config.feature_dropout),
                                 x_b[..., d:]], dim=-1)
            pred = model(x_b, bins_t[idx_t], torch.from_numpy(mask).to(device))
            loss = torch.nn.functional.mse_loss(pred[keep], y_t[idx_t][keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n_real = int(keep.sum())
            total += float(loss.detach()) * n_real
            count += n_real
        history.append(total / count)
        done = epoch + 1
        metrics = {"epoch": done, "loss": history[-1]}
        if best is not None and (done % interval == 0 or done == config.epochs):
            val_history.append([done, held_out()])
            metrics["val_pcc"] = val_history[-1][1]
            best.offer(val_history[-1][1], done)
        stop = best is not None and best.stale >= PATIENCE
        snapshot(done)
        if checkpoint_path is not None and not stop and (done % config.checkpoint_every == 0
                                                         or done == config.epochs):
            trained.save(checkpoint_path)
        yield Progress("train", done, config.epochs, metrics=metrics)
        if stop:
            meta["stopped_at"] = done
            yield Progress("train", config.epochs, config.epochs,
                           f"stopped at epoch {done}: no gain on the validation spots in {PATIENCE} scores")
            break
    restore = best is not None and start < config.epochs and best.epoch != len(history)
    if restore:
        best.restore()  # early stopping: the best validated weights
    if restore or "stopped_at" in meta:
        snapshot(config.epochs)  # the run is complete: resuming it trains no further
    if checkpoint_path is not None and (restore or "stopped_at" in meta or start >= config.epochs):
        trained.save(checkpoint_path)
    model.eval()
    return trained


def _group(positions: np.ndarray, section_rows: list[np.ndarray], config: TrainConfig,
           rng: np.random.Generator) -> list[np.ndarray]:
    """Attention groups of one epoch, made within each section (a group never mixes sections)."""
    from .models.grouping import group_spots

    rng_or_none = rng if config.grouping == "spatial" else None
    if len(section_rows) == 1:
        return group_spots(positions, config.group_size, mode=config.grouping, rng=rng_or_none)
    groups: list[np.ndarray] = []
    for rows in section_rows:
        groups += [rows[g] for g in group_spots(positions[rows], config.group_size, mode=config.grouping,
                                                rng=rng_or_none)]
    return groups


def resume_into(model, path, config: TrainConfig, data: TrainingData, check,
                saved: TrainedModel | None = None) -> tuple[TrainedModel, int, list, _Inputs]:
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
    return saved, start, history, _Inputs.from_meta(saved.meta, config.n_pos_bins)


def _check_resumable(saved: TrainedModel, config: TrainConfig, data: TrainingData, d: int, path) -> None:
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


def _adamw(params, config: TrainConfig):
    """AdamW over ``params`` with the config's learning rate and decay, fused where the device has it."""
    import torch

    params = list(params)  # may be a generator: both attempts need it
    try:
        # The fused kernel is one pass over each parameter: many times faster than the
        # default per-tensor loop on CPU, where the optimiser step otherwise dominates.
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # device without a fused kernel
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

