"""The ``subspot`` model's settings (no torch: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ...training.config import TrainConfig, register_config, setting


@register_config
@dataclass
class SubspotConfig(TrainConfig):
    """Settings of the sub-spot model (:mod:`napari_histosge.models.subspot`).

    ``cell_um`` is the side of its grid cells; ``prior_bandwidth`` the width of the measured
    prior's Gaussian, as a fraction of the footprints' spacing; ``image_modulation`` lets the
    cells' image features modulate the prior (off by default, as the pooled
    super-resolution benchmark found it no help: the map is then the smoothed measurement,
    made consistent with it).
    """

    MODEL = "subspot"

    cell_um: float | None = setting(None, "side of the grid cells in µm", kind=float, optional=True,
                                    none_means="14 µm, at least two image pixels", above=0)
    prior_bandwidth: float = setting(0.5, "width of the smoothed measurement it starts from, in spot spacings",
                                     above=0, most=10)
    image_modulation: bool = setting(False, "let the cells' image features modulate the smoothed measurement "
                                     "(no help on the pooled super-resolution benchmark)")
