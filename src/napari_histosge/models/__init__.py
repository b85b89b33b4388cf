"""Expression models: a registry plus the HisToSGE model and spot grouping.

Adding a model is adding one class decorated with :func:`register_model` in one file
(and importing that file here).
"""

from __future__ import annotations

# Importing a model's module registers it.
from .conditioned.network import ConditionedModel
from .histosge import HisToSGE
from .registry import available_models, create_model, register_model

__all__ = ["ConditionedModel", "HisToSGE", "available_models", "create_model", "register_model"]
