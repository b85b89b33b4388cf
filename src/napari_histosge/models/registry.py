"""Model registry: ``@register_model("name")`` on a ``torch.nn.Module`` subclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InputError

_MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator adding a model class under ``name``.

    The class is built as ``cls(in_dim=..., n_genes=..., **hparams)``.
    """

    def decorate(cls: type) -> type:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered ({_MODELS[name].__name__})")
        _MODELS[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def create_model(name: str, *, in_dim: int, n_genes: int, **hparams: Any):
    """Build the registered model ``name``.

    Parameters
    ----------
    name
        A name from :func:`available_models`.
    in_dim
        Width of the per-spot input vector.
    n_genes
        Number of genes the model predicts.
    **hparams
        Model-specific settings (e.g. ``dim``, ``heads``, ``depth``).

    Raises
    ------
    InputError
        If ``name`` is unknown or a setting is invalid.
    """
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(available_models()) or '(none)'}")
    try:
        return _MODELS[name](in_dim=int(in_dim), n_genes=int(n_genes), **hparams)
    except TypeError as exc:  # an unexpected keyword
        raise InputError(f"bad settings for model {name!r}: {exc}") from exc
