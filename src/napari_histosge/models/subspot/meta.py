"""What the cell models (``subspot``, ``cellridge``) record beyond every model's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...training.model_meta import ModelMeta

__all__ = ["CellRidgeMeta", "SubspotMeta"]


@dataclass
class CellRidgeMeta(ModelMeta):
    """What a ridge of cell image features (``cellridge``, a histology prior) records."""

    #: Side of its grid cells in µm (``None`` where a training slide's pixel size is unknown).
    cell_um: float | None = None
    #: Median over genes of the ridge penalty chosen by cross-validation.
    ridge_alpha_median: float | None = None


@dataclass
class SubspotMeta(CellRidgeMeta):
    """What a fitted ``subspot`` model records: its cells, footprints, prior and image modulation."""

    #: Side of the grid cells it was fitted on, full-res px.
    cell_px: float | None = None
    #: Shape of its measured footprints: ``shape``, ``size_px``, ``angle`` (``Footprints.to_dict``).
    footprint: dict[str, Any] | None = None
    #: Bandwidth of the measured prior's kernel, full-res px.
    prior_bandwidth_px: float | None = None
    #: Ids of the measured footprints it stores, in order.
    footprint_ids: list[str] | None = None
    #: Share of the image modulation kept (0: the prior alone, no image read).
    modulation_share: float = 0.0
    #: How the image modulation was calibrated one scale up (pooled squares, PCC with and without it).
    calibration: dict[str, Any] | None = None
    #: The histology prior whose pattern replaced the image modulation (path, genes kept, weights).
    histology_prior: dict[str, Any] | None = None
