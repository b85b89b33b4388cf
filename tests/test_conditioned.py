"""The conditioned model: neighbour context, training, sampling, checkpoints and no leakage."""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from napari_histosge.errors import InputError
from napari_histosge.features import SpotFeatures
from napari_histosge.models import load_model, train, train_config
from napari_histosge.models.conditioned.fit import companion_config
from napari_histosge.models.conditioned.trained import BLEND_WEIGHTS, ConditionedTrainedModel
from napari_histosge.models.neighbours import median_spacing, neighbour_context
from napari_histosge.progress import run_collecting, run_to_end
from napari_histosge.training.inputs import TrainingData
from napari_histosge.training.trained_model import TrainedModel

# Every test here trains the conditioned model: the full run only (see the README, two tiers).
pytestmark = pytest.mark.slow

SMALL = dict(model="conditioned", dim=32, distill_dim=16, neighbours=6, batch_size=64, diffusion_steps=20,
             sample_steps=4, n_samples=3, device="cpu", lr=3e-3, head_hidden=64, histosge_epochs=20)


def _field(n: int = 196, g: int = 8, d: int = 6, seed: int = 0):
    """A square grid whose genes are smooth in space plus an image-driven part."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    ys, xs = np.divmod(np.arange(n), side)
    pos = np.c_[xs, ys].astype(float) * 100.0 + 500.0
    feats = rng.normal(size=(n, d)).astype(np.float32)
    u = pos / 100.0
    smooth = np.sin(u[:, :1] / 2.5 + np.arange(g)) + np.cos(u[:, 1:] / 3.0 + np.arange(g) / 2)
    image = feats @ (rng.normal(size=(d, g)) / np.sqrt(d))
    y = np.maximum(2.0 + smooth + 0.7 * image + 0.1 * rng.normal(size=(n, g)), 0).astype(np.float32)
    rgb = rng.uniform(100, 200, (n, 3)).astype(np.float32)
    return feats, rgb, pos, y


def _data(rows, arrays):
    feats, rgb, pos, y = arrays
    return TrainingData(feats[rows], rgb[rows], pos[rows], y[rows], [f"s{i}" for i in rows],
                        [f"G{i}" for i in range(y.shape[1])])


def _half(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, hidden rows)``: a fixed, spread-out half of ``n`` spots hidden."""
    rows = np.arange(n)
    test = rows[(rows * 7) % 10 < 5]
    return np.setdiff1d(rows, test), test


def _pcc(a, b):
    return np.nanmean([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])


def test_neighbour_context_excludes_self_and_follows_the_lattice():
    pos = np.c_[np.tile(np.arange(5), 5), np.repeat(np.arange(5), 5)].astype(float) * 10
    assert median_spacing(pos) == pytest.approx(10.0)
    idx, geo, valid = neighbour_context(pos, pos, 4, spacing=10.0, exclude=np.arange(25))
    assert idx.shape == (25, 4) and valid.all()
    assert not np.any(idx == np.arange(25)[:, None])
    centre = 12  # interior spot: its 4 nearest are the lattice neighbours at distance 1
    assert sorted(idx[centre].tolist()) == [7, 11, 13, 17]
    np.testing.assert_allclose(geo[centre, :, 2], 1.0)
    assert {tuple(v) for v in geo[centre, :, :2].round(6).tolist()} == {(0, -1), (-1, 0), (1, 0), (0, 1)}
    # Dropout picks other (farther) neighbours, never the query itself.
    rng = np.random.default_rng(0)
    idx2, _, _ = neighbour_context(pos, pos, 4, spacing=10.0, exclude=np.arange(25), dropout=0.5, rng=rng)
    assert not np.any(idx2 == np.arange(25)[:, None]) and not np.array_equal(idx2, idx)
    # A reference set smaller than k: fewer slots, all valid.
    idx3, _, valid3 = neighbour_context(pos[:3], pos[:2], 8, spacing=10.0, exclude=np.arange(2))
    assert idx3.shape == (2, 2) and valid3.all()
    with pytest.raises(InputError, match="empty"):
        neighbour_context(pos[:0], pos, 4, spacing=1.0)


