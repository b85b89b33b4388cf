"""Training settings: those every model shares (:class:`TrainConfig`) and each model's own, declared once.

Every setting is a dataclass field made by :func:`~napari_histosge.settings.setting`, which
carries its help text and its bounds. Validation (:meth:`TrainConfig.__post_init__`), the command line's flags
(:mod:`napari_histosge.cli.options`) and the settings table in docs/cli.md are all built
from these declarations. A model's settings are a subclass of :class:`TrainConfig` that adds
its own fields (and may change a shared field's default with :func:`redefault`), registered
under the model's name with :func:`register_config`. Checkpoints store
:meth:`TrainConfig.to_dict`; :func:`config_from_dict` reads them back, also those written when
all settings were one flat class.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol, TypeVar, cast

from ..errors import InputError
from ..settings import Setting, check_settings_of, setting, setting_of

__all__ = ["GENE_SELECTIONS", "Setting", "TrainConfig", "config_class", "config_from_dict", "config_names",
           "given_names", "make_config", "owner_of", "redefault", "register_config", "setting", "setting_names",
           "setting_of", "spot_group_settings"]

T = TypeVar("T", bound="TrainConfig")

#: How genes are ranked (``io.preprocess.GENE_METHODS``; that package loads anndata, this one stays light).
GENE_SELECTIONS = ("hvg", "spatial", "hvg+spatial")
#: The ``markers`` setting: auto, none or a tissue of ``io.markers``' table (checked equal to it by the tests).
MARKER_CHOICES = ("auto", "none", "breast", "brain-cortex", "olfactory-bulb")


def redefault(cls: type[TrainConfig], name: str, default: Any) -> Any:
    """The setting ``name`` of ``cls`` with another default (a model whose best default differs)."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def setting_names(cls: type[TrainConfig]) -> set[str]:
    """The names of the settings of ``cls`` (its dataclass fields; ``MODEL`` is none)."""
    return {f.name for f in fields(cls)}


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
                           "the section expresses most (at most a quarter of the genes): 'auto' the tissue of "
                           "the section's species whose own markers are most enriched (hypergeometric p-value) among "
                           "the section's most expressed genes, a tissue, or 'none'", choices=MARKER_CHOICES)
    checkpoint_every: int = setting(1, "write the checkpoint every this many epochs", least=1)
    val_fraction: float = setting(0.1, "share of the training spots held back to keep the best epoch (and stop "
                                  "early), raised to 20 spots where that is at most a fifth of the section; 0 "
                                  "trains every spot for all epochs, as the paper", least=0, below=1)
    max_bins: int = setting(100_000, "train on at most this many spots (bins) of each section, a seeded random "
                            "subset: the 8 µm bins of a whole Visium HD capture area are more; the model still "
                            "predicts every bin", least=1)

    def __post_init__(self) -> None:
        if not self.MODEL:
            raise InputError("TrainConfig holds the settings every model shares; build a model's settings with "
                             "napari_histosge.train_config(model, ...) or its class, e.g. HisToSGEConfig()")
        check_settings_of(self, "training setting")
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


def offered_models() -> list[str]:
    """The registered models as the command line and the Train widget offer them: the paper's model first."""
    return sorted(_CONFIGS, key=lambda name: (name != "histosge", name))


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
    config = cls(**cls.implied(settings))
    # Which settings a user gave (not a field: checkpoints and comparisons ignore it): a run that
    # starts from a trained model takes its network settings where none was given (given_names).
    config.__dict__[_GIVEN] = frozenset(settings)
    return config


#: Where :func:`make_config` records the names of the settings given.
_GIVEN = "_given_names"


def given_names(config: TrainConfig) -> frozenset[str] | None:
    """The names of the settings given to :func:`make_config` when it built ``config``.

    ``None`` where that is not known: ``config`` was built from its class directly, or copied
    with :func:`dataclasses.replace`.
    """
    return config.__dict__.get(_GIVEN)


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
