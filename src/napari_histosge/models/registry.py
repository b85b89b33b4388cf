"""The model registry: one :class:`ModelSpec` per model, and what runs through it.

A spec names everything model-specific: the network class, the trainer, the trained-model
class that predicts, its settings class (registered beside it, see
:mod:`napari_histosge.training.config`) and which settings go to the network's constructor.
Training, loading and building a configuration (:func:`train`, :func:`load_model`,
:func:`train_config`) look the model up here by name, so nothing else branches on a model's
name. Adding a model is adding one module that calls :func:`register_model` (and listing it
in ``models/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

from ..errors import InputError
from ..progress import CancelToken, ProgressGenerator
from ..training.config import TrainConfig, config_class, make_config, setting_names
from ..training.inputs import TrainingData
from ..training.model_meta import ModelMeta
from ..training.trained_model import SavedModel, TrainedModel

#: ``trainer(data, config, *, checkpoint_path, resume, meta, cancel)``: the contract of :func:`train`.
Trainer = Callable[..., ProgressGenerator[TrainedModel]]


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes
    ----------
    name
        The name :attr:`TrainConfig.model` selects it by (also stored in checkpoints); its
        settings class is the one registered under that name.
    network
        The ``torch.nn.Module`` class, built as ``network(in_dim=..., n_genes=..., **hparams)``.
    trainer
        Trains it: same parameters and result as :func:`train`, usually by handing its
        epochs to :func:`napari_histosge.training.engine.run_epochs`; ``None`` for a model
        that trains only on a whole section (``section_trainer``).
    trained_class
        The :class:`TrainedModel` subclass (or the class itself) that predicts with it.
    hparam_keys
        The settings passed to the network's constructor.
    section_trainer
        For a model that reads the slide itself (not per-spot features): trains on a whole
        section, ``section_trainer(adata, *, train_ids, config, meta, checkpoint_path, cancel)``;
        :func:`napari_histosge.pipeline.steps.fit` hands such a model the section.
    takes_init
        Whether ``trainer`` takes ``init=``, a trained model to start from (:func:`train`).
    trains_on_sections
        Whether ``section_trainer`` takes a list of sections too (one model of all of them).
    """

    name: str
    network: type
    trainer: Trainer | None
    trained_class: type[TrainedModel]
    hparam_keys: tuple[str, ...]
    section_trainer: Callable[..., ProgressGenerator[TrainedModel]] | None = None
    takes_init: bool = False
    trains_on_sections: bool = False

    def hparams(self, config: TrainConfig) -> dict[str, Any]:
        """The settings of ``config`` handed to the network's constructor."""
        return config.settings(self.hparam_keys)

    @property
    def config_class(self) -> type[TrainConfig]:
        """The model's settings class."""
        return config_class(self.name)


