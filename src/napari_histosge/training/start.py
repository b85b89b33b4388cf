"""How a training run starts: seeding, the optimiser, resuming a checkpoint, or starting from another model.

A model's trainer (registered in :mod:`napari_histosge.models.registry`) prepares its
network, data and optimiser with these and hands the epochs to :func:`.engine.run_epochs`.
"""
from __future__ import annotations

import random

import numpy as np

from ..errors import InputError
from .config import TrainConfig, spot_group_settings
from .inputs import ModelInputs, TrainingData
from .trained_model import TrainedModel

__all__ = ["adamw", "check_initialisable", "check_network_settings", "check_resumable", "init_provenance",
           "resume_into", "seed_all"]


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (weights initialisation)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume_into(model, saved: TrainedModel, config: TrainConfig) -> tuple[int, list[float], ModelInputs]:
    """Load the weights of checkpoint ``saved`` (checked by :func:`check_resumable`) into ``model``.

    Returns the epochs done, the loss history up to them and the frozen input statistics:
    what every trainer needs to continue a run.
    """
    model.load_state_dict(saved.model.state_dict())
    start = int(saved.meta.epochs_done)
    history = [float(v) for v in saved.meta.history][:start]
    return start, history, ModelInputs.from_meta(saved.meta, spot_group_settings(config).n_pos_bins)


def check_resumable(saved: TrainedModel, config: TrainConfig, data: TrainingData, path,
                    hparam_keys: tuple[str, ...]) -> None:
    """Raise :class:`InputError` (naming ``path``) unless checkpoint ``saved`` can continue on ``data``.

    It must have ``config``'s model and constructor settings ``hparam_keys``, the data's
    genes, feature width and number of sections.
    """
    d = data.features.shape[1]
    if saved.config.model != config.model or saved.config.settings(hparam_keys) != config.settings(hparam_keys):
        raise InputError(
            f"the checkpoint was trained with different model settings "
            f"({saved.config.model} {saved.config.settings(hparam_keys)}) than requested "
            f"({config.model} {config.settings(hparam_keys)})", path)
    if saved.genes != data.genes:
        # A checkpoint saved before the marker genes were always kept chose its genes without them.
        hint = "" if saved.config.settings(("markers",)).get("markers") == config.settings(("markers",)).get(
            "markers") else f" (it chose its genes with --markers {saved.config.settings(('markers',)).get('markers')})"
        raise InputError("the checkpoint predicts different genes than the training data; resume with the gene "
                         f"settings it was trained with{hint}", path)
    if saved.meta.n_features is None or int(saved.meta.n_features) != d:
        raise InputError(
            f"the checkpoint expects {saved.meta.n_features} image features, the data has {d}", path)
    saved_sections = len(saved.meta.section_frames or []) if saved.per_section else None
    wanted = None if data.sections is None else data.n_sections
    if saved_sections != wanted:
        raise InputError(f"the checkpoint was trained on {saved_sections or 1} section(s), "
                         f"the data has {wanted or 1}", path)


def check_initialisable(init: TrainedModel, config: TrainConfig, data: TrainingData, hparam_keys: tuple[str, ...],
                        model: str) -> None:
    """Raise :class:`InputError` unless trained model ``init`` can start a ``model`` run on ``data``.

    It must be a ``model`` model with ``config``'s constructor settings ``hparam_keys``, predict
    the data's genes (in the same order) and read as many image features; unlike a resumed
    run it may come from other sections (its input statistics and frames are fitted anew).
    """
    where = init.path or "the model to start from"
    if init.config.model != model:
        raise InputError(f"a {init.config.model} model cannot start a {model} model: give a {model} model "
                         f"(e.g. one trained on other sections with histosge train)", where)
    check_network_settings(init, config, hparam_keys)
    if init.genes != data.genes:
        raise InputError("the model to start from predicts other genes than the training data", where)
    d = data.features.shape[1]
    if init.meta.n_features is None or int(init.meta.n_features) != d:
        raise InputError(f"the model to start from reads {init.meta.n_features} image features, the data "
                         f"has {d}: use its feature extractor", where)


def check_network_settings(init: TrainedModel, config: TrainConfig, hparam_keys: tuple[str, ...]) -> None:
    """Raise :class:`InputError` unless ``init`` has ``config``'s network (constructor) settings ``hparam_keys``."""
    if init.config.settings(hparam_keys) != config.settings(hparam_keys):
        raise InputError(f"the model to start from has other network settings ({init.config.settings(hparam_keys)}) "
                         f"than requested ({config.settings(hparam_keys)}): leave those settings at the model's",
                         init.path or "the model to start from")


def init_provenance(init: TrainedModel) -> dict:
    """What a model started from another keeps about it: its file, model and training sections."""
    sections = init.meta.sections or [{"source": init.meta.source}]
    return {"path": init.path, "model": init.config.model, "sections": sections,
            "epochs_done": init.meta.epochs_done}


def adamw(params, config: TrainConfig):
    """AdamW over ``params`` with the config's learning rate and decay, fused where the device has it."""
    import torch

    params = list(params)  # may be a generator: both attempts need it
    try:
        # The fused kernel is one pass over each parameter: many times faster than the
        # default per-tensor loop on CPU, where the optimiser step otherwise dominates.
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # device without a fused kernel
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

