"""Expression models: the registry, and the HisToSGE, conditioned and sub-spot models it holds.

Every model is a :class:`~.registry.ModelSpec` (network, trainer, trained class, settings)
registered by the module that trains it; :func:`train`, :func:`load_model` and
:func:`train_config` find it by name. Adding a model is adding one module that calls
:func:`register_model`, and importing that module here.
"""

from __future__ import annotations

# Importing a model's trainer module registers the model.
from . import histosge_fit  # noqa: F401
from .conditioned import fit as conditioned_fit  # noqa: F401
from .conditioned.network import ConditionedModel
from .histosge import HisToSGE
from .registry import (
    ModelSpec,
    create_model,
    load_model,
    model_hparams,
    model_names,
    model_spec,
    register_model,
    train,
    train_config,
)
from .subspot import fit as subspot_fit  # noqa: F401

__all__ = ["ConditionedModel", "HisToSGE", "ModelSpec", "create_model", "load_model", "model_hparams",
           "model_names", "model_spec", "register_model", "train", "train_config"]
