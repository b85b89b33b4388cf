"""napari-histosge: high-resolution spatial transcriptomics from H&E histology.

The public Python API. The core (``io``, ``slide``, ``features``, ``evaluation``,
``training``, ``models``, ``prediction``, ``pipeline``, ``cli``) never imports Qt or
napari; the napari side lives in ``plugin``. Names load on first use, so importing the
package (as napari does to find the plugin manifest) stays cheap.

Examples
--------
>>> import napari_histosge as hs
>>> spots = hs.read_spots("her2st/B4")                              # doctest: +SKIP
>>> model = hs.fit(spots, train_config=hs.train_config("histosge", epochs=200), progress=True)   # doctest: +SKIP
>>> superres = hs.superresolve(model, spots, 4)                    # doctest: +SKIP

Each long step also has a generator form in :mod:`napari_histosge.steps` that yields progress
events (what the plugin and the command line use); :func:`run` drives one to its end.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CancelledError, HistosgeError, InputError
from .progress import CancelToken, Progress, drive

__version__ = "0.1.0"

#: Public name -> module that defines it (imported on first access).
_LAZY = {
    "read_spots": "io",
    "FeatureConfig": "features",
    "TrainConfig": "training.config",
    "HisToSGEConfig": "models",
    "ConditionedConfig": "models",
    "SubspotConfig": "models",
    "TrainedModel": "training.trained_model",
    "load_model": "models",
    "train_config": "models",
    "fit": "api",
    "predict_spots": "api",
    "superresolve": "api",
    "superresolve_cells": "api",
    "superresolve_grid": "api",
    "recover": "api",
    "RecoveryResult": "pipeline.recovery",
    "evaluate_predictions": "evaluation.predictions",
    "noise_ceiling": "evaluation.noise_ceiling",
    "read_positions_csv": "prediction.positions",
}

#: Submodules that are part of the public API (imported on first access).
_SUBMODULES = ("steps",)

#: ``run`` drives a generator of :mod:`napari_histosge.steps` to its result.
run = drive

__all__ = [
    "CancelToken",
    "CancelledError",
    "ConditionedConfig",
    "FeatureConfig",
    "HisToSGEConfig",
    "HistosgeError",
    "InputError",
    "Progress",
    "RecoveryResult",
    "SubspotConfig",
    "TrainConfig",
    "TrainedModel",
    "__version__",
    "evaluate_predictions",
    "fit",
    "load_model",
    "noise_ceiling",
    "predict_spots",
    "read_positions_csv",
    "read_spots",
    "recover",
    "run",
    "steps",
    "superresolve",
    "superresolve_cells",
    "superresolve_grid",
    "train_config",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        submodule = importlib.import_module(f".{name}", __name__)
        globals()[name] = submodule
        return submodule
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_histosge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
