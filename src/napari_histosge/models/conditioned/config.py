"""The ``conditioned`` model's settings (no torch: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ...training.config import redefault, register_config, setting
from ..histosge_config import HisToSGEConfig


@register_config
@dataclass
class ConditionedConfig(HisToSGEConfig):
    """Settings of the conditioned model (histology + measured neighbours).

    It extends HisToSGE's settings: its network uses their width and dropout, and its
    HisToSGE companion (image + position, trained first on the same spots) all of them.
    ``neighbours`` measured spots form each query's context, combined by local kriging with
    a kernel per gene; ``kriging_rank`` principal directions may couple the genes there, and
    with ``image_trend`` the image may predict those directions (kriging with an external
    drift, see :mod:`.image_trend`); each gene takes the estimator whose 5-fold
    cross-validated PCC on the training spots is highest. ``depth_term`` adds the kriged
    sequencing depth of the neighbours to genes counted less than once per spot on average
    (:mod:`.sequencing_depth`). ``use_neighbours``, ``distill``, ``diffusion`` and
    ``adversarial`` switch its components for ablations; epoch 0 is the kriging estimate
    alone.

    Defaults that differ from HisToSGE's: it keeps its best epoch on a validation split and
    peaks within a few epochs, and its kriging uses 32 neighbours
    (notes/training-defaults.md). Semantic distillation is off: on every shared section the
    held-out PCC with and without it was the same (benchmarks/results/conditioned.json). The
    diffusion sampler stays: its spread is the uncertainty layer.

    ``histosge_weight`` blends the companion's prediction in with this weight; ``None``
    chooses it among 0, 0.25, 0.5, 0.75 and 1 on the companion's validation spots; 0 trains
    no companion. The companion is the mean of ``histosge_members`` models alike but for the
    seed of their initialisation, steadier than one.
    """

    MODEL = "conditioned"

    epochs: int = redefault(HisToSGEConfig, "epochs", 20)
    batch_size: int = redefault(HisToSGEConfig, "batch_size", 256)
    neighbours: int = setting(32, "measured neighbours in each position's context", least=1)
    neighbour_dropout: float = setting(0.0, "share of candidate neighbours skipped in training", least=0, below=1)
    kriging_rank: int = setting(16, "principal directions that may couple genes when kriging the neighbours, "
                                "per gene where cross-validation favours it (0: krige every gene alone)", least=0)
    image_trend: bool = setting(True, "let the image predict the genes' principal directions (the trend the "
                                "kriging interpolates around)")
    depth_term: bool = setting(True, "add the neighbours' kriged sequencing depth to genes counted less than "
                               "once per spot")
    use_neighbours: bool = setting(True, "read the measured neighbours (off: an ablation)")
    distill: bool = setting(False, "semantic distillation of the image features (no gain measured)")
    distill_dim: int = setting(64, "width of the distilled features", least=1)
    aux_weight: float = setting(0.5, "weight of the distillation loss", least=0)
    diffusion: bool = setting(True, "residual diffusion sampler (its spread is the uncertainty layer)")
    diffusion_steps: int = setting(100, "noise levels of the diffusion sampler", least=1)
    sample_steps: int = setting(8, "DDIM steps per sample", least=1)
    n_samples: int = setting(4, "samples per position (their spread is the uncertainty)", least=1)
    adversarial: float = setting(0.0, "weight of the channel-aware adversarial term (0 is off)", least=0)
    histosge_weight: float | None = setting(None, "weight of the HisToSGE companion in the prediction",
                                            kind=float, optional=True, none_means="chosen on validation spots; "
                                            "0 trains no companion", least=0, most=1)
    histosge_epochs: int = setting(1000, "most epochs of each companion model (early-stopped)", least=1)
    histosge_members: int = setting(3, "HisToSGE models in the companion, alike but for their initial weights",
                                    least=1)

    def averaged_run(self) -> tuple[str, int]:
        """Only the HisToSGE companion's runs average their weights (``average_from``), for ``histosge_epochs``."""
        return "histosge_epochs", self.histosge_epochs
