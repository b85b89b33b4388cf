"""napari-histosge: high-resolution spatial transcriptomics from H&E histology.

The public Python API. The core (``io``, ``slide``, ``features``, ``evaluation``,
``training``, ``models``, ``prediction``, ``pipeline``, ``cli``) never imports Qt or
napari; the napari side lives in ``plugin``. Names load on first use, so importing the
package (as napari does to find the plugin manifest) stays cheap.

Examples
--------
>>> import napari_histosge as hs
>>> spots = hs.read_spots("her2st/B4")                              # doctest: +SKIP
>>> model = hs.run(hs.fit(spots, train_config=hs.HisToSGEConfig(epochs=200)))   # doctest: +SKIP
>>> superres = hs.run(hs.superresolve(model, spots, 4))             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CancelledError, HistosgeError, InputError
from .progress import CancelToken, Progress, run_to_end

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
    "fit": "pipeline.steps",
    "predict_spots": "pipeline.steps",
    "superresolve": "pipeline.steps",
    "superresolve_grid": "pipeline.grid_maps",
    "recover": "pipeline.recovery",
    "RecoveryResult": "pipeline.recovery",
    "evaluate_predictions": "evaluation.predictions",
    "noise_ceiling": "evaluation.noise_ceiling",
    "read_positions_csv": "prediction.positions",
}

#: ``run`` drives any of the progress generators to its result.
run = run_to_end

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
    "superresolve",
    "superresolve_grid",
    "train_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_histosge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
