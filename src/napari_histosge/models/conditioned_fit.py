"""Training the ``conditioned`` model (histology + measured neighbours).

:func:`train_conditioned` is what :func:`napari_histosge.training.train` runs for
``TrainConfig(model="conditioned")``. The training spots become the model's *reference
set* (positions, log-expression, image inputs), stored in the checkpoint; a prediction at
any position reads its nearest reference spots (:mod:`.conditioned_trained`). Each
training query excludes its own row, so a spot's expression is never part of its own
context.
"""

from __future__ import annotations

from dataclasses import replace
from os import PathLike
from typing import Any

import numpy as np

from ..errors import InputError
from ..progress import CancelToken, Progress, ProgressGenerator, map_events
from ..trained_model import TrainedModel
from ..training import _adamw, _seed_all, resume_into
from ..training import _check_resumable as _check_common
from ..training_inputs import TrainConfig, TrainingData, _Inputs
from ..validation import BestWeights, mean_gene_pcc
from .conditioned_trained import (
    BLEND_WEIGHTS,
    DEFAULT_BLEND,
    ConditionedTrainedModel,
    _image_inputs,
)
from .kriging_fit import describe_shares, fit_kriging
from .neighbours import median_spacing, neighbour_context


def companion_config(config: TrainConfig, member: int = 0) -> TrainConfig:
    """Settings of member ``member`` of the conditioned model's HisToSGE companion: ``config``
    as a ``histosge`` run.

    The shared settings (width, learning rate, seed, device, validation share, ...) carry
    over, so every member holds back the same validation spots; the epochs are
    ``histosge_epochs``, the batch is HisToSGE's default, and ``init_seed`` counts up from
    the config's own (member 0 trains as a lone ``histosge`` run with ``seed`` would).
    """
    return replace(config, model="histosge", epochs=config.histosge_epochs, batch_size=TrainConfig.batch_size,
                   init_seed=config.weights_seed + member)


def _train_companions(data: TrainingData, config: TrainConfig, cancel: CancelToken | None
                      ) -> ProgressGenerator[list[TrainedModel]]:
    """Train the ``histosge_members`` companion models one after another, their progress
    reported as stage ``"histosge"`` (``"histosge 2/3"`` with several)."""
    from ..training import train

    k, members = config.histosge_members, []
    for m in range(k):
        stage = "histosge" if k == 1 else f"histosge {m + 1}/{k}"
        members.append((yield from map_events(train(data, companion_config(config, m), cancel=cancel),
                                              lambda e, stage=stage: replace(e, stage=stage))))
    return members