_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` under ``spec.name``; returns it.

    Raises
    ------
    ValueError
        If another model already has that name (a programming error, not a user's).
    """
    known = _SPECS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"a model named {spec.name!r} is already registered ({known.network.__name__})")
    unknown = sorted(set(spec.hparam_keys) - setting_names(spec.config_class))
    if unknown:
        raise ValueError(f"model {spec.name!r} names settings its settings class does not have: "
                         f"{', '.join(unknown)}")
    _SPECS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The registered model ``name``.

    Raises
    ------
    InputError
        If no model of that name is registered.
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(model_names()) or '(none)'}")
    return spec


def create_model(name: str, *, in_dim: int, n_genes: int, **hparams: Any):
    """Build the network of the registered model ``name``.

    Parameters
    ----------
    name
        A name from :func:`model_names`.
    in_dim
        Width of the per-spot input vector.
    n_genes
        Number of genes the model predicts.
    **hparams
        Model-specific settings (e.g. ``dim``, ``heads``, ``depth``; :func:`model_hparams`).

    Raises
    ------
    InputError
        If ``name`` is unknown or a setting is invalid.
    """
    network = model_spec(name).network
    try:
        return network(in_dim=int(in_dim), n_genes=int(n_genes), **hparams)
    except TypeError as exc:  # an unexpected keyword
        raise InputError(f"bad settings for model {name!r}: {exc}") from exc


def model_hparams(config: TrainConfig) -> dict[str, Any]:
    """The settings of ``config`` that :func:`create_model` passes to ``config.model``'s network."""
    return model_spec(config.model).hparams(config)


def train_config(model: str = "histosge", **settings: Any) -> TrainConfig:
    """Settings for ``model``: its settings class's defaults, then ``settings``.

    ``None`` values in ``settings`` mean "the default" (handy for optional CLI flags).

    Raises
    ------
    InputError
        If ``model`` is unknown, a setting is invalid, or belongs to another model.
    """
    model_spec(model)
    return make_config(model, {k: v for k, v in settings.items() if v is not None})


def train(
    data: TrainingData,
    config: TrainConfig,
    *,
    checkpoint_path: str | PathLike | None = None,
    resume: str | PathLike | None = None,
    meta: ModelMeta | Mapping[str, Any] | None = None,
    cancel: CancelToken | None = None,
    init: TrainedModel | None = None,
) -> ProgressGenerator[TrainedModel]:
    """Train ``config.model`` on ``data`` (MSE loss), yielding one event per epoch.

    Parameters
    ----------
    data
        Training spots and targets.
    config
        Settings; ``config.epochs`` is the total, also when resuming.
    checkpoint_path
        Written atomically every ``config.checkpoint_every`` epochs and at the end.
    resume
        Checkpoint to continue from (weights, optimiser state, epoch, input statistics, the
        best-weights tracker): the run ends as the uninterrupted one would.
    meta
        Caller's metadata stored with the model (feature settings, normalisation, ...): a
        :class:`~napari_histosge.training.model_meta.ModelMeta` or its plain dict, copied.
    cancel
        Checked between batches; cancelling raises ``CancelledError`` and leaves the last
        checkpoint intact.
    init
        A trained model to start from (e.g. one trained on other sections), for a model whose
        spec accepts one (:attr:`ModelSpec.takes_init`): its weights start the run, which
        fine-tunes them on ``data``; its genes and network settings must be ``data``'s and
        ``config``'s.

    Yields
    ------
    Progress
        ``stage="train"``, ``step`` = epochs done, ``metrics={"epoch", "loss"}`` (and
        ``"val_pcc"`` where the validation spots were scored); a model may add stages.

    Returns
    -------
    TrainedModel
        Of the model's :attr:`ModelSpec.trained_class`.

    Raises
    ------
    InputError
        If the model is unknown or cannot train on ``data`` with ``config``.
    napari_histosge.training.engine.TrainingDivergedError
        If the loss or the weights become NaN or infinite (nothing of that epoch is saved).
    """
    trainer = model_spec(config.model).trainer
    if trainer is None:
        raise InputError(f"the {config.model} model trains on a section's slide and spots, not on spot features: "
                         f"use napari_histosge.fit(adata, ...) or histosge train DATA --model {config.model}")
    spec = model_spec(config.model)
    if init is None:
        return (yield from trainer(data, config, checkpoint_path=checkpoint_path, resume=resume, meta=meta,
                                   cancel=cancel))
    if not spec.takes_init:
        raise InputError(f"the {config.model} model cannot start from a trained model (--init); train it without")
    if resume is not None:
        raise InputError("a resumed run continues its checkpoint: give --resume or --init, not both")
    return (yield from trainer(data, config, checkpoint_path=checkpoint_path, resume=None, meta=meta, cancel=cancel,
                               init=init))


def load_model(path: str | PathLike, *, device: str = "auto") -> TrainedModel:
    """Read a checkpoint written by :meth:`TrainedModel.save`, as its model's trained class.

    The model is the one named in the checkpoint's settings; its network is rebuilt with the
    saved settings and the sizes fixed by the data (``meta.model_kwargs``).

    Raises
    ------
    InputError
        If the file is missing, corrupt, not a checkpoint, names an unknown model, or its
        weights do not fit its settings.
    """
    saved = SavedModel.read(path, device=device)
    try:
        spec = model_spec(saved.config.model)
        network = create_model(spec.name, in_dim=int(saved.meta.in_dim or 0), n_genes=len(saved.genes),
                               **spec.hparams(saved.config), **dict(saved.meta.model_kwargs))
    except InputError as exc:
        raise InputError(f"the checkpoint's settings are invalid ({exc.problem})", path) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the checkpoint is incomplete or corrupt ({type(exc).__name__}: {exc})", path) from exc
    saved.load_weights(network, path)
    network.to(saved.device).eval()
    trained = spec.trained_class(network, saved.config, saved.genes, saved.meta, optimizer_state=saved.optimizer_state)
    trained.path = str(path)
    return trained
