"""What training consumes: spots (:class:`TrainingData`) and model inputs (settings: :mod:`.config`).

Per spot the model sees: z-scored image features and mean RGB (statistics fitted on the
training spots), the position scaled into [0, 1] by the training bounding box (each
section's own box for several sections, see :func:`section_frame`), and that position
discretised into ``n_pos_bins`` bins per axis for the learnable embeddings
(:class:`ModelInputs`, whose statistics are frozen into the model's metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .model_meta import ModelMeta


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


#: ``meta.position_frame`` of a model trained on several sections: each section's
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
    def from_meta(cls, meta: ModelMeta, n_bins: int) -> ModelInputs:
        """The statistics stored by :meth:`record` in a model's metadata."""
        mean, std, lo, hi = meta.feature_mean, meta.feature_std, meta.position_min, meta.position_max
        if mean is None or std is None or lo is None or hi is None:
            raise InputError("the model's metadata lacks its input statistics (feature_mean, feature_std, "
                             "position_min, position_max): the checkpoint is incomplete")
        frames = meta.section_frames if meta.position_frame == PER_SECTION else None
        return cls(np.asarray(mean), np.asarray(std), np.asarray(lo), np.asarray(hi), n_bins,
                   None if frames is None else np.asarray(frames))

    def record(self, meta: ModelMeta) -> None:
        """Write the statistics into ``meta`` as plain JSON-serialisable lists."""
        meta.feature_mean, meta.feature_std = self.mean.tolist(), self.std.tolist()
        meta.position_min, meta.position_max = self.pos_min.tolist(), self.pos_max.tolist()
        if self.frames is not None:
            meta.position_frame, meta.section_frames = PER_SECTION, self.frames.tolist()

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
