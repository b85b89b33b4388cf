"""Training generator, trained model, checkpoints, resume and cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histosge.errors import CancelledError, InputError
from napari_histosge.models import load_model, train, train_config
from napari_histosge.progress import CancelToken, run_collecting, run_to_end
from napari_histosge.training.config import config_from_dict
from napari_histosge.training.inputs import TrainingData

SMALL = dict(dim=32, heads=2, head_hidden=64, n_pos_bins=16, group_size=16, batch_size=64, device="cpu")


def _synthetic(n: int = 240, d: int = 12, g: int = 10, seed: int = 0):
    """Targets are a smooth function of the features and the position."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    ys, xs = np.divmod(np.arange(n), side)
    pos = np.c_[xs, ys].astype(float) * 150.0 + 1000.0
    feats = rng.normal(size=(n, d)).astype(np.float32)
    rgb = rng.uniform(100, 200, (n, 3)).astype(np.float32)
    w = rng.normal(size=(d, g)) / np.sqrt(d)
    u = (pos - pos.min(0)) / np.ptp(pos, axis=0)
    spatial = np.sin(3 * u[:, :1] + np.arange(g)) + np.cos(2 * u[:, 1:] * (1 + np.arange(g) / g))
    y = np.maximum(feats @ w + spatial + 1.0, 0).astype(np.float32)
    return feats, rgb, pos, y


def _data(rows, arrays, genes=None):
    feats, rgb, pos, y = arrays
    genes = genes or [f"G{i}" for i in range(y.shape[1])]
    return TrainingData(feats[rows], rgb[rows], pos[rows], y[rows], [f"s{i}" for i in rows], genes)


@pytest.mark.slow
def test_training_learns_and_generalises_to_held_out_spots():
    arrays = _synthetic()
    rows = np.arange(len(arrays[0]))
    train_rows, test_rows = rows[rows % 3 != 0], rows[rows % 3 == 0]
    epochs = 40  # the image pathway starts at zero (image_init), so it needs a few more than 30 here
    model, events = run_collecting(train(_data(train_rows, arrays), train_config(epochs=epochs, lr=3e-3, **SMALL)))
    assert [e.step for e in events] == list(range(epochs + 1))
    assert all(e.stage == "train" and e.total == epochs for e in events)
    assert events[-1].metrics["epoch"] == epochs
    history = model.meta.history
    assert len(history) == epochs and model.meta.epochs_done == epochs
    assert history[-1] < 0.3 * history[0]
    feats, rgb, pos, y = arrays
    pred = model.predict(feats[test_rows], rgb[test_rows], pos[test_rows])
    assert pred.shape == (len(test_rows), y.shape[1]) and pred.dtype == np.float32
    assert pred.min() >= 0
    pcc = [np.corrcoef(pred[:, j], y[test_rows, j])[0, 1] for j in range(y.shape[1])]
    assert np.nanmean(pcc) > 0.8, pcc
    # Predicting in a different order gives the same rows (grouping is by position).
    perm = np.random.default_rng(0).permutation(len(test_rows))
    again = model.predict(feats[test_rows][perm], rgb[test_rows][perm], pos[test_rows][perm], batch_size=7)
    np.testing.assert_allclose(again, pred[perm], atol=1e-4)


def test_training_without_image_features():
    feats, rgb, pos, y = _synthetic(n=64)
    data = TrainingData(np.zeros((64, 0), np.float32), np.zeros((64, 3)), pos, y, [str(i) for i in range(64)],
                        [f"G{i}" for i in range(y.shape[1])])
    model = run_to_end(train(data, train_config(epochs=3, **SMALL)))
    assert model.meta.in_dim == 5
    assert model.predict(np.zeros((5, 0)), np.zeros((5, 3)), pos[:5]).shape == (5, y.shape[1])


def test_checkpoint_round_trip_predicts_identically(tmp_path):
    arrays = _synthetic(n=80)
    ckpt = tmp_path / "model.pt"
    meta = {"normalisation": {"target_sum": 1e4, "log1p": True}, "spot_diameter_px": np.float64(55.0)}
    model = run_to_end(train(_data(np.arange(80), arrays), train_config(epochs=3, **SMALL), checkpoint_path=ckpt,
                             meta=meta))
    loaded = load_model(ckpt, device="cpu")
    assert loaded.config == model.config
    assert loaded.genes == model.genes
    assert loaded.meta.normalisation == {"target_sum": 1e4, "log1p": True}
    assert loaded.meta.spot_diameter_px == 55.0 and loaded.meta.epochs_done == 3
    feats, rgb, pos, _ = arrays
    np.testing.assert_array_equal(loaded.predict(feats, rgb, pos), model.predict(feats, rgb, pos))
    # Saving again through the object works and leaves no temporary files behind.
    loaded.save(tmp_path / "copy.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt", "model.pt"]