def test_conditioned_model_learns_and_beats_the_neighbour_mean():
    from napari_histosge.evaluation.metrics import knn_baseline

    arrays = _field()
    feats, rgb, pos, y = arrays
    train_rows, test = _half(len(pos))
    model = run_to_end(train(_data(train_rows, arrays), train_config(epochs=15, **SMALL)))
    assert isinstance(model, ConditionedTrainedModel)
    pred, std = model.predict(feats[test], rgb[test], pos[test], return_std=True)
    assert pred.shape == std.shape == (len(test), y.shape[1]) and pred.dtype == np.float32
    assert pred.min() >= 0 and np.all(std >= 0)
    knn = knn_baseline(pos[train_rows], y[train_rows], pos[test], k=6)
    assert _pcc(pred, y[test]) > _pcc(knn, y[test]) + 0.05
    # Samples: seeded, so repeatable, and they spread around the prediction.
    s1 = model.predict_samples(feats[test], rgb[test], pos[test])
    s2 = model.predict_samples(feats[test], rgb[test], pos[test])
    assert s1.shape == (3, len(test), y.shape[1])
    np.testing.assert_array_equal(s1, s2)
    with pytest.raises(InputError, match="n_samples"):
        model.predict_samples(feats[test], rgb[test], pos[test], n_samples=0)
    with pytest.raises(InputError, match="features has shape"):
        model.predict(feats[test, :2], rgb[test], pos[test])


def test_the_image_at_a_new_position_moves_the_prediction():
    """Super-resolution reads the image where it predicts: the image trend (on by default) uses it."""
    arrays = _field()
    feats, rgb, pos, y = arrays
    train_rows, test = _half(len(pos))
    # kriging_rank 4 (< 8 genes): the principal directions are few, as on real sections.
    # No companion: this is about the kriging's image trend.
    cfg = train_config(epochs=1, val_fraction=0.0, kriging_rank=4, **{**SMALL, "histosge_weight": 0.0})
    swap = np.random.default_rng(0).permutation(len(test))  # other spots' images at the same positions

    def image_effect(model) -> np.ndarray:
        def mean(f, c):
            return model.model(*(torch.from_numpy(a) for a in model.prediction_inputs(f, c, pos[test])))["mean"]
        return (mean(feats[test], rgb[test]) - mean(feats[test][swap], rgb[test][swap])).abs().mean(0).detach().numpy()

    model = run_to_end(train(_data(train_rows, arrays), cfg))
    assert model.meta.kriging["image_trend"] and model.meta.kriging["share"]["drift"] > 0
    assert model.meta.extra == {}  # every entry training writes is a declared field of its metadata
    off = run_to_end(train(_data(train_rows, arrays), train_config(**{**cfg.to_dict(), "image_trend": False})))
    assert not off.meta.kriging["image_trend"] and "drift" not in off.meta.kriging["share"]
    drift = model.model.choice.numpy() == 2
    # Without the trend only the barely trained learned parts see the image.
    assert image_effect(model)[drift].mean() > 5 * image_effect(off)[drift].mean()
    assert _pcc(model.predict(feats[test], rgb[test], pos[test]), y[test]) > \
        _pcc(off.predict(feats[test], rgb[test], pos[test]), y[test])


@pytest.mark.parametrize("switch", [dict(use_neighbours=False), dict(distill=False, adversarial=0.1),
                                    dict(diffusion=False, neighbour_dropout=0.3)])
def test_components_switch_off_and_on(switch):
    arrays = _field(n=64)
    model = run_to_end(train(_data(np.arange(64), arrays), train_config(epochs=2, **{**SMALL, **switch})))
    feats, rgb, pos, y = arrays
    assert model.predict(feats[:5], rgb[:5], pos[:5]).shape == (5, y.shape[1])
    if not switch.get("diffusion", True):
        with pytest.raises(InputError, match="diffusion"):
            model.predict(feats[:5], rgb[:5], pos[:5], return_std=True)
    if switch.get("adversarial"):
        assert model.model.discriminator_parameters()


