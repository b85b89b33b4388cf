"""Expression models: the registry, and the HisToSGE, conditioned and sub-spot models it holds.

Every model is two registrations: its settings class (:func:`~napari_histosge.training.config.register_config`,
in a light module the command line reads to build its flags) and its
:class:`~.registry.ModelSpec` (network, trainer, trained class), registered by the module
that trains it. The settings load with this package; the models (torch) on first use of
a name below that needs them. Adding a model is adding its module or subpackage and its
two lines here.
"""

from __future__ import annotations

import importlib
from typing import Any

from .conditioned.config import ConditionedConfig
from .histosge_config import HisToSGEConfig
from .subspot.config import CellRidgeConfig, SubspotConfig

#: The modules that register each model's network and trainer (they import torch).
MODEL_MODULES = (".histosge_fit", ".conditioned.fit", ".subspot.fit", ".subspot.cellridge")

#: Public name -> module that defines it (imported, with every model, on first access).
_LAZY = {
    "ConditionedModel": ".conditioned.network",
    "HisToSGE": ".histosge",
    "HisToSGETrainedModel": ".histosge_trained",
    **{name: ".registry" for name in ("ModelSpec", "create_model", "load_model", "model_hparams", "model_names",
                                      "model_spec", "register_model", "train", "train_config")},
}

__all__ = ["CellRidgeConfig",
           "ConditionedConfig", "ConditionedModel", "HisToSGE", "HisToSGEConfig", "HisToSGETrainedModel", "ModelSpec",
           "SubspotConfig",
           "create_model", "load_model", "model_hparams", "model_names", "model_spec", "register_model", "train",
           "train_config"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for implementation in MODEL_MODULES:  # the registry is complete before any of it is used
        importlib.import_module(implementation, __name__)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
