"""Training settings: those every model shares (:class:`TrainConfig`) and each model's own, declared once.

Every setting is a dataclass field made by :func:`setting`, which carries its help text
and its bounds. Validation (:meth:`TrainConfig.__post_init__`), the command line's flags
(:mod:`napari_histosge.cli.options`) and the settings table in docs/cli.md are all built
from these declarations. A model's settings are a subclass of :class:`TrainConfig` that adds
its own fields (and may change a shared field's default with :func:`redefault`), registered
under the model's name with :func:`register_config`. Checkpoints store
:meth:`TrainConfig.to_dict`; :func:`config_from_dict` reads them back, also those written when
all settings were one flat class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol, TypeVar, cast

import numpy as np

from ..errors import InputError

T = TypeVar("T", bound="TrainConfig")

#: How genes are ranked (``io.preprocess.GENE_METHODS``; that package loads anndata, this one stays light).
GENE_SELECTIONS = ("hvg", "spatial", "hvg+spatial")
#: The ``markers`` setting: auto, none or a tissue of ``io.markers``' table (checked equal to it by the tests).
MARKER_CHOICES = ("auto", "none", "breast", "brain-cortex", "olfactory-bulb")


@dataclass(frozen=True)
class Setting:
    """What one setting accepts, and its help text.

    ``kind`` is ``int``, ``float``, ``bool``, ``str`` or ``list`` (of gene names);
    ``optional`` allows ``None`` (``none_means`` says what it stands for). Bounds:
    ``least``/``most`` inclusive, ``above``/``below`` exclusive. ``flag`` is the command-line
    flag (default: ``--`` and the name with dashes); ``on_cli=False`` keeps it off the
    training flags (e.g. ``device``, which every command takes).
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

    def describe(self) -> str:
        """What a valid value is, in words (used in errors and help)."""
        if self.kind is bool:
            text = "true or false"
        elif self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.kind is list:
            text = "a list of gene names"
        elif self.kind is str:
            text = "text"
        else:
            text = ("an integer" if self.kind is int else "a number") + self._bounds()
        return text + (f" or None ({self.none_means})" if self.optional else "")

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

    def check(self, name: str, value: Any) -> Any:
        """``value`` as a plain Python value of this setting, or :class:`InputError` naming ``name``."""
        if value is None:
            if self.optional:
                return None
            raise self._error(name, value)
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise self._error(name, value)
            return bool(value)
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise self._error(name, value)
            return value
        if self.kind is list:
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise self._error(name, value)
            return [str(v) for v in value]
        number = self._number(name, value)
        if ((self.least is not None and number < self.least) or (self.most is not None and number > self.most)
                or (self.above is not None and number <= self.above)
                or (self.below is not None and number >= self.below)):
            raise self._error(name, value)
        return number

    def _number(self, name: str, value: Any) -> int | float:
        if isinstance(value, (bool, np.bool_)):
            raise self._error(name, value)
        if self.kind is int:
            if not isinstance(value, (int, np.integer)):
                raise self._error(name, value)
            return int(value)
        if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise self._error(name, value)
        return float(value)  # numpy scalars -> plain floats (JSON, checks)

    def _error(self, name: str, value: Any) -> InputError:
        return InputError(f"training setting {name} must be {self.describe()}, got {value!r}")


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