def test_the_histosge_companion_is_trained_apart_and_blended_in():
    arrays = _field(n=120)
    feats, rgb, pos, _ = arrays
    data = _data(np.arange(120), arrays)
    cfg = train_config(epochs=3, **{**SMALL, "histosge_weight": 0.5, "histosge_members": 2})
    model, events = run_collecting(train(data, cfg))
    for stage in ("histosge 1/2", "histosge 2/2"):  # one member after the other
        assert [e.step for e in events if e.stage == stage][-1] == cfg.histosge_epochs
    members = model.companions
    assert len(members) == 2 and all(isinstance(m, TrainedModel) and m.config.model == "histosge" for m in members)
    # Same spots and validation split, different initial weights.
    assert members[0].config.seed == members[1].config.seed == cfg.seed
    assert [m.config.init_seed for m in members] == [cfg.seed, cfg.seed + 1]
    assert members[0].meta.n_validation_spots == members[1].meta.n_validation_spots > 0
    # Trained first on the same spots, never by the conditioned losses: as if trained alone.
    query = pos + 41.0
    alone = [run_to_end(train(data, companion_config(cfg, m))).predict(feats, rgb, query) for m in (0, 1)]
    for member, own in zip(members, alone, strict=True):
        np.testing.assert_allclose(member.predict(feats, rgb, query), own, atol=1e-5)
    assert not np.allclose(alone[0], alone[1])
    blended = model.predict(feats, rgb, query)
    assert model.blend_weight == 0.5 and model.meta.histosge["weight"] == 0.5
    model.meta.histosge["weight"] = 0.0
    conditioned_only = model.predict(feats, rgb, query)
    np.testing.assert_allclose(blended, 0.5 * conditioned_only + 0.25 * (alone[0] + alone[1]), atol=1e-5)
    assert not np.allclose(blended, conditioned_only)
    assert "the mean of 2 models" in model.training_summary()
    n_val = model.meta.n_validation_spots
    assert n_val > 0 and model.meta.best_val_pcc >= max(s for _, s in model.meta.val_history)
    assert f"validation PCC (mean per gene, {n_val} spots" in model.training_summary()
    # Without a companion nothing is blended and nothing extra is trained.
    plain, events = run_collecting(train(data, replace(cfg, histosge_weight=0.0)))
    assert plain.companions == () and plain.meta.histosge is None and plain.blend_weight == 0
    assert not [e for e in events if e.stage.startswith("histosge")]


def test_a_lone_companion_member_trains_as_a_histosge_run():
    arrays = _field(n=100)
    feats, rgb, pos, _ = arrays
    data = _data(np.arange(100), arrays)
    cfg = train_config(epochs=1, **{**SMALL, "histosge_weight": 1.0, "histosge_members": 1})
    model, events = run_collecting(train(data, cfg))
    assert {e.stage for e in events} >= {"histosge"}
    # Member 0 is exactly the histosge model that the same seed trains on its own.
    config = replace(companion_config(cfg), init_seed=None)
    alone = run_to_end(train(data, config))
    np.testing.assert_allclose(model.predict(feats, rgb, pos), alone.predict(feats, rgb, pos), atol=1e-5)


def test_the_companion_weight_is_chosen_on_its_validation_spots(tmp_path):
    arrays = _field(n=150)
    data = _data(np.arange(150), arrays)
    model = run_to_end(train(data, train_config(epochs=2, **SMALL), checkpoint_path=tmp_path / "m.pt"))
    info = model.meta.histosge
    scores = info["validation_pcc"]
    assert set(scores) == set(BLEND_WEIGHTS) and info["weight"] == max(scores, key=scores.get)
    assert model.blend_weight == info["weight"]
    assert load_model(tmp_path / "m.pt", device="cpu").blend_weight == info["weight"]  # saved with it
    # Genes driven by the image alone: the image-and-position companion gets weight.
    feats, rgb, pos, _ = arrays
    image_genes = np.maximum(2 + feats @ np.random.default_rng(4).normal(size=(feats.shape[1], 8)), 0)
    image_data = _data(np.arange(150), (feats, rgb, pos, image_genes.astype(np.float32)))
    assert run_to_end(train(image_data, train_config(epochs=2, **{**SMALL, "histosge_epochs": 200}))).blend_weight > 0


