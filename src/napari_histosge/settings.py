"""Settings dataclasses from plain dicts (JSON, checkpoints, CLI), refusing unknown keys clearly."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def settings_from_dict(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)``, or an :class:`InputError` listing unknown keys as ``unknown <what>: ...``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)
