"""What training consumes: settings (:class:`TrainConfig`), spots (:class:`TrainingData`), model inputs.

Per spot the model sees: z-scored image features and mean RGB (statistics fitted on the
training spots), the position scaled into [0, 1] by the training bounding box (each
section's own box for several sections, see :func:`section_frame`), and that position
discretised into ``n_pos_bins`` bins per axis for the learnable embeddings
(:class:`ModelInputs`, whose statistics are frozen into the model's metadata).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.preprocess import GENE_METHODS
from ..settings import settings_from_dict
from .grouping import GROUPING_MODES


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

    ``image_init`` scales the initial weights from the image inputs into the tokens (0, the
    default, starts ``histosge`` as a positions-only model; see :class:`.models.histosge.HisToSGE`).
    ``dropout`` (inside the transformer) and ``head_rank`` (the gene head's last layer
    through that many shared directions; ``None`` is full rank) are its regularisers.

    ``feature_dropout`` zeroes each image-feature column of each spot with this probability
    while training (not when predicting): without it HisToSGE memorises spots by their image
    features where those carry little (the measurements behind the default 0.5:
    notes/training-defaults.md and docs/benchmarks.md).

    Settings of the ``conditioned`` model (ignored by ``histosge``): ``neighbours`` measured
    spots form each query's context, combined by local kriging with a kernel per gene;
    ``kriging_rank`` principal directions may couple the genes there, and with
    ``image_trend`` the image may predict those directions (kriging with an external drift,
    see :mod:`.models.image_trend`); each gene takes the estimator whose 5-fold
    cross-validated PCC on the training spots is highest (0 krige every gene alone);
    ``depth_term`` adds the kriged sequencing depth of the neighbours to genes counted less
    than once per spot on average, with the slope Poisson counting gives them (see
    :mod:`.models.sequencing_depth`; needs the spots' total counts);
    ``neighbour_dropout`` skips each candidate neighbour with this probability in training;
    ``use_neighbours``, ``distill`` (semantic distillation, auxiliary loss weight
    ``aux_weight``, width ``distill_dim``), ``diffusion`` (residual denoiser with
    ``diffusion_steps`` noise levels, sampled by DDIM in ``sample_steps`` steps, ``n_samples``
    samples per position) and ``adversarial`` (weight of the channel-aware adversarial term;
    0 is off) switch its components for ablations. ``val_fraction`` of the training spots are
    scored (never trained on) after every epoch by mean per-gene PCC and the weights of the
    best epoch are kept;
    epoch 0 is the kriging estimate alone. There the ``position_jitter`` moves each training
    query away from its spot before the neighbour offsets are computed, so queries between
    spots (super-resolution) are seen.

    ``histosge_weight`` gives the ``conditioned`` model a companion: a ``histosge`` model
    (image + position) trained first on the same spots with these settings (at most
    ``histosge_epochs`` epochs, early-stopped, batches of 512), whose prediction is blended
    into the conditioned prediction with this weight. ``None`` (the default) chooses the
    weight among 0, 0.25, 0.5, 0.75 and 1 by mean per-gene PCC on the companion's validation
    spots (``val_fraction``; the kriging leaves them out of the neighbours there); 0 trains
    no companion. The companion is the mean of ``histosge_members`` such models, alike but
    for the seed of their initialisation and batch order (``init_seed``), and held back the
    same validation spots: one HisToSGE model's held-out PCC moves with that seed about as much as
    with the split (docs/benchmarks.md), and their mean is steadier and better.

    Settings of the ``subspot`` model (:mod:`.models.subspot`): ``cell_um`` is the side
    of its grid cells in µm (``None``: its default, at least two image pixels);
    ``prior_bandwidth`` the width of the measured prior's Gaussian, as a fraction of the
    footprints' spacing; ``image_modulation`` lets the cells' image features modulate the
    prior (off by default, as the pooled super-resolution benchmark found it no help: the map
    is then the smoothed measurement, made consistent with it).

    ``gene_selection`` ranks the genes when ``genes`` is not given: ``"hvg"`` (highly
    variable, as the paper), ``"spatial"`` (Moran's I: spatially structured genes) or
    ``"hvg+spatial"`` (see :func:`napari_histosge.io.preprocess.select_genes`).

    ``init_seed`` seeds the weights' initialisation, the batch order and the jitter; ``None``
    uses ``seed``, which always chooses the validation spots.

    ``val_fraction`` also drives early stopping of ``histosge`` (see :mod:`.early_stopping`):
    that share of each section's training spots (raised to a minimum count where the section
    allows) is held back, scored every ``epochs // 50`` epochs, the best weights after
    training began are kept, and training stops after ``PATIENCE`` scores without a gain
    (``epochs`` is then the most it trains). 0 trains every spot for all epochs, as the paper.
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
    feature_dropout: float = 0.5
    n_pos_bins: int = 64
    head_hidden: int = 2048
    output: str = "softplus"
    image_init: float = 0.0
    head_rank: int | None = None
    group_size: int = 50
    grouping: str = "spatial"
    position_jitter: float = 0.25
    seed: int = 0
    device: str = "auto"
    n_top_genes: int = 1000
    genes: list[str] | None = None
    gene_selection: str = "hvg"
    checkpoint_every: int = 1
    neighbours: int = 8
    neighbour_dropout: float = 0.0
    kriging_rank: int = 16
    image_trend: bool = True
    depth_term: bool = True
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
    histosge_weight: float | None = None
    histosge_epochs: int = 1000
    histosge_members: int = 3
    init_seed: int | None = None
    cell_um: float | None = None
    prior_bandwidth: float = 1.5
    image_modulation: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "dropout", "feature_dropout", "position_jitter", "neighbour_dropout",
                     "aux_weight", "adversarial", "val_fraction", "image_init", "histosge_weight", "cell_um",
                     "prior_bandwidth"):
            value = getattr(self, name)
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                setattr(self, name, float(value))  # numpy scalars -> plain floats (JSON, checks)
        counts = ("epochs", "batch_size", "dim", "heads", "depth", "n_pos_bins", "head_hidden", "group_size",
                  "n_top_genes", "checkpoint_every", "neighbours", "distill_dim", "diffusion_steps",
                  "sample_steps", "n_samples", "histosge_epochs", "histosge_members")
        for name, least in [(n, 1) for n in counts] + [("kriging_rank", 0)]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise InputError(f"training setting {name} must be an integer of at least {least}, got {value!r}")
            setattr(self, name, int(value))
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"training setting lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise InputError(f"training setting weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.position_jitter, (int, float)) and 0 <= self.position_jitter <= 1):
            raise InputError(f"training setting position_jitter must be in [0, 1], got {self.position_jitter!r}")
        for name in ("dropout", "feature_dropout"):
            if not (isinstance(getattr(self, name), (int, float)) and 0 <= getattr(self, name) < 1):
                raise InputError(f"training setting {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.dim % self.heads:
            raise InputError(f"training setting dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not (isinstance(self.neighbour_dropout, float) and 0 <= self.neighbour_dropout < 1):
            raise InputError(f"training setting neighbour_dropout must be in [0, 1), got {self.neighbour_dropout!r}")
        if self.histosge_weight is not None and not (isinstance(self.histosge_weight, float)
                                                     and 0 <= self.histosge_weight <= 1):
            raise InputError(f"training setting histosge_weight must be in [0, 1] or None (chosen on validation "
                             f"spots), got {self.histosge_weight!r}")
        # Optional integers: None means full rank (head_rank) or "use seed" (init_seed).
        optional: tuple[tuple[str, int | None], ...] = (("head_rank", 1), ("init_seed", None))
        for name, lower in optional:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
                    lower is not None and value < lower):
                bound = "" if lower is None else f" of at least {lower}"
                raise InputError(f"training setting {name} must be an integer{bound} or None, got {value!r}")
            setattr(self, name, int(value))
        if not (isinstance(self.val_fraction, float) and 0 <= self.val_fraction < 1):
            raise InputError(f"training setting val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("aux_weight", "adversarial", "image_init"):
            value = getattr(self, name)
            if not (isinstance(value, float) and np.isfinite(value) and value >= 0):
                raise InputError(f"training setting {name} must be a number >= 0, got {value!r}")
        if self.cell_um is not None and not (isinstance(self.cell_um, float) and np.isfinite(self.cell_um)
                                             and self.cell_um > 0):
            raise InputError(f"training setting cell_um must be a positive size in µm or None, got {self.cell_um!r}")
        if not (isinstance(self.prior_bandwidth, float) and 0 < self.prior_bandwidth <= 10):
            raise InputError(f"training setting prior_bandwidth must be in (0, 10], got {self.prior_bandwidth!r}")
        for name in ("use_neighbours", "image_trend", "depth_term", "distill", "diffusion", "image_modulation"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"training setting {name} must be true or false, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if self.gene_selection not in GENE_METHODS:
            raise InputError(f"unknown gene selection {self.gene_selection!r}; choose one of "
                             f"{', '.join(GENE_METHODS)}")
        if self.grouping not in GROUPING_MODES:
            raise InputError(f"unknown grouping {self.grouping!r}; choose one of {', '.join(GROUPING_MODES)}")
        if self.genes is not None:
            self.genes = [str(g) for g in self.genes]

    @property
    def weights_seed(self) -> int:
        """Seed of the initial weights, batch order and jitter: ``init_seed``, else ``seed``."""
        return self.seed if self.init_seed is None else self.init_seed

    def settings(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The values of the settings named ``keys`` (e.g. a model's constructor settings).

        Which settings a model's network takes is the model registry's to say
        (:mod:`napari_histosge.models.registry`).
        """
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`InputError`."""
        return settings_from_dict(cls, d, "training settings")


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
    pos = as_matrix(positions, "positions", 2, None, np.float64)
    if len(pos) == 0:
        raise InputError("a section without spots has no frame")
    return pos.min(axis=0), pos.max(axis=0)


@dataclass
class TrainingData:
    """Everything :func:`train` needs, one row per training spot.

    ``features`` (n, D) image features (D may be 0), ``mean_rgb`` (n, 3), ``positions``
    (n, 2) full-res px (x, y), ``targets`` (n, G) log-normalised expression.
    ``total_counts`` (n,) is each spot's raw total over all its genes (what normalisation
    divided by), for the conditioned model's sequencing-depth term; ``None`` where unknown.

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
    total_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.features = as_matrix(self.features, "features", None)
        n = len(self.features)
        self.mean_rgb = as_matrix(self.mean_rgb, "mean_rgb", 3, n)
        self.positions = as_matrix(self.positions, "positions", 2, n, np.float64)
        self.targets = as_matrix(self.targets, "targets", len(self.genes), n)
        self.spot_ids, self.genes = [str(s) for s in self.spot_ids], [str(g) for g in self.genes]
        if n < 1 or not self.genes:
            raise InputError(f"no training data ({n} spots, {len(self.genes)} genes)")
        if len(self.spot_ids) != n:
            raise InputError(f"{len(self.spot_ids)} spot ids for {n} spots")
        self._check_sections(n)
        if self.total_counts is not None:
            counts = np.asarray(self.total_counts, np.float64)
            if counts.shape != (n,) or not np.all(np.isfinite(counts)) or np.any(counts < 0):
                raise InputError(f"total_counts must be {n} finite counts >= 0, got shape {counts.shape}")
            self.total_counts = counts

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


