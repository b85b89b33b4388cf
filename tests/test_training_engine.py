"""The shared training loop: one validation split, early stopping, divergence, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histosge.errors import HistosgeError, InputError
from napari_histosge.models import load_model, train, train_config
from napari_histosge.models.conditioned import fit as conditioned_fit
from napari_histosge.progress import run_to_end
from napari_histosge.training import early_stopping
from napari_histosge.training.engine import TrainingDivergedError
from napari_histosge.training.inputs import TrainingData
from napari_histosge.training.model_meta import ModelMeta
from napari_histosge.training.trained_model import TrainedModel

# min_validation_spots=0: early stopping even on these small synthetic sets (the default trains
# them on a fixed schedule; tests/test_validation.py covers that rule).
SMALL = dict(dim=32, heads=2, head_hidden=64, n_pos_bins=16, group_size=16, batch_size=64, device="cpu",
             min_validation_spots=0)
CONDITIONED = dict(model="conditioned", dim=32, distill_dim=16, neighbours=6, batch_size=64, diffusion_steps=10,
                   sample_steps=2, n_samples=2, device="cpu", lr=3e-3, head_hidden=64, histosge_epochs=3,
                   histosge_members=1, kriging_rank=0, image_trend=False)


def _data(n: int = 120, g: int = 6, d: int = 4, seed: int = 0, noise: bool = False) -> TrainingData:
    """A grid of spots; genes smooth in space (or, with ``noise``, unrelated to anything seen)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    ys, xs = np.divmod(np.arange(n), side)
    pos = np.c_[xs, ys].astype(float) * 100.0 + 500.0
    smooth = np.sin(pos[:, :1] / 250 + np.arange(g)) + np.cos(pos[:, 1:] / 300 + np.arange(g) / 2)
    y = rng.gamma(2.0, size=(n, g)) if noise else np.maximum(2.0 + smooth + 0.1 * rng.normal(size=(n, g)), 0)
    return TrainingData(rng.normal(size=(n, d)).astype(np.float32), rng.uniform(100, 200, (n, 3)).astype(np.float32),
                        pos, y.astype(np.float32), [f"s{i}" for i in range(n)], [f"G{i}" for i in range(g)])


def _weights(model: TrainedModel) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.model.state_dict().items()}


# -- one validation split ---------------------------------------------------------------------------


@pytest.mark.slow
def test_every_trainer_and_the_companion_choice_hold_back_the_same_rows(monkeypatch):
    data = _data()
    config = train_config(epochs=2, seed=5, **CONDITIONED)
    expected = early_stopping.validation_rows(data, config)
    assert expected is not None and len(expected) == 20  # 10% raised to 20 spots: within a fifth of 120
    held_back: dict[str, list] = {"histosge": [], "conditioned": []}
    score_init = early_stopping.ValidationScore.__init__

    def spy_score(self, model, inputs, val, *args, **kwargs):
        held_back["histosge"].append([int(s[1:]) for s in val.spot_ids])
        score_init(self, model, inputs, val, *args, **kwargs)

    held_out = conditioned_fit._held_out_inputs

    def spy_held_out(positions, rows, *args, **kwargs):
        held_back["conditioned"].append(list(rows))
        return held_out(positions, rows, *args, **kwargs)

    monkeypatch.setattr(early_stopping.ValidationScore, "__init__", spy_score)
    monkeypatch.setattr(conditioned_fit, "_held_out_inputs", spy_held_out)
    model = run_to_end(train(data, config))
    assert model.meta.n_validation_spots == len(expected)
    # The companion (a HisToSGE run), the conditioned network's scores, the companion's weight.
    assert held_back["histosge"] == [list(expected)]
    assert held_back["conditioned"] == [list(expected), list(expected)]
    run_to_end(train(data, train_config(epochs=1, seed=5, **SMALL)))  # a lone HisToSGE run
    assert held_back["histosge"][-1] == list(expected)
    other = early_stopping.validation_rows(data, train_config(seed=6))
    assert not np.array_equal(other, expected)


def test_the_validation_share_is_raised_to_a_minimum_where_the_section_allows():
    assert early_stopping.validation_count(3500, 0.1) == 350
    assert early_stopping.validation_count(200, 0.1) == 20
    assert early_stopping.validation_count(90, 0.1) == 18  # at most a fifth of the section
    assert early_stopping.validation_count(90, 0.3) == 27
    assert early_stopping.validation_count(90, 0.0) == 0


# -- early stopping never keeps the untrained weights ----------------------------------------------


