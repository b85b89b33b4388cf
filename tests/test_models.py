"""Model registry, the HisToSGE model, and spot grouping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_histosge.errors import InputError
from napari_histosge.models import HisToSGE, available_models, create_model, register_model, registry
from napari_histosge.training.grouping import group_spots, pack_batches


def test_registry_lists_and_builds_histosge():
    assert "histosge" in available_models()
    model = create_model("histosge", in_dim=12, n_genes=9, dim=32, heads=4, head_hidden=64)
    assert isinstance(model, HisToSGE)
    with pytest.raises(InputError, match="unknown model 'nope'.*histosge"):
        create_model("nope", in_dim=12, n_genes=9)
    with pytest.raises(InputError, match="bad settings"):
        create_model("histosge", in_dim=12, n_genes=9, bogus=1)


def test_register_model_adds_a_class(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("tiny-linear")
    class Tiny(nn.Module):
        def __init__(self, *, in_dim, n_genes):
            super().__init__()
            self.lin = nn.Linear(in_dim, n_genes)

    assert "tiny-linear" in available_models()
    assert isinstance(create_model("tiny-linear", in_dim=3, n_genes=2), Tiny)


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
    assert all(np.array_equal(a, b) for a, b in zip(spatial, group_spots(pos, 25)))
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
