"""One model trained on several sections: per-section frames, grouping, genes, ids, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_histosge.pipeline.multisection as multisection
import napari_histosge.pipeline.steps as pipeline
from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig, patch_size_px
from napari_histosge.io import read_spots
from napari_histosge.models import load_model, train_config
from napari_histosge.models.histosge_fit import section_groups
from napari_histosge.pipeline.steps import NO_IMAGE, fit, predict_spots, superresolve
from napari_histosge.progress import run_collecting, run_to_end
from napari_histosge.training.early_stopping import validation_count
from napari_histosge.training.inputs import TrainingData, section_frame

# Models trained on two or three sections (and on two real ones): the full run only.
pytestmark = pytest.mark.slow

FAST = dict(epochs=2, n_top_genes=15, head_hidden=64, dim=32, checkpoint_every=2, device="cpu")
POSITIONS_ONLY = FeatureConfig(extractor=NO_IMAGE)


@pytest.fixture(scope="module")
def sections(demo_section):
    """Two generated sections with the same spot ids and library id (both 'demo')."""
    return [read_spots(demo_section(seed)) for seed in (0, 1)]


def _shifted(adata, offset: float):
    out = adata.copy()
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], np.float64) + offset
    return out


def test_groups_never_mix_sections() -> None:
    rng = np.random.default_rng(0)
    # Two sections on the very same coordinates: a plain spatial grouping would mix them.
    pos = np.tile(rng.uniform(0, 1000, (90, 2)), (2, 1))
    labels = np.repeat([0, 1], 90)
    rows = [np.flatnonzero(labels == s) for s in (0, 1)]
    for grouping in ("spatial", "file_order"):
        groups = section_groups(pos, rows, train_config(group_size=16, grouping=grouping), rng)
        assert all(len(np.unique(labels[g])) == 1 for g in groups)
        assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(180))
        assert max(len(g) for g in groups) <= 16


def test_training_data_sections_are_checked() -> None:
    n = 6
    args = (np.zeros((n, 0)), np.zeros((n, 3)), np.arange(2 * n).reshape(n, 2), np.ones((n, 1)),
            [str(i) for i in range(n)], ["G"])
    data = TrainingData(*args, sections=np.array([0, 0, 0, 1, 1, 1]))
    assert data.n_sections == 2
    np.testing.assert_array_equal(data.frames[1], [[6, 7], [10, 11]])
    with pytest.raises(InputError, match="integer labels"):
        TrainingData(*args, sections=np.array([0.5] * n))
    with pytest.raises(InputError, match="frames has shape"):
        TrainingData(*args, sections=np.array([0, 0, 0, 1, 1, 1]), frames=np.zeros((1, 2, 2)))
    with pytest.raises(InputError, match="without per-spot section labels"):
        TrainingData(*args, frames=np.zeros((1, 2, 2)))


def test_each_section_is_scaled_by_its_own_frame(sections) -> None:
    a, b = sections
    far = _shifted(b, 1e6)  # an unrelated coordinate frame
    config = train_config(**FAST)
    model = run_to_end(fit([a, b], train_config=config, feature_config=POSITIONS_ONLY))
    moved = run_to_end(fit([a, far], train_config=config, feature_config=POSITIONS_ONLY))
    assert model.meta.position_frame == "per_section" and len(model.meta.section_frames) == 2
    on_b = np.asarray(run_to_end(predict_spots(model, b, features=None)).X)
    # translating a section changes neither the training nor the predictions on it
    np.testing.assert_allclose(np.asarray(run_to_end(predict_spots(moved, far)).X), on_b, atol=1e-4)
    np.testing.assert_allclose(np.asarray(run_to_end(predict_spots(model, far)).X), on_b, atol=1e-4)
    # ... while the wrong frame (section a's box for the far positions) does change them
    feats = np.zeros((far.n_obs, 0), np.float32), np.zeros((far.n_obs, 3), np.float32)
    wrong = model.predict(*feats, far.obsm["spatial"], frame=section_frame(a.obsm["spatial"]))
    assert not np.allclose(wrong, on_b, atol=1e-2)
    with pytest.raises(InputError, match="several sections"):
        model.predict(*feats, far.obsm["spatial"])


def test_genes_are_chosen_among_genes_of_every_section(sections) -> None:
    a, b = sections
    fewer = b[:, list(b.var_names[5:])].copy()
    model = run_to_end(fit([a, fewer], train_config=train_config(**dict(FAST, epochs=1, n_top_genes=1000)),
                           feature_config=POSITIONS_ONLY))
    assert model.genes == [str(g) for g in a.var_names[5:]]  # all shared genes, in the first section's order
    wanted = train_config(**dict(FAST, genes=[str(a.var_names[6]), str(a.var_names[2])]))
    with pytest.raises(InputError, match=f"gene '{a.var_names[2]}' is not in section 'demo#2'"):
        run_to_end(fit([a, fewer], train_config=wanted, feature_config=POSITIONS_ONLY))


def test_colliding_spot_ids_are_prefixed(sections, monkeypatch) -> None:
    a, b = sections
    seen: list[TrainingData] = []
    real_train = multisection.train

    def recording_train(data, *args, **kwargs):
        seen.append(data)
        return (yield from real_train(data, *args, **kwargs))

    monkeypatch.setattr(multisection, "train", recording_train)
    config = train_config(**dict(FAST, epochs=1))
    run_to_end(fit([a, b], train_config=config, feature_config=POSITIONS_ONLY))
    ids = seen[-1].spot_ids
    assert len(set(ids)) == len(ids) == a.n_obs + b.n_obs
    assert ids[0] == f"demo:{a.obs_names[0]}" and ids[-1] == f"demo#2:{b.obs_names[-1]}"
    np.testing.assert_array_equal(np.bincount(seen[-1].sections), [a.n_obs, b.n_obs])
    renamed = b.copy()
    renamed.obs_names = [f"b_{i}" for i in b.obs_names]
    run_to_end(fit([a, renamed], train_config=config, feature_config=POSITIONS_ONLY))
    assert seen[-1].spot_ids == list(a.obs_names) + list(renamed.obs_names)  # no collision: ids kept


def test_bad_combinations_are_clear_errors(sections) -> None:
    a, b = sections
    with pytest.raises(InputError, match="train_ids"):
        run_to_end(fit([a, b], train_ids=list(a.obs_names[:10])))
    with pytest.raises(InputError, match="conditioned model trains on one section"):
        run_to_end(fit([a, b], train_config=train_config(model="conditioned", **FAST), feature_config=POSITIONS_ONLY))
    with pytest.raises(InputError, match="no sections"):
        run_to_end(fit([]))


def test_checkpoint_round_trip_and_superresolve_on_one_section(sections, tmp_path: Path, monkeypatch) -> None:
    a, b = sections
    model, events = run_collecting(fit([a, b], train_config=train_config(**FAST), checkpoint_path=tmp_path / "m.pt"))
    assert any(e.stage == "features" and "section 2/2 (demo#2)" in e.message for e in events)
    loaded = load_model(tmp_path / "m.pt", device="cpu")
    for key in ("position_frame", "section_frames", "sections", "position_jitter_px"):
        assert getattr(loaded.meta, key) == getattr(model.meta, key)
    assert [s["name"] for s in loaded.meta.sections] == ["demo", "demo#2"]
    assert loaded.meta.extra == {} and loaded.meta.section_box is None  # each section's box is in its record
    patches = []
    real_extract = pipeline.extract_features_at

    def recording_extract(path, scale, centers, patch_px, *args, **kwargs):
        patches.append(patch_px)
        return (yield from real_extract(path, scale, centers, patch_px, *args, **kwargs))

    monkeypatch.setattr(pipeline, "extract_features_at", recording_extract)
    sr = run_to_end(superresolve(loaded, b, 2))
    assert sr.n_obs == 2 * b.n_obs and list(sr.var_names) == model.genes
    assert np.isfinite(sr.X).all()
    # patches are sized for the predicted section (its own pixel size), not the first one
    assert patches == [patch_size_px(b, FeatureConfig())] and patches[0] != model.meta.patch_size_px
    spots = run_to_end(predict_spots(loaded, b))
    np.testing.assert_allclose(np.asarray(spots.X), np.asarray(run_to_end(predict_spots(model, b)).X), atol=1e-5)


def test_cli_trains_on_two_real_sections(real_data: Path, tmp_path: Path, capsys) -> None:
    b4, c2 = real_data / "her2st" / "B4", real_data / "her2st" / "C2"
    out = tmp_path / "two.pt"
    # positions only: image features of real slides are covered by test_cli; here the sections matter
    argv = ["train", str(b4), str(c2), "--out", str(out), "--epochs", "2", "--n-genes", "30", "--extractor", "none",
            "--min-validation-spots", "0", "--quiet"]  # early stopping on their 48 validation spots
    assert main(argv) == 0
    assert "in 2 sections" in capsys.readouterr().out
    model = load_model(out, device="cpu")
    assert [s["name"] for s in model.meta.sections] == ["B4", "C2"]
    counts = [read_spots(p).n_obs for p in (b4, c2)]
    # A seeded 10% of each section (at least 20 spots where it allows) is held back for early stopping.
    assert model.meta.n_train_spots + model.meta.n_validation_spots == sum(counts)
    assert model.meta.n_train_spots_per_section == [c - validation_count(c, 0.1) for c in counts]
    frames = np.asarray(model.meta.section_frames)
    assert frames.shape == (2, 2, 2) and not np.allclose(frames[0], frames[1])
    assert main(["train", str(b4), str(c2), "--image", "x.jpg", "--out", str(out)]) == 2
    assert "--image" in capsys.readouterr().err