def as_matrix(a, name: str, width: int | None, n: int | None = None, dtype=np.float32) -> np.ndarray:
    """``a`` as a finite, contiguous ``(n, width)`` array (``None``: any), else :class:`InputError` naming ``name``."""
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


class ModelInputs:
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
            frames: np.ndarray | None = None) -> ModelInputs:
        """Fit the statistics on the training spots (``frames``: per-section boxes, or ``None``)."""
        image = np.concatenate([features, mean_rgb], axis=1).astype(np.float64)
        std = image.std(axis=0)
        std[std < 1e-8] = 1.0  # constant columns: centre only
        if frames is not None:
            return cls(image.mean(axis=0), std, frames[:, 0].min(axis=0), frames[:, 1].max(axis=0), n_bins, frames)
        return cls(image.mean(axis=0), std, positions.min(axis=0), positions.max(axis=0), n_bins)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], n_bins: int) -> ModelInputs:
        """The statistics stored by :meth:`to_meta` in a model's metadata."""
        frames = meta.get("section_frames") if meta.get("position_frame") == PER_SECTION else None
        return cls(meta["feature_mean"], meta["feature_std"], meta["position_min"], meta["position_max"], n_bins,
                   frames)

    def to_meta(self) -> dict[str, Any]:
        """The statistics as plain JSON-serialisable metadata."""
        meta = {"feature_mean": self.mean.tolist(), "feature_std": self.std.tolist(),
                "position_min": self.pos_min.tolist(), "position_max": self.pos_max.tolist()}
        if self.frames is not None:
            meta.update(position_frame=PER_SECTION, section_frames=self.frames.tolist())
        return meta

    def spot_frames(self, sections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-spot ``(min, max)`` rows, ``(n, 2)`` each, from per-spot section labels."""
        if self.frames is None:
            raise ValueError("per-spot frames need the per-section boxes of a several-section model")
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
        """``(x, bins)``: normalised image columns plus unit position, and the position bins."""
        image = (np.concatenate([features, mean_rgb], axis=1) - self.mean) / self.std
        unit, bins = self.position(positions, frame)
        return np.concatenate([image.astype(np.float32), unit], axis=1), bins
