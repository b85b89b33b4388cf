"""What the conditioned model records beyond every model's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...training.model_meta import ModelMeta

__all__ = ["ConditionedMeta"]


@dataclass
class ConditionedMeta(ModelMeta):
    """What a trained ``conditioned`` model records: its reference spacing, kriging, depth term and companions."""

    #: Median spacing of its reference (measured) spots, full-res px.
    spacing_px: float | None = None
    #: Its HisToSGE companions: ``members`` (each ``config`` and ``meta``) and the blend ``weight``.
    histosge: dict[str, Any] | None = None
    #: The kriging estimators: ``share`` of genes per estimator, ``cv_pcc``, ``image_trend``.
    kriging: dict[str, Any] | None = None
    #: The sequencing-depth term: ``genes`` it applies to, ``kernel``, ``log_mean``, ``log_sd``.
    depth_term: dict[str, Any] | None = None