def redefault(cls: type[TrainConfig], name: str, default: Any) -> Any:
    """The setting ``name`` of ``cls`` with another default (a model whose best default differs)."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def setting_names(cls: type[TrainConfig]) -> set[str]:
    """The names of the settings of ``cls`` (its dataclass fields; ``MODEL`` is none)."""
    return {f.name for f in fields(cls)}


def setting_of(f: Field) -> Setting:
    """The :class:`Setting` of a settings field."""
    return f.metadata["setting"]


@dataclass
class TrainConfig:
    """The settings every model shares; a model's own settings are a registered subclass.

    Build a model's settings with :func:`napari_histosge.models.train_config` (its
    defaults, then the given settings) or its class (``HisToSGEConfig(epochs=50)``).

    ``val_fraction`` of the training spots are held back (never trained on) and scored
    after training began; the weights of the best scored epoch are kept, and a model that
    stops early stops on them (see :mod:`.early_stopping`). ``init_seed`` seeds the
    weights' initialisation, the batch order and any jitter; ``None`` uses ``seed``, which
    always chooses the validation spots.
    """

    #: The model these settings are for (the registry's name; stored in checkpoints).
    MODEL: ClassVar[str] = ""

    epochs: int = setting(1000, "training epochs (the most, where a model stops early)", least=1)
    batch_size: int = setting(512, "spots per optimiser step", least=1)
    lr: float = setting(1e-3, "learning rate of the AdamW optimiser (lower it when the loss turns NaN)", above=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", least=0)
    seed: int = setting(0, "random seed (validation split, weights, batches)")
    init_seed: int | None = setting(None, "seed of the initial weights, batch order and jitter", kind=int,
                                    optional=True, none_means="use seed")
    device: str = setting("auto", "where the model runs: auto (cuda, then mps, then cpu), cpu, cuda or mps",
                          on_cli=False)
    n_top_genes: int = setting(1000, "number of genes to predict, ranked by the gene selection", least=1,
                               flag="--n-genes")
    genes: list[str] | None = setting(None, "gene names to predict instead of ranked genes: comma-separated, or "
                                      "a text file of names",
                                      kind=list, optional=True, none_means="rank the genes")
    gene_selection: str = setting("spatial", "how genes are ranked when genes are not given: 'spatial' spatially "
                                  "structured (Moran's I: a tissue's markers), 'hvg' highly variable (as the "
                                  "paper), or the best of both", choices=GENE_SELECTIONS)
    include_genes: list[str] | None = setting(None, "gene names (e.g. markers) always predicted, the ranked genes "
                                              "filling the rest: comma-separated, or a text file of names",
                                              kind=list, optional=True, none_means="none")
    markers: str = setting("auto", "known marker genes of a tissue always predicted besides the ranked ones, those "
                           "the section expresses most (at most a quarter of the genes): 'auto' the tissue "
                           "whose markers the section expresses most, a tissue, or 'none'", choices=MARKER_CHOICES)
    checkpoint_every: int = setting(1, "write the checkpoint every this many epochs", least=1)
    val_fraction: float = setting(0.1, "share of the training spots held back to keep the best epoch (and stop "
                                  "early), raised to 20 spots where that is at most a fifth of the section; 0 "
                                  "trains every spot for all epochs, as the paper", least=0, below=1)

    def __post_init__(self) -> None:
        if not self.MODEL:
            raise InputError("TrainConfig holds the settings every model shares; build a model's settings with "
                             "napari_histosge.train_config(model, ...) or its class, e.g. HisToSGEConfig()")
        for f in fields(self):
            setattr(self, f.name, setting_of(f).check(f.name, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Checks between settings (after each was checked on its own); a model's class extends it."""
        if self.genes is not None and self.include_genes is not None:
            raise InputError("give the genes to predict (genes) or genes to add to the ranked ones "
                             "(include_genes), not both")

    @property
    def model(self) -> str:
        """The model these settings are for."""
        return self.MODEL

    @property
    def weights_seed(self) -> int:
        """Seed of the initial weights, batch order and jitter: ``init_seed``, else ``seed``."""
        return self.seed if self.init_seed is None else self.init_seed

    def settings(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The values of the settings named ``keys`` (e.g. a model's constructor settings)."""
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict, with the model's name under ``"model"``."""
        return {"model": self.MODEL, **asdict(self)}

    @classmethod
    def own_fields(cls) -> list[Field]:
        """The settings this class declares itself (not those of the class it extends)."""
        parent = next((b for b in cls.__mro__[1:] if hasattr(b, "__dataclass_fields__")), None)
        inherited = set(getattr(parent, "__dataclass_fields__", {}))
        return [f for f in fields(cls) if f.name not in inherited]

    @classmethod
    def implied(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The settings ``given`` (by a user: flags or a form) plus what they imply; a model's class may extend it."""
        return given

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The default of setting ``name`` in this class."""
        f = cls.__dataclass_fields__[name]
        return f.default_factory() if f.default_factory is not MISSING else f.default

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Settings from :meth:`to_dict` output (see :func:`config_from_dict`)."""
        return config_from_dict(values)


class SpotGroupSettings(Protocol):
    """The settings the shared spot-attention code reads (HisToSGE's, which the conditioned model extends)."""

    batch_size: int
    n_pos_bins: int
    group_size: int
    grouping: str


def spot_group_settings(config: TrainConfig) -> SpotGroupSettings:
    """``config`` as the settings of a model whose spots attend in groups, or a clear error."""
    missing = [name for name in ("n_pos_bins", "group_size", "grouping") if not hasattr(config, name)]
    if missing:
        raise InputError(f"the {config.model} model does not predict from per-spot inputs in attention groups "
                         f"(its settings have no {', '.join(missing)})")
    return cast(SpotGroupSettings, config)


_CONFIGS: dict[str, type[TrainConfig]] = {}


def register_config(cls: type[T]) -> type[T]:
    """Register ``cls`` as the settings of the model ``cls.MODEL`` (a class decorator)."""
    known = _CONFIGS.get(cls.MODEL)
    if not cls.MODEL or (known is not None and known is not cls):
        raise ValueError(f"settings class {cls.__name__} needs a MODEL name of its own, got {cls.MODEL!r}")
    _CONFIGS[cls.MODEL] = cls
    return cls


def config_names() -> list[str]:
    """Names of the models whose settings are registered, sorted."""
    return sorted(_CONFIGS)


def config_class(model: str) -> type[TrainConfig]:
    """The settings class of ``model``, or :class:`InputError` naming the known models."""
    cls = _CONFIGS.get(model)
    if cls is None:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(config_names()) or '(none)'}")
    return cls


def owner_of(name: str) -> list[str]:
    """The models that have a setting ``name``."""
    return [m for m, cls in sorted(_CONFIGS.items()) if name in setting_names(cls)]


def make_config(model: str, settings: dict[str, Any]) -> TrainConfig:
    """``model``'s settings: its defaults, then ``settings``; a setting of another model is refused clearly."""
    cls = config_class(model)
    foreign = sorted(k for k in settings if k not in setting_names(cls))
    if foreign:
        def whose(name: str) -> str:
            owners = owner_of(name)
            return f"{name} (a setting of {' and '.join(owners)})" if owners else f"{name} (unknown)"

        raise InputError(f"the {model} model has no setting {', '.join(whose(k) for k in foreign)}; its settings: "
                         f"{', '.join(f.name for f in fields(cls))}")
    return cls(**cls.implied(settings))


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Settings from a stored dict (:meth:`TrainConfig.to_dict`), e.g. a checkpoint's.

    Checkpoints written when every model's settings were one flat class also hold the
    other models' settings; those are dropped. A key no model knows raises
    :class:`InputError`.
    """
    values = dict(values)
    cls = config_class(str(values.pop("model", "histosge")))
    own = setting_names(cls)
    others = {name for c in _CONFIGS.values() for name in setting_names(c)}
    unknown = sorted(set(values) - own - others)
    if unknown:
        raise InputError(f"unknown training settings: {', '.join(unknown)}; known for the {cls.MODEL} model: "
                         f"{', '.join(sorted(own))}")
    return cls(**{k: v for k, v in values.items() if k in own})