def test_checkpoint_round_trip_and_resume(tmp_path):
    arrays = _field(n=100)
    feats, rgb, pos, _ = arrays
    data = _data(np.arange(100), arrays)
    cfg = train_config(epochs=4, val_fraction=0.0, **SMALL)
    ckpt = tmp_path / "c.pt"
    model = run_to_end(train(data, cfg, checkpoint_path=ckpt))
    loaded = load_model(ckpt, device="cpu")
    assert isinstance(loaded, ConditionedTrainedModel) and loaded.config == cfg
    # The reference set (measured spots) travels inside the checkpoint.
    np.testing.assert_array_equal(loaded.model.ref_positions.numpy(), data.positions)
    np.testing.assert_array_equal(loaded.predict(feats, rgb, pos), model.predict(feats, rgb, pos))
    half = tmp_path / "half.pt"
    run_to_end(train(data, train_config(**{**cfg.to_dict(), "epochs": 2}), checkpoint_path=half))
    resumed, events = run_collecting(train(data, cfg, resume=half))
    np.testing.assert_allclose(resumed.meta.history, model.meta.history, rtol=1e-4, atol=1e-6)
    # The saved kriging is reused, not refitted (the refit is the slow part on a big section).
    assert not [e for e in events if e.stage == "kriging"]
    assert resumed.meta.kriging == model.meta.kriging
    np.testing.assert_array_equal(resumed.gene_estimators(), model.gene_estimators())
    other = _data(np.arange(90), arrays)
    with pytest.raises(InputError, match="different spots"):
        run_to_end(train(other, cfg, resume=half))
    with pytest.raises(InputError, match="image_trend=True"):  # the saved kriging would no longer apply
        run_to_end(train(data, train_config(**{**cfg.to_dict(), "image_trend": False}), resume=half))
    with pytest.raises(InputError, match="histosge_weight=None"):  # nor the saved companion
        run_to_end(train(data, train_config(**{**cfg.to_dict(), "histosge_weight": 0.0}), resume=half))
    with pytest.raises(InputError, match="histosge_members=3"):
        run_to_end(train(data, train_config(**{**cfg.to_dict(), "histosge_members": 2}), resume=half))
    assert not [e for e in events if e.stage.startswith("histosge")]  # the companion is not retrained either
    np.testing.assert_allclose(resumed.predict(feats, rgb, pos), model.predict(feats, rgb, pos), atol=1e-3)


@pytest.mark.parametrize(("change", "match"), [
    ({"neighbours": 0}, "neighbours"), ({"neighbour_dropout": 1.0}, "neighbour_dropout"),
    ({"aux_weight": -1.0}, "aux_weight"), ({"diffusion": "yes"}, "diffusion"),
    ({"val_fraction": 1.0}, "val_fraction"), ({"n_samples": 0}, "n_samples"),
    ({"kriging_rank": -1}, "kriging_rank"), ({"kriging_rank": 2.5}, "kriging_rank"),
    ({"image_trend": "no"}, "image_trend"), ({"histosge_weight": 1.5}, "histosge_weight"),
    ({"histosge_weight": -0.1}, "histosge_weight"), ({"histosge_epochs": 0}, "histosge_epochs"),
    ({"histosge_members": 0}, "histosge_members"), ({"init_seed": 1.5}, "init_seed"),
    ({"depth_term": "yes"}, "depth_term"),
])
def test_bad_conditioned_settings(change, match):
    with pytest.raises(InputError, match=match):
        train_config(model="conditioned", **change)


