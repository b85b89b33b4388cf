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
from dataclasses import asdict, dataclass, fields
from os import PathLike
from typing import Any

import numpy as np

from .errors import InputError
from .progress import CancelToken, Progress, ProgressGenerator

#: Settings passed to the model constructor.
MODEL_KEYS = ("dim", "heads", "depth", "dropout", "n_pos_bins", "head_hidden", "output")
#: Settings passed to the constructor of the ``conditioned`` model (see :mod:`.models.conditioned`).
CONDITIONED_KEYS = ("dim", "dropout", "distill_dim", "neighbours", "use_neighbours", "distill", "diffusion",
                    "adversarial", "diffusion_steps")
_MODEL_KEYS_BY_NAME = {"conditioned": CONDITIONED_KEYS}


@dataclass
class TrainConfig:
    """Model and optimisation settings (defaults follow the HisToSGE reference code).

    ``dim`` is the token width: the reference adds embeddings straight onto 1024-wide UNI
    features; here inputs are projected to ``dim`` first, 256 by default so CPU training
    stays quick. ``batch_size`` counts spots per optimiser step; ``group_size`` is the number
    of spots attending to one another (50 in the reference). ``position_jitter`` moves each
    training position by up to this fraction of the median spot spacing (uniformly, per axis,
    fresh every epoch): a spot's counts come from its whole footprint, and the jitter trains
    the position embeddings between spots, where super-resolution predicts; 0 turns it off.

    Settings of the ``conditioned`` model (ignored by ``histosge``): ``neighbours`` measured
    spots form each query's context; ``neighbour_dropout`` skips each candidate neighbour
    with this probability in training; ``use_neighbours``, ``distill`` (semantic distillation,
    auxiliary loss weight ``aux_weight``, width ``distill_dim``), ``diffusion`` (residual
    denoiser with ``diffusion_steps`` noise levels, sampled by DDIM in ``sample_steps`` steps,
    ``n_samples`` samples per position) and ``adversarial`` (weight of the channel-aware
    adversarial term; 0 is off) switch its components for ablations. ``val_fraction`` of the
    training spots are scored (never trained on) after every epoch and the weights of the
    best epoch are kept; epoch 0 is the inverse-distance initialisation. There the
    ``position_jitter`` moves each training query away from its spot before the
    neighbour offsets are computed, so queries between spots (super-resolution) are seen.
    """

    model: str = "histosge"
    epochs: int = 1000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    dim: int = 256
    heads: int = 4
    depth: int = 1
    dropout: float = 0.0
    n_pos_bins: int = 64
    head_hidden: int = 2048
    output: str = "softplus"
    group_size: int = 50
    grouping: str = "spatial"
    position_jitter: float = 0.25
    seed: int = 0
    device: str = "auto"
    n_top_genes: int = 1000
    genes: list[str] | None = None
    checkpoint_every: int = 1
    neighbours: int = 8
    neighbour_dropout: float = 0.0
    use_neighbours: bool = True
    distill: bool = True
    distill_dim: int = 64
    aux_weight: float = 0.5
    diffusion: bool = True
    diffusion_steps: int = 100
    sample_steps: int = 8
    n_samples: int = 4
    adversarial: float = 0.0
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "dropout", "position_jitter", "neighbour_dropout", "aux_weight",
                     "adversarial", "val_fraction"):
            value = getattr(self, name)
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                setattr(self, name, float(value))  # numpy scalars -> plain floats (JSON, checks)
        for name in ("epochs", "batch_size", "dim", "heads", "depth", "n_pos_bins", "head_hidden",
                     "group_size", "n_top_genes", "checkpoint_every", "neighbours", "distill_dim",
                     "diffusion_steps", "sample_steps", "n_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"training setting {name} must be an integer of at least 1, got {value!r}")
            setattr(self, name, int(value))
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"training setting lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise InputError(f"training setting weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.position_jitter, (int, float)) and 0 <= self.position_jitter <= 1):
            raise InputError(f"training setting position_jitter must be in [0, 1], got {self.position_jitter!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise InputError(f"training setting dropout must be in [0, 1), got {self.dropout!r}")
        if self.dim % self.heads:
            raise InputError(f"training setting dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not (isinstance(self.neighbour_dropout, float) and 0 <= self.neighbour_dropout < 1):
            raise InputError(f"training setting neighbour_dropout must be in [0, 1), got {self.neighbour_dropout!r}")
        if not (isinstance(self.val_fraction, float) and 0 <= self.val_fraction < 1):
            raise InputError(f"training setting val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("aux_weight", "adversarial"):
            value = getattr(self, name)
            if not (isinstance(value, float) and np.isfinite(value) and value >= 0):
                raise InputError(f"training setting {name} must be a number >= 0, got {value!r}")
        for name in ("use_neighbours", "distill", "diffusion"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"training setting {name} must be true or false, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        from .models.grouping import GROUPING_MODES

        if self.grouping not in GROUPING_MODES:
            raise InputError(f"unknown grouping {self.grouping!r}; choose one of {', '.join(GROUPING_MODES)}")
        if self.genes is not None:
            self.genes = [str(g) for g in self.genes]

    def model_hparams(self) -> dict[str, Any]:
        """The settings handed to :func:`~napari_histosge.models.create_model` (they depend on ``model``)."""
        return {k: getattr(self, k) for k in _MODEL_KEYS_BY_NAME.get(self.model, MODEL_KEYS)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`InputError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def section_frame(positions) -> tuple[np.ndarray, np.ndarray]:
    """The ``(min, max)`` box of a section's spot positions: its frame for the position embedding.

    Parameters
    ----------
    positions
        ``(n, 2)`` full-res ``(x, y)`` of *all* measured spots of the section (held-out spots
        included: positions are not labels).

    Returns
    -------
    tuple of numpy.ndarray
        ``(min, max)``, each ``(2,)`` float64.
    """
    pos = _matrix(positions, "positions", 2, None, np.float64)
    if len(pos) == 0:
        raise InputError("a section without spots has no frame")
    return pos.min(axis=0), pos.max(axis=0)


@dataclass
class TrainingData:
    """Everything :func:`train` needs, one row per training spot.

    ``features`` (n, D) image features (D may be 0), ``mean_rgb`` (n, 3), ``positions``
    (n, 2) full-res px (x, y), ``targets`` (n, G) log-normalised expression.

    For several sections: ``sections`` (n,) integer section labels ``0 .. k-1`` and
    ``frames`` (k, 2, 2) the ``(min, max)`` box of each section (:func:`section_frame` of
    all its spots); without ``frames`` each box is that of the section's training spots.
    ``sections=None`` is one section scaled by the box of the training spots.
    """

    features: np.ndarray
    mean_rgb: np.ndarray
    positions: np.ndarray
    targets: np.ndarray
    spot_ids: list[str]
    genes: list[str]
    sections: np.ndarray | None = None
    frames: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.features = _matrix(self.features, "features", None)
        n = len(self.features)
        self.mean_rgb = _matrix(self.mean_rgb, "mean_rgb", 3, n)
        self.positions = _matrix(self.positions, "positions", 2, n, np.float64)
        self.targets = _matrix(self.targets, "targets", len(self.genes), n)
        self.spot_ids, self.genes = [str(s) for s in self.spot_ids], [str(g) for g in self.genes]
        if n < 1 or not self.genes:
            raise InputError(f"no training data ({n} spots, {len(self.genes)} genes)")
        if len(self.spot_ids) != n:
            raise InputError(f"{len(self.spot_ids)} spot ids for {n} spots")
        self._check_sections(n)

    def _check_sections(self, n: int) -> None:
        if self.sections is None:
            if self.frames is not None:
                raise InputError("section frames were given without per-spot section labels")
            return
        labels = np.asarray(self.sections)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise InputError(f"sections must be {n} integer labels >= 0, got shape {labels.shape} "
                             f"of {labels.dtype}")
        self.sections = labels.astype(np.int64)
        if self.frames is None:
            k = int(labels.max()) + 1
            empty = [s for s in range(k) if not np.any(labels == s)]
            if empty:
                raise InputError(f"section(s) {empty} have no spots, so their frame is unknown; pass frames")
            self.frames = np.stack([np.stack(section_frame(self.positions[labels == s])) for s in range(k)])
        frames = np.asarray(self.frames, np.float64)
        if frames.ndim != 3 or frames.shape[1:] != (2, 2) or int(labels.max()) >= len(frames):
            raise InputError(f"frames has shape {frames.shape}, expected (k, 2, 2) with a (min, max) box "
                             f"for each of the {int(labels.max()) + 1} sections")
        if not np.all(np.isfinite(frames)) or np.any(frames[:, 1] < frames[:, 0]):
            raise InputError("frames must be finite (min, max) boxes with max >= min")
        self.frames = np.ascontiguousarray(frames)

    @property
    def n_sections(self) -> int:
        """Number of sections (1 without section labels)."""
        return 1 if self.frames is None else len(self.frames)

    def section_rows(self) -> list[np.ndarray]:
        """Row indices of each section (one array of all rows without section labels)."""
        if self.sections is None:
            return [np.arange(len(self.positions))]
        return [np.flatnonzero(self.sections == s) for s in range(self.n_sections)]


def _matrix(a, name: str, width: int | None, n: int | None = None, dtype=np.float32) -> np.ndarray:
    a = np.asarray(a, dtype=dtype)
    if a.ndim != 2 or (width is not None and a.shape[1] != width) or (n is not None and len(a) != n):
        want = f"({n if n is not None else 'n'}, {width if width is not None else 'D'})"
        raise InputError(f"{name} has shape {a.shape}, expected {want}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(a)


#: ``meta["position_frame"]`` of a model trained on several sections: each section's
#: positions are scaled by its own box, so predicting needs the box of the section.
PER_SECTION = "per_section"


class _Inputs:
    """Turns (features, mean RGB, positions) into model inputs with frozen training statistics.

    ``frames`` (k, 2, 2): per-section ``(min, max)`` boxes of a several-section model; then
    ``pos_min``/``pos_max`` is the union of the boxes (kept so older readers find the keys),
    and positions are scaled by the frame given with them.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, pos_min: np.ndarray, pos_max: np.ndarray, n_bins: int,
                 frames: np.ndarray | None = None):
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.pos_min, self.pos_max = np.asarray(pos_min, np.float64), np.asarray(pos_max, np.float64)
        self.n_bins = int(n_bins)
        self.frames = None if frames is None else np.asarray(frames, np.float64)

    @classmethod
    def fit(cls, features: np.ndarray, mean_rgb: np.ndarray, positions: np.ndarray, n_bins: int,
            frames: np.ndarray | None = None) -> _Inputs:
        image = np.concatenate([features, mean_rgb], axis=1).astype(np.float64)
        std = image.std(axis=0)
        std[std < 1e-8] = 1.0  # constant columns: centre only
        if frames is not None:
            return cls(image.mean(axis=0), std, frames[:, 0].min(axis=0), frames[:, 1].max(axis=0), n_bins, frames)
        return cls(image.mean(axis=0), std, positions.min(axis=0), positions.max(axis=0), n_bins)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], n_bins: int) -> _Inputs:
        frames = meta.get("section_frames") if meta.get("position_frame") == PER_SECTION else None
        return cls(meta["feature_mean"], meta["feature_std"], meta["position_min"], meta["position_max"], n_bins,
                   frames)

    def to_meta(self) -> dict[str, Any]:
        meta = {"feature_mean": self.mean.tolist(), "feature_std": self.std.tolist(),
                "position_min": self.pos_min.tolist(), "position_max": self.pos_max.tolist()}
        if self.frames is not None:
            meta.update(position_frame=PER_SECTION, section_frames=self.frames.tolist())
        return meta

    def spot_frames(self, sections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-spot ``(min, max)`` rows, ``(n, 2)`` each, from per-spot section labels."""
        return self.frames[sections, 0], self.frames[sections, 1]

    def position(self, positions, frame=None) -> tuple[np.ndarray, np.ndarray]:
        """``(unit, bins)``: positions scaled by ``frame`` (the training box when ``None``), and their bins.

        ``frame`` is ``(min, max)``, each ``(2,)`` or one row per position.
        """
        lo, hi = (self.pos_min, self.pos_max) if frame is None else (frame[0], frame[1])
        span = np.maximum(hi - lo, 1e-9)
        unit = (np.asarray(positions, np.float64) - lo) / span
        bins = np.clip(np.floor(unit * self.n_bins), 0, self.n_bins - 1).astype(np.int64)
        # Positions far outside the training box are clipped so inputs stay in range.
        return np.clip(unit, -1.0, 2.0).astype(np.float32), bins

    def __call__(self, features, mean_rgb, positions, frame=None) -> tuple[np.ndarray, np.ndarray]:
        image = (np.concatenate([features, mean_rgb], axis=1) - self.mean) / self.std
        unit, bins = self.position(positions, frame)
        return np.concatenate([image.astype(np.float32), unit], axis=1), bins


class TrainedModel:
    """A trained model with its config, genes and metadata; predicts, saves and loads.

    ``meta`` holds what the caller passed to :func:`train` plus the input statistics
    (``feature_mean``/``feature_std``, ``position_min``/``position_max``), ``history``
    (loss per epoch), ``epochs_done``, ``in_dim`` and ``n_features``. A model trained on
    several sections adds ``position_frame="per_section"`` and ``section_frames`` (the
    ``(min, max)`` box of each training section).
    """

    def __init__(self, model, config: TrainConfig, genes: list[str], meta: dict[str, Any], *,
                 optimizer_state: dict | None = None) -> None:
        self.model = model
        self.config = config
        self.genes = list(genes)
        self.meta = meta
        self.optimizer_state = optimizer_state

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _inputs(self) -> _Inputs:
        return _Inputs.from_meta(self.meta, self.config.n_pos_bins)

    @property
    def per_section(self) -> bool:
        """Whether the model was trained on several sections (predicting needs the section's frame)."""
        return self.meta.get("position_frame") == PER_SECTION

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
        positions = _matrix(positions, "positions", 2, None, np.float64)
        rows = self.prediction_inputs(features, mean_rgb, positions, frame=frame)
        pred, _ = self.predict_planned(rows, self.plan_batches(positions, batch_size))
        return pred

    def prediction_inputs(self, features, mean_rgb, positions, *, frame=None) -> tuple[np.ndarray, ...]:
        """Per-row model inputs at ``positions`` (checked), as :meth:`predict_planned` takes them.

        For HisToSGE these are ``(x, bins)``: the normalised image columns plus the unit
        position, and the position-embedding bins. ``frame`` as in :meth:`predict`.
        """
        d = int(self.meta["n_features"])
        positions = _matrix(positions, "positions", 2, None, np.float64)
        n = len(positions)
        features = _matrix(features, "features", d, n)
        mean_rgb = _matrix(mean_rgb, "mean_rgb", 3, n)
        return self._inputs()(features, mean_rgb, positions, self._frame(frame))

    def plan_batches(self, positions, batch_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The forward passes that predict ``positions``: ``(index, mask)`` per pass, in order.

        Spots are grouped as in training (spatial neighbourhoods, no random rotation) and
        groups packed into batches (see :func:`~napari_histosge.models.grouping.pack_batches`).
        Splitting this plan into consecutive pieces and running each anywhere gives exactly
        the single-process result (:func:`napari_histosge.distributed.predict_distributed`).
        """
        from .models.grouping import group_spots, pack_batches

        positions = np.asarray(positions, np.float64)
        if len(positions) == 0:
            return []
        groups = group_spots(positions, self.config.group_size, mode=self.config.grouping)
        return pack_batches(groups, int(batch_size or self.config.batch_size))

    def predict_planned(self, rows: tuple[np.ndarray, ...], batches, *, first_batch: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the forward passes ``batches`` over per-row inputs ``rows``.

        Returns ``(pred, std)``: ``(n, G)`` float32 predictions for the ``n`` rows of
        ``rows`` (rows no batch names stay 0) and ``None`` (this model has no spread).
        ``first_batch`` is the global number of ``batches[0]`` (used by sampling models).
        """
        import torch

        x, bins = rows
        out = np.zeros((len(x), len(self.genes)), dtype=np.float32)
        if len(x) == 0:
            return out, None
        device = self.device
        x_t, bins_t = torch.from_numpy(x).to(device), torch.from_numpy(bins).to(device)
        self.model.eval()
        with torch.inference_mode():
            for index, mask in batches:
                idx_t = torch.from_numpy(index).to(device)
                pred = self.model(x_t[idx_t], bins_t[idx_t], torch.from_numpy(mask).to(device))
                keep = ~mask
                out[index[keep]] = pred[torch.from_numpy(keep).to(device)].float().cpu().numpy()
        return out, None

    def save(self, path: str | PathLike) -> None:
        """Write one checkpoint file (weights, config, genes, meta, optimiser state), atomically."""
        from .checkpoint import save_checkpoint

        info = {"config": self.config.to_dict(), "genes": self.genes, "meta": self.meta,
                "epoch": int(self.meta.get("epochs_done", 0))}
        save_checkpoint(path, state_dict=self.model.state_dict(), info=info, optimizer=self.optimizer_state)

    @classmethod
    def load(cls, path: str | PathLike, *, device: str = "auto") -> TrainedModel:
        """Read a checkpoint written by :meth:`save`.

        Raises
        ------
        InputError
            If the file is missing, corrupt, not a checkpoint, or its weights do not fit its config.
        """
        from .checkpoint import load_checkpoint
        from .device import pick_device
        from .models import create_model

        dev = pick_device(device)
        state, info, opt_state = load_checkpoint(path, map_location=dev)
        try:
            config = TrainConfig.from_dict(info["config"])
            genes, meta = list(info["genes"]), dict(info["meta"])
            # Constructor arguments fixed by the data (e.g. the reference-set size).
            model = create_model(config.model, in_dim=int(meta["in_dim"]), n_genes=len(genes),
                                 **config.model_hparams(), **dict(meta.get("model_kwargs", {})))
            model.load_state_dict(state)
        except InputError as exc:
            raise InputError(f"the checkpoint's settings are invalid ({exc.problem})", path) from exc
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"the checkpoint is incomplete or corrupt ({type(exc).__name__}: {exc})", path) from exc
        model.to(dev).eval()
        return _trained_class(config.model)(model, config, genes, meta, optimizer_state=opt_state)


def _trained_class(model_name: str) -> type[TrainedModel]:
    """The :class:`TrainedModel` subclass that predicts for ``model_name``."""
    if model_name == "conditioned":
        from .models.conditioned_fit import ConditionedTrainedModel

        return ConditionedTrainedModel
    return TrainedModel


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

    if config.model == "conditioned":
        from .models.conditioned_fit import train_conditioned

        if data.sections is not None:
            # Its measured-neighbour context is looked up in one coordinate frame.
            raise InputError("the conditioned model trains on one section at a time; "
                             "train 'histosge' to use several sections")

        return (yield from train_conditioned(data, config, checkpoint_path=checkpoint_path, resume=resume,
                                             meta=meta, cancel=cancel))
    device = pick_device(config.device)
    d = data.features.shape[1]
    _seed_all(config.seed)
    model = create_model(config.model, in_dim=d + 5, n_genes=len(data.genes), **config.model_hparams())
    model.to(device)
    optimizer = _adamw(model, config, device)
    meta = dict(meta or {})
    history: list[float] = []
    start = 0
    if resume is not None:
        saved = TrainedModel.load(resume, device="cpu")
        _check_resumable(saved, config, data, d, resume)
        model.load_state_dict(saved.model.state_dict())
        if saved.optimizer_state is not None:
            optimizer.load_state_dict(saved.optimizer_state)
        start = int(saved.meta.get("epochs_done", 0))
        history = [float(v) for v in saved.meta.get("history", [])][:start]
        inputs = _Inputs.from_meta(saved.meta, config.n_pos_bins)
    else:
        inputs = _Inputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins, data.frames)
    section_rows = data.section_rows()
    # One frame per spot for several sections; None keeps the one-section path unchanged.
    frame = None if data.sections is None else inputs.spot_frames(data.sections)
    if data.sections is None:
        jitter_px = config.position_jitter * _median_spacing(data.positions)
        jitter, jitter_meta = jitter_px, jitter_px
    else:
        # Spacing per section: sections overlap in coordinates and may differ in pixel size.
        spacing = np.array([_median_spacing(data.positions[rows]) for rows in section_rows])
        jitter_meta = (config.position_jitter * spacing).tolist()
        jitter = (config.position_jitter * spacing)[data.sections][:, None]
    meta.update(inputs.to_meta(), in_dim=d + 5, n_features=d, n_train_spots=len(data.spot_ids),
                position_jitter_px=jitter_meta)
    if data.sections is not None:
        meta["n_train_spots_per_section"] = [len(rows) for rows in section_rows]

    x, bins = inputs(data.features, data.mean_rgb, data.positions, frame)
    x_t, bins_t = torch.from_numpy(x).to(device), torch.from_numpy(bins).to(device)
    y_t = torch.from_numpy(data.targets).to(device)
    trained = TrainedModel(model, config, data.genes, meta)

    def snapshot(epochs_done: int) -> None:
        meta.update(history=list(history), epochs_done=epochs_done)
        trained.optimizer_state = optimizer.state_dict()

    snapshot(start)
    yield Progress("train", start, config.epochs, f"{len(data.spot_ids)} spots, {len(data.genes)} genes")
    for epoch in range(start, config.epochs):
        # Per-epoch seeds make a resumed run replay exactly what one long run would do.
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 1_000_003 + epoch)
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
            pred = model(x_t[idx_t], bins_t[idx_t], torch.from_numpy(mask).to(device))
            loss = torch.nn.functional.mse_loss(pred[keep], y_t[idx_t][keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n_real = int(keep.sum())
            total += float(loss.detach()) * n_real
            count += n_real
        history.append(total / count)
        done = epoch + 1
        snapshot(done)
        if checkpoint_path is not None and (done % config.checkpoint_every == 0 or done == config.epochs):
            trained.save(checkpoint_path)
        yield Progress("train", done, config.epochs, metrics={"epoch": done, "loss": history[-1]})
    if checkpoint_path is not None and start >= config.epochs:
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


def _median_spacing(positions: np.ndarray) -> float:
    """Median distance from a spot to its nearest other spot (0 for a single spot)."""
    from scipy.spatial import cKDTree

    if len(positions) < 2:
        return 0.0
    dist, _ = cKDTree(positions).query(positions, k=2)
    return float(np.median(dist[:, 1]))


def _check_resumable(saved: TrainedModel, config: TrainConfig, data: TrainingData, d: int, path) -> None:
    if saved.config.model != config.model or saved.config.model_hparams() != config.model_hparams():
        raise InputError(
            f"the checkpoint was trained with different model settings "
            f"({saved.config.model} {saved.config.model_hparams()}) than requested "
            f"({config.model} {config.model_hparams()})", path)
    if saved.genes != data.genes:
        raise InputError("the checkpoint predicts different genes than the training data", path)
    if int(saved.meta.get("n_features", -1)) != d:
        raise InputError(f"the checkpoint expects {saved.meta.get('n_features')} image features, the data has {d}", path)
    saved_sections = len(saved.meta["section_frames"]) if saved.per_section else None
    wanted = None if data.sections is None else data.n_sections
    if saved_sections != wanted:
        raise InputError(f"the checkpoint was trained on {saved_sections or 1} section(s), "
                         f"the data has {wanted or 1}", path)


def _adamw(model, config: TrainConfig, device):
    import torch

    try:
        # The fused kernel is one pass over each parameter: many times faster than the
        # default per-tensor loop on CPU, where the optimiser step otherwise dominates.
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # device without a fused kernel
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