@pytest.mark.slow
def test_the_initial_weights_are_never_kept_even_when_training_only_overfits():
    data = _data(n=90, noise=True)
    model = run_to_end(train(data, train_config(epochs=40, lr=3e-2, **SMALL)))
    assert model.meta.best_epoch >= 1
    assert [e for e, _ in model.meta.val_history][0] >= 1  # epoch 0 was never scored as a candidate


def test_smoothing_compares_the_mean_of_recent_scores():
    scores = [0.2, 0.1, 0.9, 0.0, 0.0, 0.5, 0.5, 0.5]
    net = torch.nn.Linear(2, 1)
    single, smoothed = early_stopping.BestWeights(net, smoothing=1), early_stopping.BestWeights(net, smoothing=3)
    for epoch, score in enumerate(scores, start=1):
        single.offer(score, epoch)
        smoothed.offer(score, epoch)
    assert single.epoch == 3  # one lucky score decides
    # Averaged with its neighbours the lone 0.9 (mean 0.4) loses to the steady end (mean 0.5).
    assert smoothed.epoch == 8 and smoothed.score == pytest.approx(0.5) and smoothed.kept_score() == 0.5
    recorded = ModelMeta()
    smoothed.record(recorded)
    assert recorded.best_epoch == 8 and len(recorded.val_history) == len(scores)
    smoothed.offer(float("nan"), 9)
    assert smoothed.epoch == 8 and smoothed.stale == 1


# -- divergence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [SMALL, {**CONDITIONED, "histosge_weight": 0.0}], ids=["histosge", "conditioned"])
def test_a_diverging_loss_stops_training_and_keeps_the_good_checkpoint(tmp_path, settings):
    data = _data()
    path = tmp_path / "model.pt"
    good = run_to_end(train(data, train_config(epochs=1, **settings), checkpoint_path=path))
    before = path.read_bytes()
    with pytest.raises(TrainingDivergedError, match=r"diverged at epoch \d+.*lower learning rate") as err:
        run_to_end(train(data, train_config(epochs=3, **{**settings, "lr": 1e30}), checkpoint_path=path))
    assert isinstance(err.value, HistosgeError)  # the CLI prints it on one line and exits 2
    assert path.read_bytes() == before
    loaded = load_model(path, device="cpu")
    for key, value in _weights(good).items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


