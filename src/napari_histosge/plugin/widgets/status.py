"""Status lines that wrap inside their dock and never widen it, with the full text as tooltip."""

from __future__ import annotations

import re

from magicgui.widgets import Label
from qtpy.QtCore import QEvent, QObject

#: Zero-width space: lets Qt break a long path or name after a separator.
_BREAK = "\u200b"
#: Words longer than this (paths, long names) get break opportunities.
LONG_WORD = 24
#: The most lines a status label grows to; its tooltip holds the full text.
MAX_LINES = 10


def breakable(text: str) -> str:
    """``text`` where long words (paths) may break after a slash, ``_``, ``-`` or ``+``."""
    def split(match: re.Match) -> str:
        return re.sub(r"([/\\_+\-])", r"\1" + _BREAK, match.group(0))

    return re.sub(r"\S{" + str(LONG_WORD + 1) + ",}", split, text)


def status_label() -> Label:
    """A word-wrapping label whose width follows its dock instead of its text.

    A plain word-wrapped QLabel still asks for the width of its longest unbreakable word
    (a checkpoint path), and the dock grows to give it; this one ignores its size hint
    horizontally, and :func:`set_status` adds break opportunities so long paths wrap.
    """
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value="")
    native = label.native
    native.setWordWrap(True)
    native.setMinimumWidth(0)
    policy = native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    policy.setVerticalPolicy(QSizePolicy.Policy.Minimum)
    native.setSizePolicy(policy)
    native._fit_height = _FitHeight(native)  # parented to the label: lives as long as it
    native.installEventFilter(native._fit_height)
    return label


def fit_height(native) -> None:
    """Keep a wrapped label as tall as its text at its current width, up to :data:`MAX_LINES` lines.

    A crowded dock otherwise squeezes the label and clips its first and last lines; past
    the cap, the tooltip holds the full text (a dock taller than the screen helps no one).
    """
    needed = native.heightForWidth(max(native.width(), 1)) if native.text() else 0
    needed = min(max(needed, 0), MAX_LINES * native.fontMetrics().lineSpacing())
    if needed != native.minimumHeight():
        native.setMinimumHeight(needed)


class _FitHeight(QObject):
    """Re-fits a wrapped label's height whenever its width changes (the dock resized)."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Resize:
            fit_height(obj)
        return False


def set_status(label: Label, text: str) -> None:
    """Show ``text`` in ``label`` (wrapping anywhere sensible); the tooltip keeps the exact text."""
    label.value = breakable(text)
    label.tooltip = text
    fit_height(label.native)


def status_of(label: Label) -> str:
    """The text shown by a :func:`status_label` without its break opportunities."""
    return str(label.value).replace(_BREAK, "")
