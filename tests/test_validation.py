"""Early stopping of the HisToSGE trainer on a validation share of the training spots."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.models import HisToSGEConfig, train, train_config
from napari_histosge.progress import run_collecting, run_to_end
from napari_histosge.training import early_stopping as validation
from napari_histosge.training.inputs import TrainingData

SMALL = dict(dim=32, heads=2, head_hidden=64, n_pos_bins=16, group_size=16, batch_size=64, device="cpu")
#: Early stopping even on these small synthetic sets (by default they get the fixed schedule).
STOPPING = dict(SMALL, min_validation_spots=0)


def _noise(n: int = 200, d: int = 8, g: int = 6, seed: int = 0, sections: np.ndarray | None = None) -> TrainingData:
    """Targets unrelated to anything the model sees: training can only overfit them."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    ys, xs = np.divmod(np.arange(n), side)
    pos = np.c_[xs, ys].astype(float) * 100.0
    return TrainingData(rng.normal(size=(n, d)).astype(np.float32), rng.uniform(0, 1, (n, 3)).astype(np.float32),
                        pos, rng.gamma(2.0, size=(n, g)).astype(np.float32), [f"s{i}" for i in range(n)],
                        [f"G{i}" for i in range(g)], sections=sections)


def test_validation_share_is_seeded_and_taken_from_every_section():
    sections = np.repeat([0, 1], [150, 50])
    data = _noise(sections=sections)
    fit, val = validation.split_validation(data, train_config(seed=3))
    again, val2 = validation.split_validation(data, train_config(seed=3))
    assert val.spot_ids == val2.spot_ids and fit.spot_ids == again.spot_ids
    assert sorted(fit.spot_ids + val.spot_ids) == sorted(data.spot_ids)
    # 10% of each section, raised to 20 spots where that stays within a fifth of it.
    assert np.bincount(val.sections).tolist() == [20, 10]
    np.testing.assert_array_equal(fit.frames, data.frames)  # sections keep their whole box
    other = validation.split_validation(data, train_config(seed=4))[1]
    assert other.spot_ids != val.spot_ids
    assert validation.split_validation(data, train_config(val_fraction=0.0))[1] is None
    assert validation.split_validation(_noise(n=12), HisToSGEConfig())[1] is None


@pytest.mark.slow
def test_training_stops_when_validation_stops_improving_and_keeps_the_best_weights():
    data = _noise()
    model, events = run_collecting(train(data, train_config(epochs=300, lr=1e-2, **STOPPING)))
    stopped = model.meta.stopped_at
    assert stopped < 300 and len(model.meta.history) == stopped
    assert events[-1].step == events[-1].total == 300 and "stopped at epoch" in events[-1].message
    scores = dict((int(e), v) for e, v in model.meta.val_history)
    best_epoch = model.meta.best_epoch
    assert best_epoch == max(scores, key=scores.get) and 0 < best_epoch < stopped
    assert model.meta.n_validation_spots == 20 and model.meta.n_train_spots == 180
    # The summary people read reports the kept epoch's validation score (to compare runs by).
    assert model.meta.best_val_pcc == scores[best_epoch]
    summary = model.training_summary()
    assert f"epoch {best_epoch} " in summary
    assert f"20 spots held back from training): {scores[best_epoch]:.4f}" in summary
    # The returned weights are the best validated ones: re-scoring them gives the best score.
    _, val = validation.split_validation(data, model.config)
    pred = model.predict(val.features, val.mean_rgb, val.positions)
    pcc = np.mean([np.corrcoef(pred[:, j], val.targets[:, j])[0, 1] for j in range(pred.shape[1])])
    assert abs(pcc - scores[best_epoch]) < 0.05


@pytest.mark.slow
def test_no_validation_share_trains_every_epoch_on_every_spot():
    model = run_to_end(train(_noise(), train_config(epochs=15, lr=1e-2, val_fraction=0.0, **SMALL)))
    assert len(model.meta.history) == 15 and model.meta.stopped_at is None
    assert model.training_summary() == "epochs: 15"  # no validation score to report
    assert model.meta.n_train_spots == 200 and model.meta.n_validation_spots == 0


def test_resumed_run_keeps_the_validation_scores_of_the_first_part(tmp_path):
    data = _noise()
    half = tmp_path / "half.pt"
    first = run_to_end(train(data, train_config(epochs=6, lr=1e-3, **STOPPING), checkpoint_path=half))
    assert [e for e, _ in first.meta.val_history] == [1, 2, 3, 4, 5, 6]
    resumed = run_to_end(train(data, train_config(epochs=8, lr=1e-3, **STOPPING), resume=half))
    scores = resumed.meta.val_history
    assert [e for e, _ in scores] == list(range(1, 9))
    assert scores[:6] == first.meta.val_history


@pytest.mark.slow
def test_a_section_too_small_to_validate_trains_every_spot_for_the_fixed_schedule():
    data = _noise()  # 200 spots: a validation share of 20, under the default 50
    model = run_to_end(train(data, train_config(lr=1e-2, schedule_epochs=12, **SMALL)))
    assert len(model.meta.history) == 12 and model.meta.schedule_epochs == 12
    assert model.meta.n_train_spots == 200 and model.meta.n_validation_spots == 0
    assert not model.meta.val_history and model.meta.stopped_at is None
    assert model.training_summary().startswith("epochs: 12 on every training spot (a fixed schedule")
    # never longer than the epochs asked for
    assert len(run_to_end(train(data, train_config(epochs=5, schedule_epochs=12, **SMALL))).meta.history) == 5


@pytest.mark.slow
def test_a_section_with_enough_validation_spots_stops_early_on_them():
    data = _noise(n=600)  # a validation share of 60
    model = run_to_end(train(data, train_config(epochs=400, lr=1e-2, **SMALL)))
    assert model.meta.n_validation_spots == 60 and model.meta.schedule_epochs is None
    assert model.meta.stopped_at < 400 and model.meta.best_epoch >= 1
    # and the paper's rule stays one setting away: every spot, every epoch
    paper = run_to_end(train(_noise(), train_config(epochs=7, val_fraction=0.0, **SMALL)))
    assert len(paper.meta.history) == 7 and paper.meta.schedule_epochs is None
