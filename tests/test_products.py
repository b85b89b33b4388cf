"""Products: a model declares what it makes, and one entry (library, CLI, widget) asks it.

The toy model here (a constant per gene) and its product (``centroids``: one position per few
spots) live in this file only: adding a model is its classes plus one registry line each, and
the library, the command line and the Super-resolve widget run it without another change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import napari_histosge as hs
from napari_histosge.cli import main
from napari_histosge.errors import InputError
from napari_histosge.models import registry
from napari_histosge.progress import Progress
from napari_histosge.settings import setting
from napari_histosge.training import config as training_config
from napari_histosge.training import products
from napari_histosge.training.config import TrainConfig, register_config
from napari_histosge.training.products import Product, ProductOptions, register_product
from napari_histosge.training.trained_model import TrainedModel

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_histosge"
TOY = "toy-constant"


@dataclass
class ToyConfig(TrainConfig):
    """The toy's settings: those every model shares."""

    MODEL = TOY


class ToyModel(TrainedModel):
    """A constant per gene, anywhere; it makes centroids of spot groups."""

    products = ("centroids",)


@dataclass
class CentroidOptions(ProductOptions):
    spots_per_centroid: int = setting(3, "spots averaged into one centroid", least=1)


def make_centroids(model, adata, options, *, scheduler=None, n_workers=None, cancel=None):
    """One position per ``spots_per_centroid`` spots (in obs order), each the model's constant."""
    import anndata as ad

    yield Progress("centroids", 0, 1)
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    groups = np.arange(len(xy)) // options.spots_per_centroid
    centres = np.stack([np.bincount(groups, xy[:, k]) / np.bincount(groups) for k in (0, 1)], axis=1)
    level = model.model.level.detach().cpu().numpy()
    out = ad.AnnData(X=np.tile(level, (len(centres), 1)).astype(np.float32))
    out.obs_names = [f"centroid_{i}" for i in range(len(centres))]
    out.var_names = model.genes
    out.obsm["spatial"] = centres
    out.uns["histosge"] = {**adata.uns.get("histosge", {}), "units": "log1p(counts per 1e4)", "model": TOY,
                           "fold": 1}
    yield Progress("centroids", 1, 1)
    return out


@pytest.fixture
def toy(tmp_path: Path):
    """The toy model registered (settings, spec, product), saved; everything unregistered afterwards."""
    import torch

    class ToyNetwork(torch.nn.Module):
        def __init__(self, in_dim: int, n_genes: int) -> None:
            super().__init__()
            self.level = torch.nn.Parameter(torch.linspace(0.5, 2.0, n_genes))

    register_config(ToyConfig)
    registry.register_model(registry.ModelSpec(name=TOY, network=ToyNetwork, trainer=None, trained_class=ToyModel,
                                               hparam_keys=()))
    register_product(Product(name="centroids", label="centroids of spot groups", help="one position per few spots",
                             options=CentroidOptions, run=make_centroids,
                             summary=lambda result: f"{result.n_obs} centroids"))
    genes = ["GENE0", "GENE1", "GENE2"]
    model = ToyModel(ToyNetwork(1, len(genes)), ToyConfig(), genes, {"in_dim": 1})
    path = tmp_path / "toy.pt"
    model.save(path)
    yield model, path
    products.unregister_product("centroids")
    registry._SPECS.pop(TOY, None)
    training_config._CONFIGS.pop(TOY, None)


