"""What a training run starts from: the settings it runs with and the spots it trains on.

These rules hold for every caller (the command line, the Train widget and
:func:`napari_histosge.fit`): a run that starts from a trained model keeps that model's
network settings where the user gave none, and a section with more spots than the
``max_bins`` setting (the bins of a whole Visium HD capture area) trains on a seeded random
subset of them, while the model still predicts every spot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputError
from ..features import SpotFeatures
from ..io.visium_hd import limit_bins
from ..models import model_spec, train_config
from ..training.config import TrainConfig, given_names
from ..training.start import check_network_settings
from ..training.trained_model import TrainedModel


def run_settings(model: str, given: dict[str, Any], init: TrainedModel | None = None) -> TrainConfig:
    """``model``'s settings for a run: its defaults, ``init``'s network settings, then the settings ``given``.

    Parameters
    ----------
    model
        A registered model's name.
    given
        The settings a user gave (flags, or a form's changed values); ``None`` values count as not given.
    init
        The trained model the run starts from, or ``None``. Its network settings (the
        model's constructor settings it has) replace the defaults, so its weights fit the
        network; a setting in ``given`` still wins.

    Raises
    ------
    InputError
        If ``model`` is unknown, a setting is invalid or belongs to another model.
    """
    given = {k: v for k, v in given.items() if v is not None}
    kept: dict[str, Any] = {}
    if init is not None:
        kept = {k: getattr(init.config, k) for k in model_spec(model).hparam_keys
                if k not in given and hasattr(init.config, k)}
    return train_config(model, **kept, **given)


def starting_settings(config: TrainConfig, init: TrainedModel) -> TrainConfig:
    """``config`` for a run that starts from ``init``: its network settings that no user gave become ``init``'s.

    The settings given are those :func:`~napari_histosge.models.train_config` (or the command
    line, or the Train widget) was given; for settings built from their class directly, those
    that differ from the class's defaults, as nothing else tells them apart.
    """
    given = given_names(config)
    defaults = type(config)
    kept = {k: getattr(init.config, k) for k in model_spec(config.model).hparam_keys
            if hasattr(init.config, k) and hasattr(config, k)
            and (k not in given if given is not None else getattr(config, k) == defaults.default_of(k))}
    started = config if all(getattr(config, k) == v for k, v in kept.items()) else replace(config, **kept)
    if init.config.model == started.model:  # a given setting the weights cannot fit: refused before any work
        check_network_settings(init, started, model_spec(started.model).hparam_keys)
    return started


def limited_section(adata, features: SpotFeatures | None, config: TrainConfig
                    ) -> tuple[Any, SpotFeatures | None]:
    """``adata`` cut to at most ``config.max_bins`` spots (seeded by ``config.seed``), and its features alike.

    ``features`` are those of every spot of ``adata`` (or ``None``); the subset keeps the
    reading order and records ``uns["histosge"]["subsampled"]``.
    """
    check_feature_rows(adata, features)
    kept = limit_bins(adata, config.max_bins, seed=config.seed)
    if kept is adata or features is None:
        return kept, features
    rows = adata.obs_names.get_indexer(kept.obs_names)
    return kept, SpotFeatures(np.asarray(features.features)[rows], np.asarray(features.mean_rgb)[rows],
                              features.identity)


def check_feature_rows(adata, features: SpotFeatures | None) -> None:
    """Raise :class:`InputError` unless precomputed ``features`` (or ``None``) hold one row per spot of ``adata``."""
    if features is not None and len(features.features) != adata.n_obs:
        raise InputError(f"{len(features.features)} precomputed feature rows for {adata.n_obs} spots: give the "
                         "features of every spot of the section, in its order")


def limited_ids(ids: Sequence[str], config: TrainConfig) -> list[str]:
    """At most ``config.max_bins`` of the spot ``ids`` (a hold-out split's training spots), seeded, in order."""
    ids = list(ids)
    if len(ids) <= config.max_bins:
        return ids
    keep = np.sort(np.random.default_rng(config.seed).choice(len(ids), size=config.max_bins, replace=False))
    return [ids[i] for i in keep]


def limited_sections(adata, features, config: TrainConfig):
    """:func:`limited_section` of one section, or of each of a list of sections with its own features."""
    if not isinstance(adata, (list, tuple)):
        return limited_section(adata, features, config)
    if len(adata) == 1 and isinstance(features, SpotFeatures):  # one section's features, as fit pairs them
        kept, kept_features = limited_section(adata[0], features, config)
        return [kept], kept_features
    if not isinstance(features, (list, tuple)) or len(features) != len(adata):
        return [limited_section(a, None, config)[0] for a in adata], features  # fit refuses odd features
    pairs = [limited_section(a, f, config) for a, f in zip(adata, features, strict=True)]
    return [a for a, _ in pairs], [f for _, f in pairs]
