"""The image-feature settings (no torch, no image libraries: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..settings import check_settings_of, setting, settings_from_dict

#: ``FeatureConfig.stain`` values (:mod:`.stain`).
STAIN_METHODS = ("none", "macenko")


@dataclass
class FeatureConfig:
    """How to extract patch features.

    Every field is a declared setting (:func:`napari_histosge.settings.setting`): its help
    text and bounds check the values here and build the command line's image-feature flags.
    ``patch_um`` is used where the image's micrometres per pixel are known, else the patch is
    ``patch_spot_fraction`` spot diameters wide. ``amp`` runs the extractor under autocast
    on CUDA (bfloat16 where supported, else float16) with channels-last inputs; it is ignored
    on CPU and MPS. ``stain="macenko"`` re-renders every patch with reference stains, from
    stains estimated once per slide (:mod:`.stain`), for models meant to work across slides
    stained or scanned differently.
    """

    extractor: str = setting(
        "default", "'default' (weight-free, offline), 'nuclei' (nucleus morphometrics, needs the pixel size), "
        "'uni', 'timm:<model name>', 'hf:<org>/<name>' (a timm model of the Hugging Face hub, e.g. "
        "hf:bioptimus/H-optimus-0; also 'hf-hub:<org>/<name>'), several joined by '+' (e.g. default+nuclei: their "
        "features side by side), or 'none' (image features off)", meaning="an extractor's name")
    checkpoint: str | None = setting(
        None, "local weights for the extractor: a checkpoint file (UNI or timm), or for hf:<org>/<name> the folder "
        "of the hub's files (config.json and model.safetensors or pytorch_model.bin)", kind=Path, optional=True,
        none_means="the extractor's own", flag="--weights")
    patch_um: float | None = setting(None, "patch edge in micrometres (needs a known pixel size)", kind=float,
                                     optional=True, none_means="patch_spot_fraction", above=0,
                                     meaning="a positive number")
    patch_spot_fraction: float = setting(2.0, "patch edge as a multiple of the spot diameter (used when --patch-um "
                                         "is not given)", above=0, meaning="a positive number")
    batch_size: int = setting(64, "patches per extractor batch", least=1, flag="--feature-batch-size")
    device: str = setting("auto", "where the extractor runs: auto (cuda, then mps, then cpu), cpu, cuda or mps",
                          on_cli=False)
    cache: bool = setting(True, "read or write the feature cache", flag="--no-cache")
    amp: bool = setting(True, "on CUDA, autocast with channels-last inputs", on_cli=False)
    stain: str = setting("none", "stain normalisation of the patches: 'macenko' re-renders every slide's patches "
                         "with reference stains estimated once per slide, for models meant for slides stained or "
                         "scanned elsewhere", choices=STAIN_METHODS)

    def __post_init__(self) -> None:
        check_settings_of(self, "feature setting")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise InputError."""
        return settings_from_dict(cls, d, "feature settings")
