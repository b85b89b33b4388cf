"""Model registry, the HisToSGE model, and spot grouping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from napari_histosge.errors import InputError
from napari_histosge.models import (
    HisToSGE,
    HisToSGEConfig,
    ModelSpec,
    create_model,
    load_model,
    model_hparams,
    model_names,
    model_spec,
    register_model,
    registry,
    train,
    train_config,
)
from napari_histosge.progress import run_to_end
from napari_histosge.training import config as training_config
from napari_histosge.training.config import redefault, register_config
from napari_histosge.training.engine import EpochHooks, run_epochs
from napari_histosge.training.grouping import group_spots, pack_batches
from napari_histosge.training.inputs import ModelInputs, TrainingData
from napari_histosge.training.model_meta import ModelMeta
from napari_histosge.training.trained_model import TrainedModel


def test_registry_lists_and_builds_histosge():
    assert {"histosge", "conditioned"} <= set(model_names())
    model = create_model("histosge", in_dim=12, n_genes=9, dim=32, heads=4, head_hidden=64)
    assert isinstance(model, HisToSGE)
    with pytest.raises(InputError, match="unknown model 'nope'.*histosge"):
        create_model("nope", in_dim=12, n_genes=9)
    with pytest.raises(InputError, match="bad settings"):
        create_model("histosge", in_dim=12, n_genes=9, bogus=1)
    with pytest.raises(InputError, match="unknown model 'nope'"):
        train_config("nope")


def test_train_config_takes_the_models_defaults_then_the_given_settings():
    conditioned = model_spec("conditioned")
    config = train_config("conditioned", epochs=None, lr=3e-3)
    assert config.model == "conditioned" and config.lr == 3e-3
    assert isinstance(config, conditioned.config_class)
    # Its own defaults where they differ from HisToSGE's, HisToSGE's elsewhere.
    assert (config.epochs, config.batch_size, config.neighbours, config.distill) == (20, 256, 32, False)
    assert config.dim == HisToSGEConfig().dim
    assert train_config("histosge") == HisToSGEConfig()
    assert set(model_hparams(config)) == set(conditioned.hparam_keys)
    with pytest.raises(InputError, match="epochs"):
        train_config("conditioned", epochs=0)


class _TinyNetwork(nn.Module):
    """One linear map from each spot's input row to its genes."""

    def __init__(self, *, in_dim: int, n_genes: int, dim: int = 4) -> None:
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(in_dim, dim), nn.Linear(dim, n_genes))

    def forward(self, x):
        return self.lin(x)


class _TinyTrained(TrainedModel):
    """Its own inputs (the normalised image columns and unit position) and forward passes."""

    def prediction_inputs(self, features, mean_rgb, positions, *, frame=None):
        return (self._inputs()(features, mean_rgb, positions)[0],)

    def predict_planned(self, rows, batches, *, first_batch=0):
        (x,), out = rows, np.zeros((len(rows[0]), len(self.genes)), np.float32)
        with torch.no_grad():
            for index, mask in batches:
                out[index[~mask]] = self.model(torch.from_numpy(x[index[~mask]])).numpy()
        return out, None