@pytest.mark.parametrize("settings", [SMALL, {**CONDITIONED, "histosge_weight": 0.0}], ids=["histosge", "conditioned"])
def test_loading_a_checkpoint_with_non_finite_weights_names_the_file(tmp_path, settings):
    model = run_to_end(train(_data(), train_config(epochs=1, **settings)))
    with torch.no_grad():
        next(model.model.parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "broken.pt"
    model.save(path)
    with pytest.raises(InputError, match="NaN or infinite") as err:
        load_model(path, device="cpu")
    assert str(path) in str(err.value)


# -- resume --------------------------------------------------------------------------------------


def _interrupted(data, config, path, after: int) -> None:
    """Run until epoch ``after`` is checkpointed, then stop consuming (as a kill would)."""
    events = train(data, config, checkpoint_path=path)
    for event in events:
        if event.stage == "train" and event.step == after:
            events.close()
            return
    raise AssertionError(f"training ended before epoch {after}")


@pytest.mark.slow
@pytest.mark.parametrize("val_fraction, min_val", [(0.1, 0), (0.0, 0), (0.1, 50)],
                         ids=["validation", "no-validation", "fixed-schedule"])
def test_resume_reproduces_the_uninterrupted_histosge_run(tmp_path, val_fraction, min_val):
    data = _data(n=200, noise=True)
    epochs = 300 if val_fraction and not min_val else 40
    config = train_config(epochs=epochs, lr=1e-2, val_fraction=val_fraction,
                          **{**SMALL, "min_validation_spots": min_val, "schedule_epochs": 30})
    whole = run_to_end(train(data, config, checkpoint_path=tmp_path / "whole.pt"))
    _interrupted(data, config, tmp_path / "part.pt", after=24)
    assert load_model(tmp_path / "part.pt", device="cpu").meta.epochs_done == 24
    resumed = run_to_end(train(data, config, resume=tmp_path / "part.pt"))
    if val_fraction and not min_val:
        assert whole.meta.stopped_at is not None and whole.meta.stopped_at > 24  # stopped after the interruption
    if min_val:
        assert len(whole.meta.history) == 30 and whole.meta.schedule_epochs == 30
    for key in ("best_epoch", "stopped_at", "val_history", "history", "best_val_pcc"):
        assert getattr(resumed.meta, key) == getattr(whole.meta, key), key
    for key, value in _weights(whole).items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_conditioned_run(tmp_path):
    data = _data()
    config = train_config(epochs=4, **{**CONDITIONED, "histosge_weight": 0.0})
    whole = run_to_end(train(data, config))
    _interrupted(data, config, tmp_path / "part.pt", after=2)
    resumed = run_to_end(train(data, config, resume=tmp_path / "part.pt"))
    for key in ("best_epoch", "val_history", "history", "best_val_pcc"):
        assert getattr(resumed.meta, key) == getattr(whole.meta, key), key
    for key, value in _weights(whole).items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_the_cli_exits_2_on_a_diverging_run_and_on_a_nan_checkpoint(tmp_path, demo_dir, capsys):
    from napari_histosge.cli.main import main

    demo = demo_dir
    good = tmp_path / "m.pt"
    assert main(["train", str(demo), "--out", str(good), "--epochs", "1", "--n-genes", "8", "--quiet"]) == 0
    before = good.read_bytes()
    status = main(["train", str(demo), "--out", str(good), "--epochs", "3", "--n-genes", "8", "--lr", "1e6",
                   "--val-fraction", "0", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "diverged at epoch" in err and "lower learning rate" in err
    assert good.read_bytes() == before  # the good model at --out is untouched
    broken = load_model(good, device="cpu")
    with torch.no_grad():
        next(broken.model.parameters()).view(-1)[0] = float("inf")
    broken.save(tmp_path / "nan.pt")
    status = main(["predict", str(tmp_path / "nan.pt"), str(demo), "--out", str(tmp_path / "p.h5ad"),
                   "--quiet"])
    assert status == 2 and "nan.pt" in capsys.readouterr().err


# -- weight averaging ------------------------------------------------------------------------------


@pytest.mark.slow
def test_weight_averaging_keeps_the_mean_of_the_weights_of_its_epochs(tmp_path):
    data = _data(n=150)
    config = train_config(epochs=8, lr=1e-2, average_from=5, checkpoint_every=1, **SMALL)
    seen = {}
    events = train(data, config, checkpoint_path=tmp_path / "m.pt")
    try:
        while True:
            event = next(events)
            if event.stage == "train" and 5 <= event.step < 8:  # epoch 8's file holds the mean
                seen[event.step] = _weights(load_model(tmp_path / "m.pt", device="cpu"))
    except StopIteration as stop:
        averaged = stop.value
    last = _weights(run_to_end(train(data, train_config(epochs=8, lr=1e-2, **{**SMALL, "val_fraction": 0.0}))))
    # The mean of epochs 5-8: the three checkpointed ones and the last of a run without averaging.
    for key, value in _weights(averaged).items():
        if value.is_floating_point():
            expected = torch.stack([seen[e][key] for e in (5, 6, 7)] + [last[key]]).mean(0)
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert averaged.meta.averaged_epochs == [5, 8] and averaged.meta.n_validation_spots == 0
    assert averaged.meta.schedule_epochs is None and len(averaged.meta.history) == 8
    assert "kept the mean of the weights of epochs 5-8" in averaged.training_summary()
    saved = load_model(tmp_path / "m.pt", device="cpu")  # the file holds the average, not epoch 8
    for key, value in _weights(averaged).items():
        torch.testing.assert_close(saved.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_averaged_run(tmp_path):
    data = _data(n=150, noise=True)
    config = train_config(epochs=30, lr=1e-2, average_from=10, **SMALL)
    whole = run_to_end(train(data, config))
    _interrupted(data, config, tmp_path / "part.pt", after=17)
    resumed = run_to_end(train(data, config, resume=tmp_path / "part.pt"))
    assert resumed.meta.averaged_epochs == whole.meta.averaged_epochs == [10, 30]
    for key, value in _weights(whole).items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


def test_averaging_from_beyond_the_last_epoch_is_refused():
    with pytest.raises(InputError, match=r"average_from \(50\) must be at most epochs \(40\)"):
        train_config(epochs=40, average_from=50)
    # The conditioned model's own epochs are few; its HisToSGE companions are the runs that average.
    assert train_config("conditioned", epochs=20, histosge_epochs=200, average_from=40).average_from == 40
    with pytest.raises(InputError, match=r"average_from \(50\) must be at most histosge_epochs \(40\)"):
        train_config("conditioned", histosge_epochs=40, average_from=50)
