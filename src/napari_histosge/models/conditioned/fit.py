"""Training the ``conditioned`` model (histology + measured neighbours).

:func:`train_conditioned` is what :func:`napari_histosge.models.registry.train` runs for
``ConditionedConfig``; importing this module registers the model. The
training spots become the model's *reference set* (positions, log-expression, image
inputs), stored in the checkpoint; a prediction at any position reads its nearest
reference spots (:mod:`.trained`). Each
training query excludes its own row, so a spot's expression is never part of its own
context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from os import PathLike
from typing import Any

import numpy as np

from ...device import pick_device
from ...errors import InputError
from ...evaluation.metrics import gene_metrics
from ...progress import CancelToken, Progress, ProgressGenerator, map_events
from ...training.early_stopping import BestWeights, mean_gene_pcc, validation_rows
from ...training.engine import EpochHooks, run_epochs
from ...training.inputs import ModelInputs, TrainingData
from ...training.model_meta import ModelMeta
from ...training.start import adamw, check_resumable, init_provenance, resume_into, seed_all
from ...training.trained_model import TrainedModel
from .. import histosge_fit  # noqa: F401  (registers histosge: the companion trains as one)
from ..histosge_config import HisToSGEConfig
from ..neighbours import median_spacing, neighbour_context
from ..registry import ModelSpec, create_model, load_model, model_hparams, register_model, train
from .config import ConditionedConfig
from .kriging_fit import describe_shares, fit_kriging
from .meta import ConditionedMeta
from .network import ADV_GENES, ConditionedModel
from .sequencing_depth import depth_slopes, log_depth, standardise_depth
from .trained import (
    BLEND_WEIGHTS,
    DEFAULT_BLEND,
    ConditionedTrainedModel,
    image_inputs,
)

SPEC_NAME = "conditioned"
#: Settings passed to the network's constructor (:class:`.network.ConditionedModel`).
HPARAM_KEYS = ("dim", "dropout", "distill_dim", "neighbours", "use_neighbours", "distill", "diffusion",
               "adversarial", "diffusion_steps")


def companion_config(config: ConditionedConfig, member: int = 0, init: TrainedModel | None = None
                     ) -> HisToSGEConfig:
    """Settings of member ``member`` of the HisToSGE companion: ``config`` as a ``histosge`` run.

    The shared settings (width, learning rate, seed, device, validation share, ...) carry
    over, so every member holds back the same validation spots, on small sections too
    (``min_validation_spots`` 0: the companion's weight is chosen on spots it never trained
    on, so it never takes HisToSGE's fixed schedule on every spot); the epochs are
    ``histosge_epochs``, the batch is HisToSGE's default, and ``init_seed`` counts up from
    the config's own. A companion that starts from HisToSGE model ``init`` takes its
    network settings.
    """
    shared = {f.name: getattr(config, f.name) for f in fields(HisToSGEConfig)}
    own = {} if init is None else init.config.settings(histosge_fit.HPARAM_KEYS)
    return HisToSGEConfig(**{**shared, **own, "epochs": config.histosge_epochs,
                             "batch_size": HisToSGEConfig.default_of("batch_size"),
                             "init_seed": config.weights_seed + member, "min_validation_spots": 0})


def _train_companions(data: TrainingData, config: ConditionedConfig, cancel: CancelToken | None,
                      init: TrainedModel | None = None) -> ProgressGenerator[list[TrainedModel]]:
    """Train the ``histosge_members`` companion models one after another, each from ``init`` if given.

    Their progress is reported as stage ``"histosge"`` (``"histosge 2/3"`` with several).
    """
    k, members = config.histosge_members, []
    for m in range(k):
        stage = "histosge" if k == 1 else f"histosge {m + 1}/{k}"
        run = train(data, companion_config(config, m, init), cancel=cancel, init=init)
        members.append((yield from map_events(run, _restaged(stage))))
    return members


def _restaged(stage: str) -> Callable[[Progress], Progress]:
    """A progress event moved to ``stage``."""
    return lambda event: replace(event, stage=stage)


def train_conditioned(
    data: TrainingData,
    config: ConditionedConfig,
    *,
    checkpoint_path: str | PathLike | None = None,
    resume: str | PathLike | None = None,
    meta: ModelMeta | Mapping[str, Any] | None = None,
    cancel: CancelToken | None = None,
    init: TrainedModel | None = None,
) -> ProgressGenerator[ConditionedTrainedModel]:
    """Train the conditioned model; same contract as :func:`napari_histosge.models.registry.train`.

    ``init`` is a HisToSGE model (e.g. one trained on other sections) that every member of
    the image companion starts from and fine-tunes on ``data``; the kriging and the network
    are fitted on ``data`` alone.

    The validation spots are :func:`~napari_histosge.training.early_stopping.validation_rows`,
    the ones the HisToSGE companion held back and the companion's weight is chosen on; they
    stay in the reference set (as neighbours of the other spots) but are never trained on.

    Yields
    ------
    Progress
        ``stage="train"``, ``step`` = epochs done, ``metrics={"epoch", "loss"}`` (``loss``
        is the MSE of the conditional mean on the per-gene z-scored scale).
    """
    if data.sections is not None:
        # Its measured-neighbour context is looked up in one coordinate frame.
        raise InputError("the conditioned model trains on one section at a time; "
                         "train 'histosge' to use several sections")
    if len(data.spot_ids) < 2:
        raise InputError(f"the conditioned model needs at least 2 training spots, got {len(data.spot_ids)}")
    _check_companion_start(init, config)
    device = pick_device(config.device)
    seed_all(config.weights_seed)
    spacing = median_spacing(data.positions)
    gene_mean, gene_std = data.targets.mean(axis=0), data.targets.std(axis=0)
    gene_std[gene_std < 1e-6] = 1.0
    y = ((data.targets - gene_mean) / gene_std).astype(np.float32)
    inputs = ModelInputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins)
    # A resumed model keeps its saved kriging and companion: loading it first spares the refits.
    saved = None if resume is None else load_model(resume, device="cpu")
    parts = yield from _fit_parts(data, config, y, image_inputs(inputs, data.features, data.mean_rgb), spacing,
                                  gene_std, saved, cancel, init)
    d, g = data.features.shape[1], len(data.genes)
    model = create_model(SPEC_NAME, in_dim=d + 3, n_genes=g, **model_hparams(config), **parts["model_kwargs"])
    for module, member in zip(model.histosge or (), parts["companions"], strict=False):
        module.load_state_dict(member.model.state_dict())
    model.to(device)
    optimizers = {"main": adamw(model.generator_parameters(), config),
                  "disc": adamw(model.discriminator_parameters(), config) if model.adversarial > 0 else None}
    start, resumed = 0, None
    history: list[float] = []
    if saved is not None:
        _check_resumable(saved, config, data, resume)
        start, history, inputs = resume_into(model, saved, config)
        resumed = _load_optimizers(optimizers, saved.optimizer_state)
    img = image_inputs(inputs, data.features, data.mean_rgb)  # resumed: the checkpoint's statistics
    _set_reference(model, data, y, img, gene_mean, gene_std, parts)
    meta = _conditioned_meta(ConditionedMeta.of(meta), inputs, data, config, spacing, parts, saved)
    if init is not None:
        meta.init = init_provenance(init)
    trained = ConditionedTrainedModel(model, config, data.genes, meta)
    epoch_fit = ConditionedEpoch(model, optimizers, data, y, img, config, spacing, device, cancel)
    hooks = EpochHooks(model=model, fit_epoch=epoch_fit, patience=None, initial_candidate=True, smoothing=1,
                       optimizer_state=lambda: {k: None if o is None else o.state_dict()
                                                for k, o in optimizers.items()},
                       score=epoch_fit.validation_score(),
                       finish=lambda restored, best: _finish(trained, epoch_fit, data, restored, best, start))
    meta.n_validation_spots = len(epoch_fit.val_rows)
    yield from run_epochs(hooks, trained, epochs=config.epochs, start=start, history=history, resumed=resumed,
                          checkpoint_path=checkpoint_path, checkpoint_every=config.checkpoint_every,
                          message=f"{len(data.spot_ids)} spots, {g} genes")
    model.eval()
    return trained


def _check_companion_start(init: TrainedModel | None, config: ConditionedConfig) -> None:
    """Only a HisToSGE model can start the companion, and only where there is one."""
    if init is None:
        return
    where = init.path or "the model to start from"
    if init.config.model != histosge_fit.SPEC_NAME:
        raise InputError(f"the conditioned model starts its image companion from a histosge model, not a "
                         f"{init.config.model} model (train one on other sections with histosge train)", where)
    if config.histosge_weight == 0:
        raise InputError("histosge_weight 0 trains no image companion, so there is nothing to start from the "
                         "model: drop --init or the weight", where)


def _fit_parts(data: TrainingData, config: ConditionedConfig, y: np.ndarray, img: np.ndarray, spacing: float,
               gene_std: np.ndarray, saved: TrainedModel | None, cancel: CancelToken | None,
               init: TrainedModel | None = None) -> ProgressGenerator[dict[str, Any]]:
    """The parts fitted before the network trains: kriging, the depth term and the companions.

    None of them when resuming from ``saved``, whose model carries them.
    """
    n, d = len(data.spot_ids), data.features.shape[1]
    parts: dict[str, Any] = {"kriging": None, "depth": None, "companions": [],
                             "model_kwargs": {"n_ref": n, "n_basis": 0}}
    if saved is not None:
        parts["model_kwargs"].update({k: v for k, v in saved.meta.model_kwargs.items() if k != "n_ref"})
        return parts
    if config.use_neighbours:
        yield Progress("kriging", 0, 1, "choosing an estimator and kernels per gene")
        kriging = fit_kriging(data.positions, y, k=config.neighbours, spacing=spacing, rank=config.kriging_rank,
                              image=img if config.image_trend else None, n_features=d, seed=config.seed)
        yield Progress("kriging", 1, 1, describe_shares(kriging.share))
        parts["kriging"] = kriging
        parts["model_kwargs"]["n_basis"] = kriging.basis.shape[1]
        if config.depth_term and data.total_counts is not None:
            parts["depth"] = _fit_depth(data, data.total_counts, gene_std, config, spacing)
            parts["model_kwargs"]["sequencing_depth"] = True
    if config.histosge_weight != 0:
        companions = yield from _train_companions(data, config, cancel, init)
        parts["companions"] = companions
        parts["model_kwargs"]["histosge_kwargs"] = {"in_dim": int(companions[0].meta.in_dim or 0),
                                                    "n_genes": len(data.genes), **model_hparams(companions[0].config)}
        parts["model_kwargs"]["n_companions"] = len(companions)
    return parts


def _load_optimizers(optimizers: dict, state: dict | None) -> dict | None:
    """Load a checkpoint's optimiser states into ``optimizers``; returns its training state for the engine."""
    state = state or {}
    saved = state.get("optimizer", state) if "best" in state else state  # older checkpoints: no tracker
    if saved.get("main") is not None:
        optimizers["main"].load_state_dict(saved["main"])
    if optimizers["disc"] is not None and saved.get("disc") is not None:
        optimizers["disc"].load_state_dict(saved["disc"])
    return {"best": state.get("best")}


def _set_reference(model, data: TrainingData, y, img, gene_mean, gene_std, parts: dict) -> None:
    """Store the reference set (the measured training spots) and the fitted parts in ``model``."""
    import torch

    with torch.no_grad():
        model.ref_positions.copy_(torch.from_numpy(data.positions))
        model.ref_targets.copy_(torch.from_numpy(y))
        model.ref_image.copy_(torch.from_numpy(img))
        model.gene_mean.copy_(torch.from_numpy(gene_mean.astype(np.float32)))
        model.gene_std.copy_(torch.from_numpy(gene_std.astype(np.float32)))
    if parts["kriging"] is not None:
        model.set_kriging(parts["kriging"], img)
    if parts["depth"] is not None:
        depth = parts["depth"]
        model.set_depth(depth["ref"], depth["slopes"], depth["kernel"])


def _conditioned_meta(meta: ConditionedMeta, inputs: ModelInputs, data: TrainingData, config: ConditionedConfig,
                      spacing: float, parts: dict, saved: TrainedModel | None) -> ConditionedMeta:
    """The model's metadata: input statistics, sizes, and what the kriging, depth term and companion hold."""
    d = data.features.shape[1]
    inputs.record(meta)
    meta.in_dim, meta.n_features, meta.n_train_spots, meta.spacing_px = d + 3, d, len(data.spot_ids), spacing
    meta.position_jitter_px, meta.model_kwargs = config.position_jitter * spacing, parts["model_kwargs"]
    kriging, depth, companions = parts["kriging"], parts["depth"], parts["companions"]
    if companions:
        meta.histosge = {"members": [{"config": m.config.to_dict(), "meta": m.meta.to_dict()} for m in companions]}
        if config.histosge_weight is not None:  # fixed; otherwise chosen after training
            meta.histosge["weight"] = config.histosge_weight
    if kriging is not None:
        meta.kriging = {"share": kriging.share, "cv_pcc": kriging.cv_pcc, "image_trend": kriging.trend is not None}
    if depth is not None:
        meta.depth_term = {"genes": int(np.count_nonzero(depth["slopes"])), "kernel": depth["kernel"],
                           "log_mean": depth["log_mean"], "log_sd": depth["log_sd"]}
    if saved is not None:  # resumed: the parts fitted before the network trained are the checkpoint's
        old = ConditionedMeta.of(saved.meta)
        meta.histosge = meta.histosge if meta.histosge is not None else old.histosge
        meta.kriging = meta.kriging if meta.kriging is not None else old.kriging
        meta.depth_term = meta.depth_term if meta.depth_term is not None else old.depth_term
    return meta


class ConditionedEpoch:
    """One training epoch of the conditioned model (the ``fit_epoch`` hook), and its validation score.

    Each training query excludes its own row from its neighbours; the validation spots
    (:func:`validation_rows`) are queried as if unmeasured and never trained on.
    """

    def __init__(self, model, optimizers: dict, data: TrainingData, y, img, config: ConditionedConfig, spacing: float,
                 device, cancel: CancelToken | None) -> None:
        import torch
        from scipy.spatial import cKDTree

        self.model, self.optimizers, self.data, self.config = model, optimizers, data, config
        self.spacing, self.device, self.cancel = spacing, device, cancel
        self.img_t, self.y_t = torch.from_numpy(img).to(device), torch.from_numpy(y).to(device)
        self.tree = cKDTree(data.positions)
        n = len(data.spot_ids)
        rows = validation_rows(data, config)
        self.val_rows = np.zeros(0, np.int64) if rows is None else rows
        self.fit_rows = np.setdiff1d(np.arange(n), self.val_rows)

    def validation_score(self):
        """``score()`` -> mean per-gene PCC of the conditional mean on the validation spots; ``None``: none."""
        import torch

        if not len(self.val_rows):
            return None
        args = _held_out_inputs(self.data.positions, self.val_rows, self.img_t, self.config.neighbours,
                                self.spacing, self.tree)
        target = self.y_t[torch.from_numpy(self.val_rows).to(self.device)]

        def score() -> float:
            self.model.eval()
            with torch.no_grad():
                return mean_gene_pcc(self.model(*args)["mean"], target)

        return score

    def batches(self, epoch: int):
        """The training batches of one epoch: ``(rows, neighbour index, geometry, valid)``."""
        import torch

        config, positions = self.config, self.data.positions
        rng = np.random.default_rng([config.weights_seed, epoch])
        torch.manual_seed(config.weights_seed * 1_000_003 + epoch)
        jitter = config.position_jitter * self.spacing
        query = positions + rng.uniform(-jitter, jitter, positions.shape) if jitter > 0 else positions
        idx, geo, valid = neighbour_context(positions, query, config.neighbours, spacing=self.spacing,
                                            exclude=np.arange(len(positions)), dropout=config.neighbour_dropout,
                                            rng=rng, tree=self.tree)
        idx_t, geo_t, valid_t = (torch.from_numpy(a).to(self.device) for a in (idx, geo, valid))
        order = self.fit_rows[rng.permutation(len(self.fit_rows))]
        for batch in np.array_split(order, max(1, -(-len(order) // config.batch_size))):
            if self.cancel is not None:
                self.cancel.raise_if_cancelled()
            b = torch.from_numpy(batch).to(self.device)
            yield b, idx_t[b], geo_t[b], valid_t[b]

    def __call__(self, epoch: int) -> float:
        """Train epoch ``epoch``; returns the mean MSE over the training rows."""
        self.model.train()
        total = 0.0
        for b, idx_b, geo_b, valid_b in self.batches(epoch):
            total += self.step(b, idx_b, geo_b, valid_b) * len(b)
        return total / len(self.fit_rows)

    def step(self, b, idx_b, geo_b, valid_b) -> float:
        """One optimiser step (and the discriminator's, with the adversarial term); returns the batch MSE."""
        import torch
        from torch.nn import functional as F

        model, config, d_opt = self.model, self.config, self.optimizers["disc"]
        out, target = model(self.img_t[b], idx_b, geo_b, valid_b), self.y_t[b]
        mse = F.mse_loss(out["mean"], target)
        loss = mse
        if model.distill:
            loss = loss + config.aux_weight * F.mse_loss(out["aux"], target)
        if model.use_diffusion:
            loss = loss + model.diffusion_loss(target - out["mean"].detach(), out["context"].detach())
        if d_opt is not None:
            genes = torch.randperm(len(self.data.genes), device=self.device)[:ADV_GENES]
            fake = model.discriminate(out["mean"], idx_b, geo_b, genes)
            loss = loss + model.adversarial * F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        self.optimizers["main"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["main"].step()
        if d_opt is not None:
            real = model.discriminate(target, idx_b, geo_b, genes)
            fake = model.discriminate(out["mean"].detach(), idx_b, geo_b, genes)
            d_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        return float(mse.detach())


def _finish(trained: ConditionedTrainedModel, epoch_fit: ConditionedEpoch, data: TrainingData, restored: bool,
            best: BestWeights, start: int) -> ProgressGenerator[None]:
    """After the best epoch is restored: refit the denoiser to it, then choose the companion's weight."""
    import torch

    model, config = trained.model, trained.config
    if restored and best.epoch is not None and model.use_diffusion and start < config.epochs:
        # The restored denoiser learnt the residuals of an older mean (or nothing, at
        # epoch 0, and would sample no spread at all): fit it to the chosen mean's residuals.
        refit = config.epochs - best.epoch
        refit_opt = adamw(model.denoiser_parameters(), config)
        for i in range(refit):
            model.eval()
            model.denoiser.train()
            for b, idx_b, geo_b, valid_b in epoch_fit.batches(config.epochs + i):
                with torch.no_grad():
                    out = model(epoch_fit.img_t[b], idx_b, geo_b, valid_b)
                loss = model.diffusion_loss(epoch_fit.y_t[b] - out["mean"], out["context"])
                refit_opt.zero_grad(set_to_none=True)
                loss.backward()
                refit_opt.step()
            yield Progress("uncertainty", i + 1, refit, metrics={"loss": float(loss.detach())})
    model.eval()
    # The companion's weight needs the final conditioned model, so it is chosen last.
    if trained.meta.histosge is not None and "weight" not in trained.meta.histosge:
        trained.meta.histosge.update(_choose_blend(trained, data, epoch_fit.img_t, epoch_fit.tree))


def _fit_depth(data: TrainingData, counts: np.ndarray, gene_std: np.ndarray, config: ConditionedConfig,
               spacing: float) -> dict[str, Any]:
    """The sequencing-depth term (:mod:`.sequencing_depth`), fitted on the training spots.

    ``counts`` are the spots' total counts. Returns their z-scored log depth, each gene's slope
    on it, and the depth's kernel (by leave-one-out, as every gene's).
    """
    ref = standardise_depth(counts)
    kernel = fit_kriging(data.positions, ref[:, None], k=config.neighbours, spacing=spacing, rank=0,
                         seed=config.seed).plain_config[0]
    ell = log_depth(counts)  # to turn the kriged z-score back into counts (counting noise)
    return {"ref": ref, "slopes": depth_slopes(data.targets, counts, gene_std), "kernel": int(kernel),
            "log_mean": float(ell.mean()), "log_sd": float(ell.std()) or 1.0}


def _held_out_inputs(positions: np.ndarray, rows: np.ndarray, img_t, k: int, spacing: float, tree) -> tuple:
    """Model inputs ``(image, neighbour index, geometry, valid)`` for the training spots ``rows``.

    They are queried as if unmeasured: every one of them is left out of every neighbourhood.
    """
    import torch

    idx, geo, valid = neighbour_context(positions, positions[rows], k, spacing=spacing, exclude=rows, tree=tree)
    dev = img_t.device
    return (img_t[torch.from_numpy(rows).to(dev)], *(torch.from_numpy(a).to(dev) for a in (idx, geo, valid)))


def _choose_blend(trained: ConditionedTrainedModel, data: TrainingData, img_t, tree) -> dict[str, Any]:
    """The companion's weight: the one of :data:`BLEND_WEIGHTS` with the best mean per-gene PCC.

    Scored on the companion's validation spots (it never trained on them; the kriging there
    leaves them out of the neighbours). Ties go to the smaller weight; no validation spots: 0.5.
    """
    import torch

    model = trained.model
    rows = validation_rows(data, trained.config)  # the companions' and the conditioned model's own
    if rows is None or len(rows) < 3:
        return {"weight": DEFAULT_BLEND, "validation_pcc": None}
    args = _held_out_inputs(data.positions, rows, img_t, trained.config.neighbours,
                            float(trained.meta.spacing_px or 0.0), tree)
    with torch.no_grad():
        own = model.to_expression(model(*args)["mean"]).cpu().numpy()
    other = trained.companion_predict(data.features[rows], data.mean_rgb[rows], data.positions[rows])
    truth = data.targets[rows]
    scores = [float(np.nanmean(gene_metrics(truth, (1 - w) * own + w * other, data.genes)["pcc"].to_numpy()))
              for w in BLEND_WEIGHTS]
    return {"weight": BLEND_WEIGHTS[int(np.argmax(scores))],
            "validation_pcc": dict(zip(BLEND_WEIGHTS, scores, strict=True))}


def _check_resumable(saved: TrainedModel, config: ConditionedConfig, data: TrainingData, path) -> None:
    check_resumable(saved, config, data, path, HPARAM_KEYS)  # model settings, genes, feature width
    for name in ("kriging_rank", "image_trend", "depth_term", "histosge_weight", "histosge_epochs",
                 "histosge_members"):
        if getattr(saved.config, name, None) != getattr(config, name):
            raise InputError(f"the checkpoint's kriging and companion were fitted with "
                             f"{name}={getattr(saved.config, name, None)}, not {getattr(config, name)}: "
                             "resume with the same setting", path)
    ref = saved.model.ref_positions.cpu().numpy()
    if ref.shape != data.positions.shape or not np.array_equal(ref, data.positions):
        raise InputError("the checkpoint was trained on different spots (its reference set differs)", path)


SPEC = register_model(ModelSpec(name=SPEC_NAME, network=ConditionedModel, trainer=train_conditioned,
                                trained_class=ConditionedTrainedModel, hparam_keys=HPARAM_KEYS,
                                takes_init=True))
