"""The training flags of ``train`` and ``recover``, built from the models' settings classes.

Each setting is declared once, with its help text and bounds, in the settings class of the
models that have it (:mod:`napari_histosge.training.config`); this module turns those
declarations into argparse flags, reads the given flags back into settings, checks them
against the chosen model before any data are read, and renders the table of
docs/cli.md (``python -m napari_histosge.cli.settings`` prints it).
"""

from __future__ import annotations

import argparse
from dataclasses import Field
from typing import Any

from .. import models  # noqa: F401  (registers every model's settings class; no torch)
from ..errors import InputError
from ..gene_lists import parse_gene_names
from ..settings import Setting
from ..training.config import TrainConfig, config_class, make_config, offered_models, setting_names, setting_of


def _flag(f: Field) -> str:
    return setting_of(f).flag or "--" + f.name.replace("_", "-")


def _groups() -> list[tuple[str, list[Field]]]:
    """``(title, settings)``: those every model shares, then each model's own."""
    groups = [("every model", [f for f in TrainConfig.own_fields() if setting_of(f).on_cli])]
    seen: set[str] = set()
    for name in _model_order():
        # A setting two models declare alike (cellridge and subspot: cell_um) is one flag, in the first group.
        own = [f for f in config_class(name).own_fields() if setting_of(f).on_cli and f.name not in seen]
        seen |= {f.name for f in own}
        if own:
            groups.append((f"{name} model", own))
    return groups


def _model_order() -> list[str]:
    return offered_models()


def _models_with(name: str) -> list[str]:
    return [m for m in _model_order() if name in setting_names(config_class(m))]


def _default_text(name: str) -> str:
    """The default of setting ``name`` per model that has it, e.g. ``1000; conditioned: 20``."""
    spec = setting_of(config_class(_models_with(name)[0]).__dataclass_fields__[name])
    values = [(m, config_class(m).default_of(name)) for m in _models_with(name)]

    def text(v: Any) -> str:
        if v is None:
            return spec.none_means.split(";")[0]
        if isinstance(v, bool):
            return "on" if v else "off"
        return f"{v:g}" if isinstance(v, float) else str(v)

    first = values[0][1]
    others = [f"{m}: {text(v)}" for m, v in values[1:] if v != first]
    return "; ".join([text(first), *others])


def add_settings_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and one flag per setting, grouped by the models that have it (not given: ``None``)."""
    names = _model_order()
    p.add_argument("--model", default=names[0], choices=names,
                   help=f"the model to train, one of the registered models: {', '.join(names)} (default "
                        f"{names[0]}; each model's own settings are grouped below; docs/choosing-a-model.md "
                        "compares them)")
    for title, group_fields in _groups():
        g = p.add_argument_group(f"training settings: {title} (a flag not given keeps the model's default)")
        for f in group_fields:
            _add_flag(g, f)


def _add_flag(g, f: Field) -> None:
    spec: Setting = setting_of(f)
    help_text = f"{spec.help} (default {_default_text(f.name)})".replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
    if spec.kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif spec.kind in (int, float):
        kwargs.update(type=spec.kind, metavar=_flag(f)[2:].upper().replace("-", "_"))
    elif spec.choices:
        kwargs["choices"] = list(spec.choices)
    g.add_argument(_flag(f), **kwargs)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give (flags not given are left out), plus ``device``."""
    given: dict[str, Any] = {"device": args.device}
    for _, group_fields in _groups():
        for f in group_fields:
            value = getattr(args, f.name, None)
            if value is None:
                continue
            if setting_of(f).kind is list:
                value = parse_gene_names(str(value))
                if not value:
                    raise InputError(f"{_flag(f)} lists no name: {getattr(args, f.name)!r}")
            given[f.name] = value
    return given


def check_settings(args: argparse.Namespace) -> TrainConfig:
    """The chosen model's settings from the flags (torch-free); a flag of another model is one clear line."""
    model = args.model
    own = setting_names(config_class(model))
    given = given_settings(args)
    for name in given:
        if name not in own:
            flag = _flag(next(f for _, fs in _groups() for f in fs if f.name == name))
            owners = _models_with(name)
            raise InputError(f"{flag} is a setting of the {' and '.join(owners)} model{'s' * (len(owners) > 1)}, "
                             f"not of {model} (--model {model})")
    return make_config(model, given)


def settings_table() -> str:
    """The Markdown table of every training flag, as docs/cli.md shows it."""
    rows = ["| Option | Models | Default | Meaning |", "|---|---|---|---|",
            f"| `--model {'&#124;'.join(_model_order())}` | | histosge | which model to train "
            "(see [choosing a model](choosing-a-model.md)) |"]
    for title, group_fields in _groups():
        models_text = "all" if title == "every model" else ", ".join(_models_with(group_fields[0].name))
        for f in group_fields:
            spec = setting_of(f)
            flag = _flag(f)
            if spec.kind is bool:
                flag = f"{flag}, --no-{flag[2:]}"
            meaning = f"{spec.help}; {spec.describe()}".replace("|", "\\|")
            rows.append(f"| `{flag}` | {models_text} | {_default_text(f.name)} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
