"""Encoders of the Hugging Face hub by name (``hf:<org>/<name>``), loaded offline from a folder in the hub's layout.

The folder is written here by timm's own hub exporter from a small random-weight ViT, so it
holds exactly what a hub repository of a timm model holds: ``config.json`` and
``model.safetensors``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.features import check_extractor, create_extractor
from napari_histosge.features import hub as hub_module

ARCH = "vit_tiny_patch16_224"
ARGS = dict(img_size=32, patch_size=8)
MEAN, STD = [0.6, 0.4, 0.5], [0.2, 0.3, 0.25]


def write_hub_folder(folder: Path, global_pool: str = "token", safe: bool = True) -> Path:
    """A random-weight timm ViT saved as timm saves a model for the hub."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, global_pool=global_pool, **ARGS)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(folder), safe_serialization=safe,
                model_config={"pretrained_cfg": {"mean": MEAN, "std": STD}})
    return folder


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    return write_hub_folder(tmp_path_factory.mktemp("hub") / "tiny")


@pytest.fixture
def offline(monkeypatch):
    """No Hugging Face cache entry and no network."""
    monkeypatch.setattr(hub_module, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub_module, "cached_hub_folder", lambda repo: None)


def _own_features(folder: Path, patches: torch.Tensor) -> torch.Tensor:
    """What the network gives with the config's preprocessing, computed here without the library."""
    import timm
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"]).eval()
    model.load_state_dict(load_file(folder / "model.safetensors"))
    x = patches.permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model(x)


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["hf:", "hf-hub:"])
def test_a_hub_folder_loads_with_its_own_preprocessing(hub_dir, prefix) -> None:
    extractor = create_extractor(f"{prefix}org/tiny", checkpoint=str(hub_dir), device="cpu")
    assert extractor.input_size == 32 and extractor.mean == tuple(MEAN) and extractor.std == tuple(STD)
    patches = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    features = extractor.extract(patches)
    assert features.shape == (3, 192) and extractor.dim == 192
    torch.testing.assert_close(features, _own_features(hub_dir, patches), atol=1e-5, rtol=1e-5)
    assert "hf:org/tiny" in extractor.identity and "model.safetensors" in extractor.identity


@pytest.mark.slow
def test_a_pickled_weights_file_loads_and_is_checked_too(tmp_path) -> None:
    folder = write_hub_folder(tmp_path / "bin", safe=False)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    check_extractor("hf:org/tiny", str(folder))
    patches = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    extractor = create_extractor("hf:org/tiny", checkpoint=str(folder), device="cpu")
    features = extractor.extract(patches)
    assert features.shape == (2, 192)
    wider = _mismatched(folder, tmp_path)
    with pytest.raises(InputError, match="does not fit vit_small_patch16_224"):
        check_extractor("hf:org/tiny", str(wider))


@pytest.mark.slow
def test_the_feature_token_follows_the_config(hub_dir, tmp_path) -> None:
    """``global_pool`` of config.json chooses the feature: the class token, or the mean of the patch tokens."""
    averaged = tmp_path / "avg"
    shutil.copytree(hub_dir, averaged)
    config = json.loads((averaged / "config.json").read_text())
    config["global_pool"] = config["model_args"]["global_pool"] = "avg"
    config["model_args"]["fc_norm"] = False  # the same layers: only the pooling differs
    (averaged / "config.json").write_text(json.dumps(config))
    patches = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    token = create_extractor("hf:org/tiny", checkpoint=str(hub_dir), device="cpu")
    mean = create_extractor("hf:org/tiny", checkpoint=str(averaged), device="cpu")
    assert token.identity != mean.identity
    a, b = token.extract(patches), mean.extract(patches)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, _own_features(averaged, patches), atol=1e-5, rtol=1e-5)


