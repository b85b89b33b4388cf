"""Checkpoints written by earlier code still load and predict the same.

``tests/data/*_17fc61b.pt`` were written by ``tests/data/make_old_checkpoints.py`` run
against commit 17fc61b (the layout before the stage subpackages, the flat trainer and
``TrainedModel.load``), together with what those models predicted then.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histosge.models import HisToSGETrainedModel, load_model
from napari_histosge.models.conditioned.trained import ConditionedTrainedModel

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["histosge", "conditioned"])
def test_a_checkpoint_from_before_the_registry_loads_and_predicts_the_same(name: str) -> None:
    old = np.load(DATA / "old_predictions.npz")
    model = load_model(DATA / f"{name}_17fc61b.pt", device="cpu")
    assert model.config.model == name and model.genes == ["g0", "g1", "g2"]
    # Each model reads back as its own trained class (the registry's), not a shared one.
    assert type(model) is {"histosge": HisToSGETrainedModel, "conditioned": ConditionedTrainedModel}[name]
    pred = model.predict(old["feats"], old["rgb"], old["pos"])
    pred = pred[0] if isinstance(pred, tuple) else pred
    np.testing.assert_allclose(pred, old[name], rtol=1e-5, atol=1e-5)
