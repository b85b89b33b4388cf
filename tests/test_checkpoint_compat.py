"""Checkpoints written by earlier code still load and predict the same.

``tests/data/*_17fc61b.pt`` were written by ``tests/data/make_old_checkpoints.py`` run
against commit 17fc61b (the layout before the stage subpackages, the flat trainer and
``TrainedModel.load``), together with what those models predicted then.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from napari_histosge.models import HisToSGETrainedModel, load_model
from napari_histosge.models.conditioned.meta import ConditionedMeta
from napari_histosge.models.conditioned.trained import ConditionedTrainedModel
from napari_histosge.models.subspot.meta import SubspotMeta
from napari_histosge.training.checkpoint import load_checkpoint
from napari_histosge.training.model_meta import ModelMeta

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


@pytest.mark.parametrize("name", ["histosge", "conditioned"])
def test_an_old_checkpoints_metadata_reads_into_its_typed_record_and_saves_back_unchanged(name, tmp_path) -> None:
    _, info, _ = load_checkpoint(DATA / f"{name}_17fc61b.pt", map_location="cpu")
    old = info["meta"]
    model = load_model(DATA / f"{name}_17fc61b.pt", device="cpu")
    assert type(model.meta) is {"histosge": ModelMeta, "conditioned": ConditionedMeta}[name]
    # Each stored entry is read into its typed field; what this version does not know is kept.
    known = {f.name for f in fields(model.meta)}
    assert set(model.meta.extra) == set(old) - known == ({"val_pcc"} if name == "conditioned" else set())
    assert model.meta.feature_mean == old["feature_mean"] and model.meta.epochs_done == old["epochs_done"]
    assert model.meta.best_epoch == old["best_epoch"] and model.meta.history == old["history"]
    if name == "conditioned":
        assert model.meta.kriging == old["kriging"] and model.meta.spacing_px == old["spacing_px"]
    # A missing entry takes its default (these checkpoints predate the feature settings).
    assert model.meta.features is None and model.meta.sections is None and model.meta.source == ""
    written = model.meta.to_dict()
    assert {k: written[k] for k in old} == old  # every old entry written back as it was read
    model.save(tmp_path / "again.pt")
    again = load_checkpoint(tmp_path / "again.pt", map_location="cpu")[1]["meta"]
    assert again == written and load_model(tmp_path / "again.pt", device="cpu").meta == model.meta


def test_a_metadata_dict_reads_with_defaults_for_missing_entries_and_keeps_unknown_ones() -> None:
    meta = SubspotMeta.from_dict({"cell_px": 12.5, "mpp": None, "from_a_newer_version": [1, 2]})
    assert meta.cell_px == 12.5 and meta.mpp is None and meta.history == [] and meta.modulation_share == 0.0
    assert meta.extra == {"from_a_newer_version": [1, 2]}
    plain = meta.to_dict()
    assert "mpp" not in plain and plain["from_a_newer_version"] == [1, 2] and "extra" not in plain
    assert SubspotMeta.from_dict(plain) == meta
    # A shared record becomes a model's own (its entries copied, the model's defaulted).
    shared = ModelMeta(source="s.h5ad", n_features=3)
    own = SubspotMeta.of(shared)
    assert (own.source, own.n_features, own.cell_px) == ("s.h5ad", 3, None) and own is not shared


def test_the_models_panel_describes_an_old_checkpoint_and_a_new_ones_sections(tmp_path) -> None:
    from napari_histosge.plugin.widgets.state import SessionModel

    path = DATA / "histosge_17fc61b.pt"
    model = load_model(path, device="cpu")
    assert "sections: unknown" in SessionModel("old", model, path).describe()  # it records no source
    model.meta.sections = [{"name": "B4", "source": "/d/B4"}, {"name": "C2", "source": "/d/C2"}]
    assert "sections: B4, C2" in SessionModel("new", model, path).describe()
    model.meta.sections, model.meta.source = None, "/d/A1.h5ad"
    assert "sections: A1.h5ad" in SessionModel("one", model, path).describe()


def test_an_old_checkpoint_without_feature_settings_is_refused_in_one_line_on_a_section(demo) -> None:
    import napari_histosge as hs
    from napari_histosge.errors import InputError

    model = load_model(DATA / "histosge_17fc61b.pt", device="cpu")  # written before the feature settings
    with pytest.raises(InputError, match="the model records no image-feature settings") as caught:
        hs.predict_spots(model, demo)
    assert "\n" not in str(caught.value)