def test_the_library_makes_a_models_own_product_by_default(toy, demo) -> None:
    model, _ = toy
    result = hs.superresolve(model, demo, spots_per_centroid=4)
    assert result.n_obs == -(-demo.n_obs // 4) and list(result.var_names) == model.genes
    np.testing.assert_allclose(result.X[0], model.model.level.detach().numpy(), rtol=1e-6)
    same = hs.superresolve(model, demo, product="centroids")  # asked by name, with its default option
    assert same.n_obs == -(-demo.n_obs // 3)


def test_a_product_the_model_does_not_make_is_one_line_naming_what_it_makes(toy, demo) -> None:
    model, _ = toy
    with pytest.raises(InputError, match=f"the {TOY} model makes centroids, not lattice"):
        hs.superresolve(model, demo, product="lattice")
    with pytest.raises(InputError, match="the centroids product takes spots_per_centroid, not fold"):
        hs.superresolve(model, demo, 4)  # the lattice's fold, positional
    with pytest.raises(InputError, match="spots_per_centroid must be an integer >= 1, got 0"):
        hs.superresolve(model, demo, spots_per_centroid=0)
    with pytest.raises(InputError, match="unknown product 'dots'; known: lattice, grid, cells, centroids"):
        hs.superresolve(model, demo, product="dots")


def test_the_cli_offers_and_runs_the_models_own_product(toy, demo_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import anndata as ad

    _, path = toy
    out = tmp_path / "centroids.h5ad"
    assert main(["superresolve", str(path), str(demo_dir), "--spots-per-centroid", "5", "--out", str(out),
                 "--quiet"]) == 0
    assert re.search(r"\d+ centroids x 3 genes -> ", capsys.readouterr().out)
    assert ad.read_h5ad(out).uns["histosge"]["model_path"] == str(path.resolve())
    # the lattice's option, refused in one line before the section is read: reading it now fails the test
    def no_reading(*args, **kwargs):
        raise AssertionError("the section was read before the options were refused")

    monkeypatch.setattr("napari_histosge.cli.prediction.read_section", no_reading)
    monkeypatch.setattr("napari_histosge.io.read_spots", no_reading)
    assert main(["superresolve", str(path), str(demo_dir), "--fold", "4", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "makes the centroids of spot groups (centroids): use --spots-per-centroid, not --fold" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["superresolve", str(path), str(demo_dir), "--product", "lattice", "--out", str(out)]) == 2
    assert f"the {TOY} model makes centroids, not lattice" in capsys.readouterr().err
    assert main(["superresolve", str(path), str(demo_dir), "--spots-per-centroid", "0", "--out", str(out)]) == 2
    assert "--spots-per-centroid must be an integer >= 1, got 0" in capsys.readouterr().err


def test_the_widget_offers_the_models_products_and_their_options(toy, make_napari_viewer, demo_dir: Path,
                                                                  qtbot) -> None:
    from napari_histosge.plugin.widgets.state import SESSION_MODELS, SessionModel
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget

    model, path = toy
    SESSION_MODELS.clear()
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = SuperResolveWidget(viewer)
    SESSION_MODELS.add(SessionModel("toy", model, path))
    try:
        assert widget.positions.value == "centroids" and list(widget.product_options.fields) == [
            "spots_per_centroid"]
        assert widget.positions.choices == ("centroids",)  # what this model makes, no other
        widget.option("spots_per_centroid").value = 6
        widget.run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        pred, _ = widget.last_outcome.value
        adata = widget._adata
        assert pred.n_obs == -(-adata.n_obs // 6) and pred.uns["histosge"]["model"] == TOY
    finally:
        SESSION_MODELS.clear()


def test_the_pipeline_asks_the_model_and_never_its_kind() -> None:
    """No kind flag or duck typing in pipeline/: what a model makes and how is declared and typed."""
    found = []
    for path in sorted((SRC / "pipeline").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"type: ignore\[attr-defined\]|aggregates_cells|getattr\(model\b|hasattr\(model\b"
                         r"|\.spots_from\s*(==|!=|\bin\b)|\[[\w.]*spots_from\]|SPOTS_FROM", line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_built_in_models_declare_their_products() -> None:
    from napari_histosge.models.conditioned.trained import ConditionedTrainedModel
    from napari_histosge.models.histosge_trained import HisToSGETrainedModel
    from napari_histosge.models.subspot.trained import SubspotModel

    assert HisToSGETrainedModel.products == ConditionedTrainedModel.products == ("lattice",)
    assert SubspotModel.products == ("grid", "cells") and SubspotModel.spots_from == "cells"


class PriorOnly(ToyModel):
    """Like a cellridge model: a prior for another model, no map of its own."""

    products = ()


def test_the_widget_refuses_a_model_that_makes_no_map(toy, make_napari_viewer, demo_dir: Path,
                                                     notifications) -> None:
    from napari_histosge.plugin.widgets.state import SESSION_MODELS, SessionModel
    from napari_histosge.plugin.widgets.superres import SuperResolveWidget

    model, _ = toy
    SESSION_MODELS.clear()
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = SuperResolveWidget(viewer)
    prior = PriorOnly(model.model, model.config, model.genes, model.meta)
    SESSION_MODELS.add(SessionModel("prior", prior, None))
    try:
        assert widget.positions.choices == ()
        widget.run()
        assert widget.worker is None
        assert notifications == [("error", "The chosen model makes no map of a section itself: choose another "
                                           "model.")]
    finally:
        SESSION_MODELS.clear()


@pytest.mark.parametrize("fold", [4.0, 1, 17])
def test_a_fold_that_is_not_an_integer_in_range_says_an_integer(fold) -> None:
    from napari_histosge.pipeline.products import LATTICE

    with pytest.raises(InputError, match=rf"^fold must be an integer between 2 and 16, got {fold!r}$"):
        LATTICE.make_options({"fold": fold})


class OwnSpots(ToyModel):
    """The toy, predicting spots its own way (a function registered under the name it gives)."""

    spots_from = "toy-constant-spots"


def constant_spots(model, adata, names, xy, positions, diameter, features, frame, *, scheduler, n_workers, cancel):
    """The model's constant at every position, no spread."""
    yield Progress("spots", 1, 1)
    return np.tile(model.model.level.detach().cpu().numpy(), (len(xy), 1)), None


def test_a_model_brings_its_own_spot_prediction_and_an_unknown_one_is_one_line(toy, demo) -> None:
    model, _ = toy
    own = OwnSpots(model.model, model.config, model.genes, replace(model.meta, spot_diameter_px=50.0))
    with pytest.raises(InputError, match=r"^the toy-constant model predicts spots from 'toy-constant-spots', which "
                                         r"no spot predictor is registered for; known: cells, features$"):
        hs.predict_spots(own, demo)
    products.register_spots("toy-constant-spots", constant_spots)
    try:
        spots = hs.predict_spots(own, demo, spot_ids=list(demo.obs_names[:4]))
    finally:
        products.unregister_spots("toy-constant-spots")
    assert spots.n_obs == 4 and "std" not in spots.layers
    np.testing.assert_allclose(spots.X, np.tile(model.model.level.detach().numpy(), (4, 1)), rtol=1e-6)


def _fresh_process(code: str) -> str:
    """The standard output of ``code`` run by this Python in a fresh process, with these sources first."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_superresolve_help_in_a_fresh_process_has_every_built_in_products_flags() -> None:
    """The flags are made when the parser is built: every built-in product is registered by then."""
    from napari_histosge.pipeline import products as builtin  # noqa: F401 - registers the built-in products
    from napari_histosge.settings import declared_fields

    built_in = [p for p in products.registered_products()
                if (p.run if isinstance(p.run, str) else p.run.__module__).startswith("napari_histosge.")]
    assert {"lattice", "grid"} <= {p.name for p in built_in}
    shown = " ".join(_fresh_process("from napari_histosge.cli import main\nmain(['superresolve', '--help'])"
                                    ).split())  # argparse wraps lines: compare words
    choices = re.search(r"--product \{([^}]*)\}", shown)
    assert choices is not None and {p.name for p in built_in} <= set(choices.group(1).split(","))
    assert "for histosge" not in shown and "for subspot" not in shown  # made from the products, naming no model
    for product in built_in:
        assert f"{product.name}, the {product.label}: {product.help}" in shown
        for f in declared_fields(product.options):
            assert f"--{f.name.replace('_', '-')}" in shown, f"{product.name}'s {f.name} has no flag"


def test_every_product_a_model_makes_is_on_the_command_line() -> None:
    """A product registered beside a trained class (loaded with torch, after the parser) would be missing."""
    import json

    found = json.loads(_fresh_process(
        "import json\n"
        "from napari_histosge.cli import build_parser\n"
        "from napari_histosge.training.products import registered_products\n"
        "build_parser()\n"
        "at_parser = [p.name for p in registered_products()]\n"
        "from napari_histosge import models\n"
        "made = {n: list(models.model_spec(n).trained_class.products) for n in models.model_names()}\n"
        "print(json.dumps({'at_parser': at_parser, 'made': made}))\n"))
    missing = {model: sorted(set(made) - set(found["at_parser"])) for model, made in found["made"].items()}
    assert not any(missing.values()), f"products not registered when the parser is built: {missing}"
    assert {"lattice", "grid"} <= set(found["at_parser"])