def _spot_adata(arrays, n_genes: int = 40, seed: int = 1):
    feats, rgb, pos, _ = arrays
    rng = np.random.default_rng(seed)
    n = len(pos)
    rate = np.exp(rng.normal(size=(1, n_genes)) + np.sin(pos[:, :1] / 300.0) * rng.normal(size=(1, n_genes)))
    counts = rng.poisson(rate * 5).astype(np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"spot{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))
    adata.obsm["spatial"] = pos.astype(np.float64)
    adata.uns["histosge"] = {"platform": "unknown", "lattice": "square", "spot_diameter_px": 55.0, "mpp": None,
                             "images": {}, "image": None, "source": "synthetic", "library_id": "synthetic"}
    return adata, SpotFeatures(feats, rgb, "synthetic")


def test_hidden_spots_cannot_leak_into_recovery():
    """Rewriting every hidden spot's counts leaves their predictions bit-identical."""
    from napari_histosge.pipeline.recovery import recover

    arrays = _field(n=100)
    adata, features = _spot_adata(arrays)
    cfg = train_config(epochs=3, n_top_genes=20, **SMALL)
    first = run_to_end(recover(adata, holdout=0.5, seed=3, train_config=cfg, features=features))
    # The sequencing-depth term is on, so the hidden spots' totals could leak through it too.
    assert first.model.meta.depth_term["genes"] > 0
    changed = adata.copy()
    hidden = changed.obs_names.get_indexer(first.test_ids)
    x = changed.X.toarray()
    x[hidden] = np.random.default_rng(9).poisson(50.0, size=(len(hidden), x.shape[1]))
    changed.X = sp.csr_matrix(x.astype(np.float32))
    second = run_to_end(recover(changed, holdout=0.5, seed=3, train_config=cfg, features=features))
    assert second.test_ids == first.test_ids and second.genes == first.genes
    np.testing.assert_array_equal(np.asarray(second.predictions.X), np.asarray(first.predictions.X))
    # ... while the scores do change (the truth changed), so the test can fail.
    assert not first.metrics["mse"].equals(second.metrics["mse"])
    ref = first.model.model.ref_positions.numpy()
    train_rows = adata.obs_names.get_indexer(first.train_ids)
    np.testing.assert_array_equal(ref, adata.obsm["spatial"][train_rows])


def test_torch_threads_untouched():
    # Training must not change the caller's thread setting.
    before = torch.get_num_threads()
    run_to_end(train(_data(np.arange(30), _field(n=30)), train_config(epochs=1, **SMALL)))
    assert torch.get_num_threads() == before


def test_pieces_and_dask_give_the_same_samples_and_spread():
    """Noise is seeded per forward pass, so predicting in pieces (or on dask) changes nothing."""
    pytest.importorskip("distributed")
    from napari_histosge.prediction.distributed import dask_client, predict_distributed
    from napari_histosge.prediction.pieces import predict_in_pieces

    arrays = _field(n=100)
    model = run_to_end(train(_data(np.arange(100), arrays), train_config(epochs=1, **SMALL)))
    feats, rgb, pos, _ = arrays
    query = pos + 37.0
    # 100 queries in passes of 4 * batch_size = 256 would be one pass: force several
    model.config.batch_size = 8
    pred, std = model.predict(feats, rgb, query, return_std=True)
    in_pieces = run_to_end(predict_in_pieces(model, feats, rgb, query, chunk_size=30))
    np.testing.assert_array_equal(in_pieces[0], pred)
    np.testing.assert_array_equal(in_pieces[1], std)
    with dask_client(None, n_workers=1, processes=False) as client:
        remote = run_to_end(predict_distributed(model, feats, rgb, query, scheduler=client, chunk_size=30))
    np.testing.assert_array_equal(remote[0], pred)
    np.testing.assert_array_equal(remote[1], std)
    with pytest.raises(InputError, match="one section"):
        model.predict(feats, rgb, query, frame=(np.zeros(2), np.ones(2)))


def test_uncertainty_survives_early_stopping_at_the_start():
    """Where the validation split keeps epoch 0 (nothing learnable), the denoiser is still fitted."""
    feats, rgb, pos, y = _field(seed=3)
    noise = np.maximum(2 + np.random.default_rng(1).normal(size=y.shape), 0).astype(np.float32)
    arrays = (feats, rgb, pos, noise)
    model, events = run_collecting(
        train(_data(np.arange(len(pos)), arrays), train_config(epochs=4, **{**SMALL, "lr": 3e-2})))
    assert model.meta.best_epoch == 0
    assert [e.step for e in events if e.stage == "uncertainty"] == [1, 2, 3, 4]
    _, std = model.predict(feats[:20], rgb[:20], pos[:20], return_std=True)
    assert std.max() > 0.05
