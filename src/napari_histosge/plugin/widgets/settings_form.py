"""Form controls built from declared settings (:mod:`napari_histosge.settings`), one per setting.

The Train widget shows the chosen model's settings with :class:`SettingsForm`: a control per
declared setting of the model's settings class, by its kind (a spin box for an integer, a
check box for true/false, a list for a choice, a file field for a path, a text field for a
number or an optional value, empty meaning ``None``), its default the library's and its
tooltip the setting's help. What the form gives the core is the settings a user edited
(typed or picked, whatever the value: the default typed is given too), so the library's own
rules for settings left alone still apply; the form's own sets of a value are not edits.
"""

from __future__ import annotations

from dataclasses import Field
from pathlib import Path
from typing import Any, cast

from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, SpinBox
from magicgui.widgets.bases import ValueWidget

from ...errors import InputError
from ...settings import Setting, declared_fields, setting_of

#: A setting's control: a value widget, or a file field (a container of a text field and a button).
Control = ValueWidget | FileEdit
#: The largest whole number an integer spin box offers where the setting sets no upper bound.
INT_MOST = 2**31 - 1


def _label(name: str) -> str:
    """A control's label from its setting's name: words apart, a ``_um`` unit as µm (``grid_um``: "grid µm")."""
    words = name.split("_")
    return " ".join("µm" if word == "um" and i else word for i, word in enumerate(words))


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)  # repr: read back exactly


def setting_control(name: str, spec: Setting, default: Any, tip: str = "") -> Control:
    """The control of one declared setting, showing ``default``; ``tip`` is added to the setting's help."""
    tooltip = spec.help + (f". {tip}" if tip else "")
    label = _label(name)
    if spec.kind is bool and not spec.optional:
        return CheckBox(label=label, value=bool(default), tooltip=tooltip)
    if spec.choices and not spec.optional:
        return ComboBox(label=label, choices=list(spec.choices), value=default, tooltip=tooltip)
    if spec.kind is int and not spec.optional:
        low = spec.least if spec.least is not None else (spec.above + 1 if spec.above is not None else -INT_MOST)
        high = spec.most if spec.most is not None else (spec.below - 1 if spec.below is not None else INT_MOST)
        return SpinBox(label=label, min=int(low), max=int(high), value=int(default), tooltip=tooltip)
    if spec.kind is Path:
        return FileEdit(label=label, mode=FileDialogMode.EXISTING_FILE, value=default, tooltip=tooltip)
    text = LineEdit(label=label, value=_text_of(default), tooltip=tooltip)
    if spec.optional:
        text.native.setPlaceholderText(f"empty: {spec.none_means}" if spec.none_means else "empty: none")
    return text


def control_value(name: str, spec: Setting, control: Control, what: str = "training setting") -> Any:
    """The value ``control`` holds, as the setting's kind (not checked against its bounds: the library does)."""
    value = control.value
    if isinstance(control, FileEdit):
        text = "" if value is None else str(value)
        return None if text in ("", ".") else text
    if not isinstance(control, LineEdit):
        return value
    text = str(value).strip()
    if not text:
        return None if spec.optional else text
    if spec.kind is list:
        from ...gene_lists import parse_gene_names

        return parse_gene_names(text)
    if spec.kind in (int, float):
        try:
            return spec.kind(float(text)) if spec.kind is float else int(text)
        except ValueError:
            raise spec.error(f"{what} {name}", text) from None
    return text


class SettingsForm(Container):
    """A control per declared setting of a settings class, rebuilt for another class by :meth:`show_class`.

    Parameters
    ----------
    skip
        Settings shown elsewhere (e.g. the Train widget's genes section); they get no control.
    tips
        Text added to a setting's tooltip, by name (what the form does with it).
    what
        What an error calls a setting ("training setting epochs must be ...").
    """

    def __init__(self, *, skip: frozenset[str] = frozenset(), tips: dict[str, str] | None = None,
                 what: str = "training setting") -> None:
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)
        self.skip, self.tips, self.what = skip, dict(tips or {}), what
        self.settings_class: Any = None
        self.fields: dict[str, Field] = {}
        #: The settings whose control the user edited (its changed signal outside the form's own sets).
        self.edited: set[str] = set()
        self._setting = False  # True while the form sets values itself: those are not edits

    def show_class(self, cls: Any) -> None:
        """Show the settings of ``cls`` with its defaults, keeping the values edited for settings it shares."""
        given = self.given_values(quiet=True) if self.settings_class is not None else {}
        self._setting = True
        try:
            self.clear()
            self.settings_class = cls
            self.fields = {f.name: f for f in declared_fields(cls) if f.name not in self.skip}
            for name, f in self.fields.items():
                control = setting_control(name, setting_of(f), cls.default_of(name), self.tips.get(name, ""))
                control.name = name
                self.append(control)
                if name in given:
                    self._set(control, given[name])
                control.changed.connect(lambda *_, name=name: self._edited(name))
        finally:
            self._setting = False
        self.edited = {name for name in given if name in self.fields}

    def show_values(self, values: dict[str, Any]) -> None:
        """Show ``values`` (e.g. a start model's network settings) in the controls the user has not edited.

        They are not edits: left alone, such a setting is still not given.
        """
        self._setting = True
        try:
            for name, value in values.items():
                if name in self.fields and name not in self.edited:
                    self._set(self.control(name), value)
        finally:
            self._setting = False

    def _edited(self, name: str) -> None:
        if not self._setting:
            self.edited.add(name)

    def control(self, name: str) -> Control:
        """The control of setting ``name``."""
        return cast(Control, self[name])

    def given_values(self, *, quiet: bool = False) -> dict[str, Any]:
        """The settings whose control the user edited, with the values they hold (the default included).

        A value that cannot be read as its kind raises the setting's :class:`InputError`
        (``quiet``: it is left out instead).
        """
        out: dict[str, Any] = {}
        for name, f in self.fields.items():
            if name not in self.edited:
                continue
            try:
                value = control_value(name, setting_of(f), self[name], self.what)
            except InputError:
                if quiet:
                    continue
                raise
            out[name] = value
        return out

    @staticmethod
    def _set(control: Control, value: Any) -> None:
        try:
            control.value = _text_of(value) if isinstance(control, LineEdit) else value
        except (ValueError, TypeError):
            pass  # a value the new control cannot hold keeps its default
