"""The ``subspot`` model's settings (no torch: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ...training.config import TrainConfig, redefault, register_config, setting


@register_config
@dataclass
class SubspotConfig(TrainConfig):
    """Settings of the sub-spot model (:mod:`napari_histosge.models.subspot`).

    ``cell_um`` is the side of its grid cells; ``prior_bandwidth`` the width of the measured
    prior's Gaussian, as a fraction of the footprints' spacing; ``image_modulation`` lets the
    cells' image features modulate the prior (off by default, as the pooled
    super-resolution benchmark found it no help: the map is then the smoothed measurement,
    made consistent with it). ``prior`` is a ``cellridge`` model of other sections whose
    image-to-expression map supplies each gene's pattern within a footprint, shrunk per gene
    to what helps on this section's own footprints (:mod:`.histology_prior`).
    """

    MODEL = "subspot"

    cell_um: float | None = setting(None, "side of the grid cells in µm", kind=float, optional=True,
                                    none_means="14 µm, at least two image pixels", above=0)
    prior_bandwidth: float = setting(0.5, "width of the smoothed measurement it starts from, in spot spacings",
                                     above=0, most=10)
    image_modulation: bool = setting(False, "let the cells' image features modulate the smoothed measurement "
                                     "(no help on the pooled super-resolution benchmark)")
    prior: str | None = setting(None, "a cellridge model of other sections (.pt) whose image-to-expression map "
                                "draws the pattern inside each spot, per gene as far as it helps here",
                                kind=str, optional=True, none_means="no histology prior")


@register_config
@dataclass
class CellRidgeConfig(TrainConfig):
    """Settings of the ``cellridge`` model: a ridge map from grid cells' image features to expression.

    Trained on the spots of one or more sections (each spot the mean of its cells), it is
    the histology prior of the sub-spot model (``subspot --prior``); ``cell_um`` is the side
    of its cells, which a sub-spot model it serves must share. It fits the ``n_top_genes``
    most expressed genes as well as the ranked ones.
    """

    MODEL = "cellridge"

    # A prior serves whichever genes a sub-spot model of another section predicts: many, as a ridge is cheap.
    n_top_genes: int = redefault(TrainConfig, "n_top_genes", 3000)

    cell_um: float | None = setting(None, "side of the grid cells in µm", kind=float, optional=True,
                                    none_means="14 µm, at least two image pixels", above=0)