def _train_tiny(data, config, *, checkpoint_path=None, resume=None, meta=None, cancel=None):
    """A whole trainer in a few lines: the shared loop does the epochs, checkpoints and history."""
    inputs = ModelInputs.fit(data.features, data.mean_rgb, data.positions, config.n_pos_bins)
    network = create_model("tiny", in_dim=data.features.shape[1] + 5, n_genes=len(data.genes),
                           **model_hparams(config))
    optimizer = torch.optim.SGD(network.parameters(), lr=config.lr)
    x, _ = inputs(data.features, data.mean_rgb, data.positions)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(data.targets)

    def fit_epoch(epoch: int) -> float:
        loss = torch.nn.functional.mse_loss(network(x_t), y_t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    record = ModelMeta.of(meta)
    inputs.record(record)
    record.in_dim, record.n_features = x.shape[1], x.shape[1] - 5
    trained = _TinyTrained(network, config, data.genes, record)
    hooks = EpochHooks(model=network, fit_epoch=fit_epoch, optimizer_state=optimizer.state_dict)
    yield from run_epochs(hooks, trained, epochs=config.epochs, checkpoint_path=checkpoint_path)
    return trained


@dataclass
class _TinyConfig(HisToSGEConfig):
    """A model's settings: HisToSGE's (its trained class predicts as the base does), other defaults."""

    MODEL = "tiny"

    epochs: int = redefault(HisToSGEConfig, "epochs", 3)
    lr: float = redefault(HisToSGEConfig, "lr", 0.05)
    group_size: int = redefault(HisToSGEConfig, "group_size", 8)


def test_a_registered_model_trains_saves_and_loads_through_the_registry(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.setattr(training_config, "_CONFIGS", dict(training_config._CONFIGS))
    register_config(_TinyConfig)
    spec = register_model(ModelSpec(name="tiny", network=_TinyNetwork, trainer=_train_tiny,
                                    trained_class=_TinyTrained, hparam_keys=("dim",)))
    assert "tiny" in model_names() and model_spec("tiny") is spec
    rng = np.random.default_rng(0)
    pos = np.stack(np.meshgrid(np.arange(6), np.arange(5)), -1).reshape(-1, 2) * 100.0
    data = TrainingData(rng.normal(size=(30, 2)), rng.uniform(size=(30, 3)), pos, rng.uniform(size=(30, 3)),
                        [f"s{i}" for i in range(30)], ["a", "b", "c"])
    config = train_config("tiny", dim=8, device="cpu")
    assert isinstance(config, _TinyConfig) and (config.epochs, config.lr, config.group_size) == (3, 0.05, 8)
    model = run_to_end(train(data, config, checkpoint_path=tmp_path / "tiny.pt", meta={"note": "x"}))
    assert isinstance(model, _TinyTrained) and len(model.meta.history) == 3
    loaded = load_model(tmp_path / "tiny.pt", device="cpu")
    assert type(loaded) is _TinyTrained and loaded.config == config and loaded.meta.extra["note"] == "x"
    assert loaded.model.lin[0].out_features == 8  # built with the saved constructor settings
    np.testing.assert_array_equal(loaded.predict(data.features, data.mean_rgb, pos),
                                  model.predict(data.features, data.mean_rgb, pos))
    # A checkpoint of a model this installation does not have says so, naming the file.
    monkeypatch.setattr(registry, "_SPECS", {k: v for k, v in registry._SPECS.items() if k != "tiny"})
    with pytest.raises(InputError, match="tiny.pt.*unknown model 'tiny'"):
        load_model(tmp_path / "tiny.pt", device="cpu")


def test_register_model_refuses_a_taken_name_and_unknown_settings(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.setattr(training_config, "_CONFIGS", dict(training_config._CONFIGS))
    register_config(dataclass(type("_Tiny2Config", (HisToSGEConfig,), {"MODEL": "tiny2", "__annotations__": {}})))
    tiny = ModelSpec(name="histosge", network=_TinyNetwork, trainer=_train_tiny, trained_class=_TinyTrained,
                     hparam_keys=("dim",))
    with pytest.raises(ValueError, match="already registered"):
        register_model(tiny)
    with pytest.raises(ValueError, match="not_a_setting"):
        register_model(ModelSpec(name="tiny2", network=_TinyNetwork, trainer=_train_tiny,
                                 trained_class=_TinyTrained, hparam_keys=("dim", "not_a_setting")))
    assert "tiny2" not in model_names()


def test_histosge_forward_shape_nonnegative_and_padding_ignored():
    torch.manual_seed(0)
    model = create_model("histosge", in_dim=10, n_genes=7, dim=32, heads=4, head_hidden=64, n_pos_bins=8).eval()
    x = torch.randn(3, 6, 10)
    bins = torch.randint(0, 8, (3, 6, 2))
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1, 4:] = True
    out = model(x, bins, mask)
    assert out.shape == (3, 6, 7)
    assert (out >= 0).all()
    # Changing what sits in padded slots must not change the real spots' predictions.
    x2 = x.clone()
    x2[1, 4:] = 100.0
    with torch.no_grad():
        np.testing.assert_allclose(model(x2, bins, mask)[1, :4], out[1, :4].detach(), atol=1e-5)
    # Attention makes a spot depend on the other spots in its group.
    x3 = x.clone()
    x3[0, 1:] += 1.0
    assert not torch.allclose(model(x3, bins, mask)[0, 0], out[0, 0])


def test_histosge_starts_from_positions_only_and_learns_the_image():
    torch.manual_seed(0)
    model = create_model("histosge", in_dim=10, n_genes=4, dim=32, heads=4, head_hidden=64, n_pos_bins=8)
    x = torch.randn(2, 5, 10)
    bins = torch.randint(0, 8, (2, 5, 2))
    other_image = x.clone()
    other_image[..., :8] = torch.randn(2, 5, 8)  # every column before x, y comes from the image
    with torch.no_grad():
        torch.testing.assert_close(model(other_image, bins), model(x, bins))
    moved = x.clone()
    moved[..., 8:] += 0.5
    assert not torch.allclose(model(moved, bins), model(x, bins))  # positions do count from the start
    # Training pulls the image in where it predicts the target.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = nn.functional.mse_loss(model(x, bins), x[..., :4].abs())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(other_image, bins), model(x, bins))
    torch.manual_seed(0)
    default_init = create_model("histosge", in_dim=10, n_genes=4, dim=32, heads=4, head_hidden=64, n_pos_bins=8,
                                image_init=1.0)
    with torch.no_grad():
        assert not torch.allclose(default_init(other_image, bins), default_init(x, bins))


def test_histosge_rejects_bad_settings():
    with pytest.raises(InputError, match="divisible"):
        create_model("histosge", in_dim=5, n_genes=3, dim=30, heads=4)
    with pytest.raises(InputError, match="at least 1"):
        create_model("histosge", in_dim=5, n_genes=0)
    with pytest.raises(InputError, match="dropout"):
        create_model("histosge", in_dim=5, n_genes=3, dropout=1.5)
    with pytest.raises(InputError, match="image_init"):
        create_model("histosge", in_dim=5, n_genes=3, image_init=-1.0)
    for rank in (0, 2.0, True):
        with pytest.raises(InputError, match="head_rank"):
            create_model("histosge", in_dim=5, n_genes=3, head_rank=rank)


def _grid(n_side: int = 20) -> np.ndarray:
    ys, xs = np.mgrid[0:n_side, 0:n_side]
    return np.c_[xs.ravel(), ys.ravel()].astype(float) * 100.0


@pytest.mark.parametrize("mode", ["spatial", "file_order"])
@pytest.mark.parametrize("group_size", [1, 7, 50, 1000])
def test_every_spot_in_exactly_one_group(mode, group_size):
    pos = _grid()
    groups = group_spots(pos, group_size, mode=mode, rng=np.random.default_rng(1))
    all_idx = np.concatenate(groups)
    assert sorted(all_idx.tolist()) == list(range(len(pos)))
    assert max(len(g) for g in groups) <= group_size
    assert len(groups) == -(-len(pos) // group_size)


def test_spatial_groups_are_compact_and_augmentation_changes_them():
    pos = _grid()
    rng = np.random.default_rng(0)
    spatial = group_spots(pos, 25)
    shuffled = group_spots(pos[rng.permutation(len(pos))], 25, mode="file_order")

    def spread(groups, p):
        return np.mean([np.ptp(p[g], axis=0).sum() for g in groups])

    assert spread(spatial, pos) < 0.3 * spread(shuffled, pos[rng.permutation(len(pos))])
    # Deterministic without rng; different with a random rotation.
    assert all(np.array_equal(a, b) for a, b in zip(spatial, group_spots(pos, 25), strict=True))
    rotated = group_spots(pos, 25, rng=np.random.default_rng(5))
    assert {tuple(g) for g in rotated} != {tuple(g) for g in spatial}


def test_file_order_is_consecutive_chunks():
    groups = group_spots(np.zeros((10, 2)), 4, mode="file_order")
    assert [g.tolist() for g in groups] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_grouping_rejects_bad_input():
    with pytest.raises(InputError, match="group_size"):
        group_spots(_grid(), 0)
    with pytest.raises(InputError, match="grouping"):
        group_spots(_grid(), 5, mode="random")
    with pytest.raises(InputError, match=r"shape \(n, 2\)"):
        group_spots(np.zeros((4, 3)), 5)


def test_pack_batches_respects_batch_size_and_pads():
    groups = group_spots(_grid(), 30)
    batches = pack_batches(groups, 100)
    seen = []
    for index, mask in batches:
        assert index.shape == mask.shape
        assert (~mask).sum() <= 100
        seen.extend(index[~mask].tolist())
    assert sorted(seen) == list(range(400))
    # A group larger than the batch gets its own batch.
    assert len(pack_batches([np.arange(10), np.arange(10, 12)], 4)) == 2


def test_output_choices() -> None:
    import torch

    from napari_histosge.errors import InputError
    from napari_histosge.models import create_model

    x = torch.randn(2, 5, 13)
    bins = torch.zeros(2, 5, 2, dtype=torch.long)
    relu = create_model("histosge", in_dim=13, n_genes=7, dim=16, head_hidden=16, output="relu")
    soft = create_model("histosge", in_dim=13, n_genes=7, dim=16, head_hidden=16)
    assert (relu(x, bins) >= 0).all() and (soft(x, bins) > 0).all()
    with pytest.raises(InputError, match="output"):
        create_model("histosge", in_dim=13, n_genes=7, output="tanh")
