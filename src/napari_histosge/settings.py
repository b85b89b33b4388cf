"""Declared settings: each field of a settings dataclass says what it accepts, with its help text.

A field made by :func:`setting` carries a :class:`Setting`: its kind, bounds and help.
The settings classes (the training settings of every model, the image-feature settings)
check their values with it, the command line builds its flags from it, and the Train
widget its controls, so a setting is declared in one place. :func:`settings_from_dict`
reads such a class back from a plain dict (JSON, checkpoints), refusing unknown keys.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True)
class Setting:
    """What one setting accepts, and its help text.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``list`` (of gene names) or
    :class:`~pathlib.Path` (a file, kept as text); ``optional`` allows ``None``
    (``none_means`` says what it stands for). Bounds: ``least``/``most`` inclusive,
    ``above``/``below`` exclusive. ``flag`` is the command-line flag (default: ``--`` and the
    name with dashes); ``on_cli=False`` keeps it off the command line's settings flags (e.g.
    ``device``, which every command takes). ``meaning`` replaces the generated words for a
    valid value where they read poorly (e.g. "a positive number"). ``accepts``: classes whose
    instances the library also takes as they are (an in-memory form of what a file gives, e.g. a
    segmentation for its path); the command line and the forms offer the declared kind only.
    """

    help: str
    kind: type
    optional: bool = False
    none_means: str = ""
    least: float | None = None
    most: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    on_cli: bool = True
    meaning: str | None = None
    accepts: tuple[type, ...] = ()

    def describe(self) -> str:
        """What a valid value is, in words (used in errors and help)."""
        if self.meaning is not None:
            text = self.meaning
        elif self.kind is bool:
            text = "true or false"
        elif self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.kind is list:
            text = "a list of gene names"
        elif self.kind is str:
            text = "text"
        elif self.kind is Path:
            text = "a file path"
        else:
            text = ("an integer" if self.kind is int else "a number") + self._bounds()
        return text + (f" or None ({self.none_means})" if self.optional and self.meaning is None else "")

    def _bounds(self) -> str:
        low = f"[{_num(self.least)}" if self.least is not None else (
            f"({_num(self.above)}" if self.above is not None else None)
        high = f"{_num(self.most)}]" if self.most is not None else (
            f"{_num(self.below)})" if self.below is not None else None)
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return ""

    def check(self, label: str, value: Any) -> Any:
        """``value`` as a plain Python value of this setting, or :class:`InputError` "<label> must be ..."."""
        if value is None:
            if self.optional:
                return None
            raise self.error(label, value)
        if self.accepts and isinstance(value, self.accepts):
            return value
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise self.error(label, value)
            return bool(value)
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise self.error(label, value)
            return value
        if self.kind is Path:
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise self.error(label, value)
            return str(value)  # text: settings go to JSON and checkpoints
        if self.kind is list:
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise self.error(label, value)
            return [str(v) for v in value]
        number = self._number(label, value)
        if ((self.least is not None and number < self.least) or (self.most is not None and number > self.most)
                or (self.above is not None and number <= self.above)
                or (self.below is not None and number >= self.below)):
            raise self.error(label, value)
        return number

    def _number(self, label: str, value: Any) -> int | float:
        if isinstance(value, (bool, np.bool_)):
            raise self.error(label, value)
        if self.kind is int:
            if not isinstance(value, (int, np.integer)):
                raise self.error(label, value)
            return int(value)
        if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise self.error(label, value)
        return float(value)  # numpy scalars -> plain floats (JSON, checks)

    def error(self, label: str, value: Any) -> InputError:
        """The one-line error of a ``value`` this setting refuses, naming it by ``label``."""
        return InputError(f"{label} must be {self.describe()}, got {value!r}")


def _num(x: float) -> str:
    return f"{x:g}"


def setting(default: Any, help: str, *, kind: type | None = None, **bounds: Any) -> Any:
    """A settings field: ``default``, the ``help`` text and what it accepts (see :class:`Setting`).

    ``kind`` defaults to the type of ``default`` (give it when the default is ``None``).
    """
    kind = kind or type(default)
    spec = Setting(help=help, kind=kind, **bounds)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})


def setting_of(f: Field) -> Setting:
    """The :class:`Setting` of a settings field."""
    return f.metadata["setting"]


def declared_fields(cls: type[DataclassInstance]) -> list[Field]:
    """The fields of ``cls`` declared with :func:`setting`, in order."""
    return [f for f in fields(cls) if "setting" in f.metadata]


def check_settings_of(instance: DataclassInstance, what: str) -> None:
    """Check (and make plain) every declared setting of ``instance``; an error names it "<what> <name>"."""
    for f in declared_fields(type(instance)):
        setattr(instance, f.name, setting_of(f).check(f"{what} {f.name}", getattr(instance, f.name)))


def settings_from_dict(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)``, or an :class:`InputError` listing unknown keys as ``unknown <what>: ...``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)