def train_conditioned(
    data: TrainingData,
    config: TrainConfig,
    *,
    checkpoint_path: str | PathLike | None = None,
    resume: str | PathLike | None = None,
    meta: dict[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[ConditionedTrainedModel]:
    """Train the conditioned model; same contract as :func:`napari_histosge.training.train`.

    Yields
    ------
    Progress
        ``stage="train"``, ``step`` = epochs done, ``metrics={"epoch", "loss"}`` (``loss``
        is the MSE of the conditional mean on the per-gene z-scored scale).
    """
    import torch
    from scipy.spatial import cKDTree
    from torch.nn import functional as F

    from ..device import pick_device
    from . import create_model
    from .conditioned import ADV_GENES

    if len(data.spot_ids) < 2:
        raise InputError(f"the conditioned model needs at least 2 training spots, got {len(data.spot_ids)}")
    device = pick_device(config.device)
    n, d, g = len(data.spot_ids), data.features.shape[1], len(data.genes)
    _seed_all(config.weights_seed)
    spacing = median_spacing(data.positions)
    gene_mean = data.targets.mean(axis=0)
    gene_std = data.targets.std(axis=0)
    gene_std[gene_std < 1e-6] = 1.0
    y = ((data.targets - gene_mean) / gene_std).astype(np.float32)
    inputs = _Inputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins)
    img = _image_inputs(inputs, data.features, data.mean_rgb)
    kriging = saved = depth = None
    companions: list[TrainedModel] = []
    model_kwargs: dict[str, Any] = {"n_ref": n, "n_basis": 0}
    if resume is not None:
        # A resumed model keeps its saved kriging and companion: loading it first spares the refits.
        saved = TrainedModel.load(resume, device="cpu")
        model_kwargs.update({k: v for k, v in saved.meta.get("model_kwargs", {}).items() if k != "n_ref"})
    else:
        if config.use_neighbours:
            yield Progress("kriging", 0, 1, "choosing an estimator and kernels per gene")
            kriging = fit_kriging(data.positions, y, k=config.neighbours, spacing=spacing, rank=config.kriging_rank,
                                  image=img if config.image_trend else None, n_features=d, seed=config.seed)
            yield Progress("kriging", 1, 1, describe_shares(kriging.share))
            model_kwargs["n_basis"] = kriging.basis.shape[1]
            if config.depth_term and data.total_counts is not None:
                depth = _fit_depth(data, gene_std, config, spacing)
                model_kwargs["sequencing_depth"] = True
        if config.histosge_weight != 0:
            companions = yield from _train_companions(data, config, cancel)
            model_kwargs["histosge_kwargs"] = {"in_dim": int(companions[0].meta["in_dim"]), "n_genes": g,
                                               **companions[0].config.model_hparams()}
            model_kwargs["n_companions"] = len(companions)
    model = create_model("conditioned", in_dim=d + 3, n_genes=g, **config.model_hparams(), **model_kwargs)
    for module, member in zip(model.histosge or (), companions):
        module.load_state_dict(member.model.state_dict())
    model.to(device)
    optimizer = _adamw(model.generator_parameters(), config)
    d_opt = _adamw(model.discriminator_parameters(), config) if model.adversarial > 0 else None
    meta = dict(meta or {})
    history: list[float] = []
    start = 0
    if resume is not None:
        saved, start, history, inputs = resume_into(model, resume, config, data, _check_resumable, saved)
        img = _image_inputs(inputs, data.features, data.mean_rgb)  # the checkpoint's statistics
        state = saved.optimizer_state or {}
        if "main" in state:
            optimizer.load_state_dict(state["main"])
        if d_opt is not None and state.get("disc") is not None:
            d_opt.load_state_dict(state["disc"])
    with torch.no_grad():  # the reference set: the measured (training) spots
        model.ref_positions.copy_(torch.from_numpy(data.positions))
        model.ref_targets.copy_(torch.from_numpy(y))
        model.ref_image.copy_(torch.from_numpy(img))
        model.gene_mean.copy_(torch.from_numpy(gene_mean.astype(np.float32)))
        model.gene_std.copy_(torch.from_numpy(gene_std.astype(np.float32)))
    if kriging is not None:
        model.set_kriging(kriging, img)
    if depth is not None:
        model.set_depth(depth["ref"], depth["slopes"], depth["kernel"])
    jitter_px = config.position_jitter * spacing
    meta.update(inputs.to_meta(), in_dim=d + 3, n_features=d, n_train_spots=n, spacing_px=spacing,
                position_jitter_px=jitter_px, model_kwargs=model_kwargs)
    if companions:
        meta["histosge"] = {"members": [{"config": m.config.to_dict(), "meta": m.meta} for m in companions]}
        if config.histosge_weight is not None:  # fixed; otherwise chosen after training
            meta["histosge"]["weight"] = config.histosge_weight
    elif saved is not None and "histosge" in saved.meta:
        meta["histosge"] = saved.meta["histosge"]
    if kriging is not None:
        meta["kriging"] = {"share": kriging.share, "cv_pcc": kriging.cv_pcc,
                           "image_trend": kriging.trend is not None}
    elif saved is not None and "kriging" in saved.meta:
        meta["kriging"] = saved.meta["kriging"]
    if depth is not None:
        meta["depth_term"] = {"genes": int(np.count_nonzero(depth["slopes"])), "kernel": depth["kernel"],
                              "log_mean": depth["log_mean"], "log_sd": depth["log_sd"]}
    elif saved is not None and "depth_term" in saved.meta:
        meta["depth_term"] = saved.meta["depth_term"]
    trained = ConditionedTrainedModel(model, config, data.genes, meta)
    img_t, y_t = torch.from_numpy(img).to(device), torch.from_numpy(y).to(device)
    tree = cKDTree(data.positions)
    self_rows = np.arange(n)
    # Validation queries: scored each epoch, never trained on (they stay in the reference set).
    split = np.random.default_rng([config.seed, 7919]).permutation(n)
    n_val = int(round(config.val_fraction * n)) if n >= 20 else 0
    val_rows, fit_rows = np.sort(split[:n_val]), np.sort(split[n_val:])
    if n_val:
        v_args = _held_out_inputs(data.positions, val_rows, img_t, config.neighbours, spacing, tree)
        v_target = y_t[torch.from_numpy(val_rows).to(device)]

    def val_scores() -> tuple[float, float]:
        """``(MSE, mean per-gene PCC)`` of the conditional mean on the validation spots."""
        model.eval()
        with torch.no_grad():
            mean = model(*v_args)["mean"]
            return float(F.mse_loss(mean, v_target)), mean_gene_pcc(mean, v_target)

    # The best epoch is the one with the highest mean per-gene PCC, HisToSGE's criterion too:
    # by the validation MSE the learned parts won on B4 while its HVGs' held-out PCC fell
    # (docs/benchmarks.md).
    best = BestWeights(model, val_scores()[1] if n_val else float("-inf"), start)
    val_history = [float(v) for v in saved.meta.get("val_history", [])][:start] if resume is not None else []
    val_pcc = [float(v) for v in saved.meta.get("val_pcc", [])][:start] if resume is not None else []

    def snapshot(epochs_done: int) -> None:
        meta.update(history=list(history), epochs_done=epochs_done, val_history=list(val_history),
                    val_pcc=list(val_pcc), best_epoch=best.epoch,
                    best_val_pcc=best.score if n_val else None, n_validation_spots=n_val)
        trained.optimizer_state = {"main": optimizer.state_dict(),
                                   "disc": d_opt.state_dict() if d_opt is not None else None}

    snapshot(start)
    yield Progress("train", start, config.epochs, f"{n} spots, {g} genes")

    def epoch_batches(epoch: int):
        """The training batches of one epoch: ``(rows, neighbour index, geometry, valid)``."""
        rng = np.random.default_rng([config.weights_seed, epoch])
        torch.manual_seed(config.weights_seed * 1_000_003 + epoch)
        query = data.positions + rng.uniform(-jitter_px, jitter_px, data.positions.shape) if jitter_px > 0 \
            else data.positions
        idx, geo, valid = neighbour_context(data.positions, query, config.neighbours, spacing=spacing,
                                            exclude=self_rows, dropout=config.neighbour_dropout, rng=rng, tree=tree)
        idx_t, geo_t, valid_t = (torch.from_numpy(a).to(device) for a in (idx, geo, valid))
        order = fit_rows[rng.permutation(len(fit_rows))]
        for batch in np.array_split(order, max(1, -(-len(order) // config.batch_size))):
            if cancel is not None:
                cancel.raise_if_cancelled()
            b = torch.from_numpy(batch).to(device)
            yield b, idx_t[b], geo_t[b], valid_t[b]

    for epoch in range(start, config.epochs):
        model.train()
        total = 0.0
        for b, idx_b, geo_b, valid_b in epoch_batches(epoch):
            out = model(img_t[b], idx_b, geo_b, valid_b)
            target = y_t[b]
            mse = F.mse_loss(out["mean"], target)
            loss = mse
            if model.distill:
                loss = loss + config.aux_weight * F.mse_loss(out["aux"], target)
            if model.use_diffusion:
                loss = loss + model.diffusion_loss(target - out["mean"].detach(), out["context"].detach())
            if d_opt is not None:
                genes = torch.randperm(g, device=device)[:ADV_GENES]
                fake = model.discriminate(out["mean"], idx_b, geo_b, genes)
                loss = loss + model.adversarial * F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if d_opt is not None:
                real = model.discriminate(target, idx_b, geo_b, genes)
                fake = model.discriminate(out["mean"].detach(), idx_b, geo_b, genes)
                d_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                          + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
            total += float(mse.detach()) * len(b)
        history.append(total / len(fit_rows))
        done = epoch + 1
        if n_val:
            mse, pcc = val_scores()
            val_history.append(mse)
            val_pcc.append(pcc)
            best.offer(pcc, done)
        snapshot(done)
        if checkpoint_path is not None and (done % config.checkpoint_every == 0 or done == config.epochs):
            trained.save(checkpoint_path)
        metrics = {"epoch": done, "loss": history[-1]}
        if n_val:
            metrics["val_loss"] = val_history[-1]
            metrics["val_pcc"] = val_pcc[-1]
        yield Progress("train", done, config.epochs, metrics=metrics)
    restored = bool(n_val) and best.epoch != config.epochs
    if restored:
        best.restore()  # early stopping: the best validated epoch
        if model.use_diffusion and start < config.epochs:
            # The restored denoiser learnt the residuals of an older mean (or nothing, at
            # epoch 0, and would sample no spread at all): fit it to the chosen mean's residuals.
            refit = config.epochs - best.epoch
            d_params = model.denoiser_parameters()
            refit_opt = _adamw(d_params, config)
            for i in range(refit):
                model.eval()
                model.denoiser.train()
                for b, idx_b, geo_b, valid_b in epoch_batches(config.epochs + i):
                    with torch.no_grad():
                        out = model(img_t[b], idx_b, geo_b, valid_b)
                    loss = model.diffusion_loss(y_t[b] - out["mean"], out["context"])
                    refit_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    refit_opt.step()
                yield Progress("uncertainty", i + 1, refit, metrics={"loss": float(loss.detach())})
        snapshot(config.epochs)
    model.eval()
    # The companion's weight needs the final conditioned model, so it is chosen last.
    choose = "histosge" in meta and "weight" not in meta["histosge"]
    if choose:
        meta["histosge"].update(_choose_blend(trained, data, img_t, tree))
    if checkpoint_path is not None and (restored or choose or start >= config.epochs):
        trained.save(checkpoint_path)
    return trained


def _fit_depth(data: TrainingData, gene_std: np.ndarray, config: TrainConfig, spacing: float) -> dict[str, Any]:
    """The sequencing-depth term (:mod:`.sequencing_depth`): the training spots' z-scored log
    depth, each gene's slope on it, and the depth's kernel (by leave-one-out, as every gene's)."""
    from .sequencing_depth import depth_slopes, log_depth, standardise_depth

    ref = standardise_depth(data.total_counts)
    kernel = fit_kriging(data.positions, ref[:, None], k=config.neighbours, spacing=spacing, rank=0,
                         seed=config.seed).plain_config[0]
    ell = log_depth(data.total_counts)  # to turn the kriged z-score back into counts (counting noise)
    return {"ref": ref, "slopes": depth_slopes(data.targets, data.total_counts, gene_std), "kernel": int(kernel),
            "log_mean": float(ell.mean()), "log_sd": float(ell.std()) or 1.0}


def _held_out_inputs(positions: np.ndarray, rows: np.ndarray, img_t, k: int, spacing: float, tree) -> tuple:
    """Model inputs ``(image, neighbour index, geometry, valid)`` for the training spots ``rows``
    queried as if unmeasured: every one of them is left out of every neighbourhood."""
    import torch

    idx, geo, valid = neighbour_context(positions, positions[rows], k, spacing=spacing, exclude=rows, tree=tree)
    dev = img_t.device
    return (img_t[torch.from_numpy(rows).to(dev)], *(torch.from_numpy(a).to(dev) for a in (idx, geo, valid)))


def _choose_blend(trained: ConditionedTrainedModel, data: TrainingData, img_t, tree) -> dict[str, Any]:
    """The companion's weight: the one of :data:`BLEND_WEIGHTS` with the best mean per-gene PCC
    on the companion's validation spots (it never trained on them; the kriging there leaves
    them out of the neighbours). Ties go to the smaller weight; no validation spots: 0.5."""
    import torch

    from ..evaluation import gene_metrics
    from ..validation import validation_rows

    model = trained.model
    rows = validation_rows(data, trained.companions[0].config)
    if rows is None or len(rows) < 3:
        return {"weight": DEFAULT_BLEND, "validation_pcc": None}
    args = _held_out_inputs(data.positions, rows, img_t, trained.config.neighbours,
                            float(trained.meta["spacing_px"]), tree)
    with torch.no_grad():
        own = model.to_expression(model(*args)["mean"]).cpu().numpy()
    other = trained.companion_predict(data.features[rows], data.mean_rgb[rows], data.positions[rows])
    truth = data.targets[rows]
    scores = [float(np.nanmean(gene_metrics(truth, (1 - w) * own + w * other, data.genes)["pcc"].to_numpy()))
              for w in BLEND_WEIGHTS]
    return {"weight": BLEND_WEIGHTS[int(np.argmax(scores))], "validation_pcc": dict(zip(BLEND_WEIGHTS, scores))}


def _check_resumable(saved: TrainedModel, config: TrainConfig, data: TrainingData, d: int, path) -> None:
    _check_common(saved, config, data, d, path)  # model settings, genes, feature width
    for name in ("kriging_rank", "image_trend", "depth_term", "histosge_weight", "histosge_epochs",
                 "histosge_members"):
        if getattr(saved.config, name, None) != getattr(config, name):
            raise InputError(f"the checkpoint's kriging and companion were fitted with "
                             f"{name}={getattr(saved.config, name, None)}, not {getattr(config, name)}: "
                             "resume with the same setting", path)
    ref = saved.model.ref_positions.cpu().numpy()
    if ref.shape != data.positions.shape or not np.array_equal(ref, data.positions):
        raise InputError("the checkpoint was trained on different spots (its reference set differs)", path)