@pytest.mark.slow
def test_low_rank_gene_head_trains_saves_and_loads(tmp_path):
    arrays = _synthetic(n=80)
    ckpt = tmp_path / "rank.pt"
    model = run_to_end(train(_data(np.arange(80), arrays), train_config(epochs=2, head_rank=3, **SMALL),
                             checkpoint_path=ckpt))
    first, second = model.model.gene_head[-2:]
    # Every gene reads the same 3 directions of the hidden units: the readout has rank 3.
    assert torch.linalg.matrix_rank(second.weight @ first.weight) == 3
    loaded = load_model(ckpt, device="cpu")
    assert loaded.config.head_rank == 3
    feats, rgb, pos, _ = arrays
    np.testing.assert_array_equal(loaded.predict(feats, rgb, pos), model.predict(feats, rgb, pos))


@pytest.mark.slow
def test_resume_matches_one_long_run(tmp_path):
    arrays = _synthetic(n=100)
    data = _data(np.arange(100), arrays)
    cfg = train_config(epochs=4, dropout=0.1, **SMALL)
    full = run_to_end(train(data, cfg))
    ckpt = tmp_path / "half.pt"
    run_to_end(train(data, train_config(**{**cfg.to_dict(), "epochs": 2}), checkpoint_path=ckpt))
    resumed = run_to_end(train(data, cfg, resume=ckpt, checkpoint_path=ckpt))
    np.testing.assert_allclose(resumed.meta.history, full.meta.history, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert load_model(ckpt).meta.epochs_done == 4


def test_resume_rejects_mismatched_settings(tmp_path):
    arrays = _synthetic(n=60)
    data = _data(np.arange(60), arrays)
    ckpt = tmp_path / "m.pt"
    run_to_end(train(data, train_config(epochs=1, **SMALL), checkpoint_path=ckpt))
    with pytest.raises(InputError, match="different model settings"):
        run_to_end(train(data, train_config(epochs=2, **{**SMALL, "dim": 64}), resume=ckpt))
    other = _data(np.arange(60), arrays, genes=[f"X{i}" for i in range(arrays[3].shape[1])])
    with pytest.raises(InputError, match="different genes"):
        run_to_end(train(other, train_config(epochs=2, **SMALL), resume=ckpt))


def test_cancel_mid_training_keeps_last_checkpoint(tmp_path):
    arrays = _synthetic(n=100)
    ckpt = tmp_path / "m.pt"
    token = CancelToken()
    gen = train(_data(np.arange(100), arrays), train_config(epochs=50, **SMALL), checkpoint_path=ckpt, cancel=token)
    with pytest.raises(CancelledError):
        for event in gen:
            if event.step == 2:
                token.cancel()
    loaded = load_model(ckpt)
    assert loaded.meta.epochs_done == 2 and len(loaded.meta.history) == 2


def test_crash_during_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    arrays = _synthetic(n=60)
    ckpt = tmp_path / "m.pt"
    model = run_to_end(train(_data(np.arange(60), arrays), train_config(epochs=1, **SMALL), checkpoint_path=ckpt))
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(InputError, match=r"m\.pt: cannot write the checkpoint: disk full"):
        model.save(ckpt)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    assert load_model(ckpt).meta.epochs_done == 1


def test_load_rejects_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError, match="bad.pt.*not a readable"):
        load_model(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InputError, match="not a napari-histosge checkpoint"):
        load_model(foreign)