def _without(hub_dir: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / f"no-{name}"
    shutil.copytree(hub_dir, folder)
    (folder / name).unlink()
    return folder


def _mismatched(hub_dir: Path, tmp_path: Path) -> Path:
    """The weights of the tiny ViT under a config naming a wider one."""
    folder = tmp_path / "mismatch"
    shutil.copytree(hub_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "vit_small_patch16_224"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _config_edited(hub_dir: Path, tmp_path: Path, name: str, **changes) -> Path:
    """The tiny ViT's folder with ``config.json`` entries replaced (``pretrained_cfg`` keys when nested)."""
    folder = tmp_path / name
    shutil.copytree(hub_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key in ("input_size", "mean", "std"):
            config.setdefault("pretrained_cfg", {})[key] = value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


REFUSALS = {
    "model_args a list": (lambda d, t: _config_edited(d, t, "args", model_args=["depth", 3]),
                          "model_args is not an object"),
    "input size a number": (lambda d, t: _config_edited(d, t, "size", input_size=224), "input_size must be a list"),
    "mean a number": (lambda d, t: _config_edited(d, t, "mean", mean=0.5), "mean must be three numbers"),
    "weights a file": (lambda d, t: d / "model.safetensors", "not a file"),
    "no config": (lambda d, t: _without(d, t, "config.json"), "has no config.json"),
    "no weights": (lambda d, t: _without(d, t, "model.safetensors"), "has no weights"),
    "mismatch": (_mismatched, "does not fit vit_small_patch16_224"),
    "no folder": (lambda d, t: t / "missing", "folder does not exist"),
    "not timm": (None, "not a timm model"),
}


def _folder_for(case: str, hub_dir: Path, tmp_path: Path) -> Path:
    if case == "not timm":  # a transformers model's config (Phikon-v2's kind)
        folder = tmp_path / "transformers"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": ["Dinov2Model"], "model_type": "dinov2"}))
        (folder / "model.safetensors").write_bytes(b"")
        return folder
    make = REFUSALS[case][0]
    assert make is not None
    return make(hub_dir, tmp_path)


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_hub_folders_are_refused_in_one_line(hub_dir, tmp_path, case) -> None:
    folder = _folder_for(case, hub_dir, tmp_path)
    with pytest.raises(InputError, match=REFUSALS[case][1]) as info:
        check_extractor("hf:org/tiny", str(folder))
    assert "\n" not in str(info.value)


def test_no_network_and_no_folder_is_refused(offline) -> None:
    with pytest.raises(InputError, match="hub cannot be reached.*--weights DIR") as info:
        check_extractor("hf:bioptimus/H-optimus-0", None)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="hf:<org>/<name>"):
        check_extractor("hf:H-optimus-0", None)


@pytest.fixture
def slide_never_read(monkeypatch):
    """Reading the section (spots or slide) fails the test."""
    import napari_histosge.io as io
    import napari_histosge.slide.open as slide_open

    def refuse(*_a, **_k):
        raise AssertionError("the data were read before the extractor was checked")

    monkeypatch.setattr(io, "read_spots", refuse)
    monkeypatch.setattr(slide_open, "open_slide", refuse)


@pytest.mark.parametrize("case", list(REFUSALS))
def test_cli_refuses_before_reading_the_data(hub_dir, tmp_path, demo_dir, case, capsys, slide_never_read) -> None:
    folder = _folder_for(case, hub_dir, tmp_path)
    status = main(["train", str(demo_dir), "--out", str(tmp_path / "m.pt"), "--extractor", "hf:org/tiny",
                   "--weights", str(folder), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and REFUSALS[case][1] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_cli_refuses_offline_without_a_folder(tmp_path, demo_dir, capsys, offline, slide_never_read) -> None:
    status = main(["train", str(demo_dir), "--out", str(tmp_path / "m.pt"), "--extractor",
                   "hf-hub:paige-ai/Virchow2", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "hub cannot be reached" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_trains_and_predicts_with_a_hub_folder(hub_dir, tmp_path, demo_dir, capsys) -> None:
    import anndata as ad

    from napari_histosge.models import load_model

    model = tmp_path / "m.pt"
    assert main(["train", str(demo_dir), "--out", str(model), "--extractor", "hf:org/tiny", "--weights",
                 str(hub_dir), "--epochs", "2", "--n-genes", "8", "--quiet"]) == 0
    loaded = load_model(model)
    assert loaded.meta.feature_identity.startswith("hf:org/tiny|")
    assert loaded.meta.features["checkpoint"] == str(hub_dir)
    out = tmp_path / "p.h5ad"
    assert main(["predict", str(model), str(demo_dir), "--out", str(out), "--quiet"]) == 0
    assert np.isfinite(np.asarray(ad.read_h5ad(out).X)).all()
