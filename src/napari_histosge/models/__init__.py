"""Expression models: a registry plus the HisToSGE model and spot grouping.

Adding a model is adding one class decorated with :func:`register_model` in one file
(and importing that file here).
"""

from __future__ import annotations

from .registry import available_models, create_model, register_model

# Importing the module registers its models.
from . import histosge as _histosge  # noqa: E402,F401  (registration side effect)
from .histosge import HisToSGE  # noqa: E402

__all__ = ["HisToSGE", "available_models", "create_model", "register_model"]