def test_load_names_weights_of_another_version(tmp_path):
    """A checkpoint whose model has other parts (an older version) gets a clear error, not 'corrupt'."""
    arrays = _synthetic(n=60)
    path = tmp_path / "m.pt"
    run_to_end(train(_data(np.arange(60), arrays), train_config(epochs=1, **SMALL), checkpoint_path=path))
    payload = torch.load(path, weights_only=False)
    payload["state_dict"]["old_part.weight"] = payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, path)
    with pytest.raises(InputError, match=r"m\.pt.*unexpected: old_part\.weight.*another napari-histosge version"):
        load_model(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"group_size": 0}, "group_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"dim": 30, "heads": 4}, "divisible"),
        ({"dropout": 1.0}, "dropout"),
        ({"feature_dropout": 1.0}, "feature_dropout"),
        ({"feature_dropout": -0.1}, "feature_dropout"),
        ({"image_init": -1.0}, "image_init"), ({"image_init": float("nan")}, "image_init"),
        ({"grouping": "random"}, "grouping"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"head_rank": 0}, "head_rank"), ({"head_rank": 2.5}, "head_rank"), ({"head_rank": True}, "head_rank"),
        ({"init_seed": 1.5}, "init_seed"), ({"init_seed": True}, "init_seed"),
    ],
)
def test_bad_config_values(change, match):
    with pytest.raises(InputError, match=match):
        train_config(**change)


def test_config_dict_round_trip_and_unknown_model():
    cfg = train_config(epochs=5, genes=["A", "B"])
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown training setting.*colour"):
        config_from_dict({**cfg.to_dict(), "colour": "red"})
    arrays = _synthetic(n=20)
    with pytest.raises(InputError, match="unknown model 'nope'"):
        run_to_end(train(_data(np.arange(20), arrays), train_config(model="nope", epochs=1, **SMALL)))


def test_bad_training_data_and_prediction_inputs():
    feats, rgb, pos, y = _synthetic(n=20)
    ids, genes = [str(i) for i in range(20)], [f"G{i}" for i in range(y.shape[1])]
    with pytest.raises(InputError, match="mean_rgb has shape"):
        TrainingData(feats, rgb[:, :2], pos, y, ids, genes)
    with pytest.raises(InputError, match="targets has shape"):
        TrainingData(feats, rgb, pos, y[:, :3], ids, genes)
    bad = feats.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="features contains NaN"):
        TrainingData(bad, rgb, pos, y, ids, genes)
    model = run_to_end(train(TrainingData(feats, rgb, pos, y, ids, genes), train_config(epochs=1, **SMALL)))
    with pytest.raises(InputError, match="features has shape"):
        model.predict(feats[:, :5], rgb, pos)


def test_position_jitter_trains_embeddings_between_spots():
    from napari_histosge.models import create_model, model_hparams

    arrays = _synthetic(n=64)  # an 8 x 8 grid: most of 32 bins per axis lie between spots
    data = _data(np.arange(64), arrays)
    cfg = dict(SMALL, n_pos_bins=32)
    torch.manual_seed(0)
    init = create_model("histosge", in_dim=data.features.shape[1] + 5, n_genes=len(data.genes),
                        **model_hparams(train_config(**cfg))).x_embed.weight.detach()

    def trained_rows(jitter):
        model = run_to_end(train(data, train_config(epochs=3, position_jitter=jitter, **cfg)))
        return int((model.model.x_embed.weight.detach().cpu() != init).any(dim=1).sum()), model

    without, _ = trained_rows(0.0)
    with_jitter, model = trained_rows(0.5)
    assert without == 8
    assert with_jitter > 2 * without
    assert model.meta.position_jitter_px == pytest.approx(0.5 * 150.0)


@pytest.mark.slow
def test_feature_dropout_regularises_training_only():
    """Dropped image columns change training (not prediction) and keep the model from memorising spots."""
    feats, rgb, pos, y = _synthetic(n=120)
    rows = np.arange(120)
    plain = run_to_end(train(_data(rows, (feats, rgb, pos, y)), train_config(epochs=3, feature_dropout=0.0, **SMALL)))
    dropped = run_to_end(train(_data(rows, (feats, rgb, pos, y)), train_config(epochs=3, feature_dropout=0.5, **SMALL)))
    assert plain.meta.history != dropped.meta.history
    # prediction is deterministic: no dropout outside training
    np.testing.assert_array_equal(dropped.predict(feats, rgb, pos), dropped.predict(feats, rgb, pos))
    no_image = run_to_end(train(_data(rows, (feats[:, :0], rgb, pos, y)),
                                train_config(epochs=1, feature_dropout=0.5, **SMALL)))  # nothing to drop: fine
    assert no_image.meta.n_features == 0
