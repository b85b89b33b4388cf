"""Starting a run from a trained model (``--init``): fine-tuning a model trained on other sections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig
from napari_histosge.models import load_model, train_config
from napari_histosge.pipeline.recovery import recover
from napari_histosge.pipeline.steps import NO_IMAGE, fit
from napari_histosge.progress import run_to_end

FAST = dict(epochs=3, n_top_genes=10, head_hidden=32, dim=32, val_fraction=0.0)


@pytest.fixture(scope="module")
def prior_path(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on one half of the section (standing in for other sections)."""
    path = tmp_path_factory.mktemp("prior") / "prior.pt"
    half = list(demo.obs_names[: demo.n_obs // 2])
    run_to_end(fit(demo, train_config=train_config(**FAST), train_ids=half, checkpoint_path=path))
    return path


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.model.state_dict().items()}


def test_a_run_from_a_model_starts_from_its_weights_and_says_so(demo, prior_path):
    prior = load_model(prior_path, device="cpu")
    other = list(demo.obs_names[demo.n_obs // 2:])
    # A learning rate near zero: after one epoch the weights are still the prior's.
    tuned = run_to_end(fit(demo, train_config=train_config(**{**FAST, "epochs": 1, "lr": 1e-12}),
                           train_ids=other, init=prior))
    assert tuned.genes == prior.genes
    start, now = _weights(prior), _weights(tuned)
    assert all(np.allclose(start[k], now[k], atol=1e-6) for k in start)
    assert tuned.meta.init["path"] == str(prior_path) and tuned.meta.init["model"] == "histosge"
    fresh = run_to_end(fit(demo, train_config=train_config(**{**FAST, "epochs": 1, "lr": 1e-12}), train_ids=other))
    assert not all(np.allclose(start[k], v, atol=1e-6) for k, v in _weights(fresh).items())


def test_recovery_from_a_model_scores_its_genes(demo, prior_path):
    prior = load_model(prior_path, device="cpu")
    result = run_to_end(recover(demo, holdout=0.5, seed=1, train_config=train_config(**FAST), init=prior))
    assert result.scored_genes == prior.genes
    assert np.isfinite(result.summary()["model"]["mean_pcc"])


def test_a_model_that_cannot_start_a_run_is_refused_clearly(demo, prior_path):
    prior = load_model(prior_path, device="cpu")
    with pytest.raises(InputError, match="subspot model cannot start from a trained model"):
        run_to_end(fit(demo, train_config=train_config("subspot"), init=prior))
    with pytest.raises(InputError, match="reads 'default' features, not 'none'"):
        run_to_end(fit(demo, train_config=train_config(**FAST), feature_config=FeatureConfig(extractor=NO_IMAGE),
                       init=prior))
    with pytest.raises(InputError, match="other network settings"):
        run_to_end(fit(demo, train_config=train_config(**{**FAST, "dim": 64}), init=prior))
    fewer = demo[:, [g for g in demo.var_names if g != prior.genes[0]]].copy()
    with pytest.raises(InputError, match=r"1 of the model's 10 genes are not in the data"):
        run_to_end(fit(fewer, train_config=train_config(**FAST), init=prior))


def test_the_cli_fine_tunes_from_init_and_refuses_init_with_resume(demo_dir, prior_path, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    assert main(["train", str(demo_dir), "--out", str(out), "--init", str(prior_path), "--epochs", "1",
                 "--val-fraction", "0", "--quiet"]) == 0
    tuned = load_model(out, device="cpu")
    assert tuned.meta.init["path"] == str(prior_path)
    assert tuned.config.dim == 32  # the init model's network settings, not the defaults
    assert main(["train", str(demo_dir), "--out", str(tmp_path / "x.pt"), "--init", str(prior_path),
                 "--resume", str(out)]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["recover", str(demo_dir), "--out", str(tmp_path / "r.h5ad"), "--init", str(tmp_path / "no.pt")]) == 2


def test_recover_with_a_prior_names_the_model_it_saved(demo_dir, prior_path, tmp_path):
    import anndata as ad

    out, saved = tmp_path / "hidden.h5ad", tmp_path / "tuned.pt"
    assert main(["recover", str(demo_dir), "--out", str(out), "--save-model", str(saved), "--init", str(prior_path),
                 "--epochs", "1", "--quiet"]) == 0
    info = ad.read_h5ad(out).uns["histosge"]
    assert info["model_path"] == str(saved.resolve())
    assert load_model(saved, device="cpu").meta.init["path"] == str(prior_path)


CONDITIONED_FAST = dict(epochs=1, histosge_epochs=1, histosge_members=2, n_top_genes=10, val_fraction=0.2)


@pytest.mark.slow
def test_the_conditioned_model_starts_its_image_companion_from_the_model(demo, prior_path):
    prior = load_model(prior_path, device="cpu")
    config = train_config("conditioned", **{**CONDITIONED_FAST, "lr": 1e-12})
    tuned = run_to_end(fit(demo, train_config=config, init=prior))
    assert tuned.genes == prior.genes and tuned.meta.init["path"] == str(prior_path)
    start = _weights(prior)
    assert len(tuned.model.histosge) == 2
    for member in tuned.model.histosge:  # each member starts from the prior (a learning rate near zero)
        now = {k: v.detach().cpu().numpy() for k, v in member.state_dict().items()}
        assert all(np.allclose(start[k], now[k], atol=1e-6) for k in start)
    assert all(m["meta"]["init"]["path"] == str(prior_path) for m in tuned.meta.histosge["members"])
    fresh = run_to_end(fit(demo, train_config=train_config("conditioned", **{**CONDITIONED_FAST, "lr": 1e-12,
                                                                          "dim": 32, "head_hidden": 32})))
    now = {k: v.detach().cpu().numpy() for k, v in fresh.model.histosge[0].state_dict().items()}
    assert fresh.meta.init is None and not all(np.allclose(start[k], now[k], atol=1e-6) for k in start)


@pytest.mark.slow
def test_the_conditioned_model_refuses_a_start_it_cannot_use(demo, prior_path, tmp_path):
    prior = load_model(prior_path, device="cpu")
    with pytest.raises(InputError, match="trains no image companion"):
        run_to_end(fit(demo, train_config=train_config("conditioned", **CONDITIONED_FAST, histosge_weight=0),
                       init=prior))
    path = tmp_path / "conditioned.pt"
    run_to_end(fit(demo, train_config=train_config("conditioned", **CONDITIONED_FAST), checkpoint_path=path))
    with pytest.raises(InputError, match="from a histosge model, not a conditioned model"):
        run_to_end(fit(demo, train_config=train_config("conditioned", **CONDITIONED_FAST),
                       init=load_model(path, device="cpu")))


@pytest.mark.slow
def test_the_cli_recovers_with_the_conditioned_model_from_a_prior(demo_dir, prior_path, tmp_path):
    import anndata as ad

    out, saved = tmp_path / "hidden.h5ad", tmp_path / "tuned.pt"
    assert main(["recover", str(demo_dir), "--model", "conditioned", "--out", str(out), "--save-model", str(saved),
                 "--init", str(prior_path), "--epochs", "1", "--histosge-epochs", "1", "--histosge-members", "1",
                 "--quiet"]) == 0
    tuned = load_model(saved, device="cpu")
    assert tuned.config.model == "conditioned" and tuned.meta.init["path"] == str(prior_path)
    assert list(ad.read_h5ad(out).var_names) == tuned.genes


def test_the_library_keeps_the_start_models_network_settings_unless_given(demo, prior_path, monkeypatch):
    """The rule --init had alone: a run from a model takes its network settings, for every caller."""
    import napari_histosge.pipeline.steps as steps
    from napari_histosge import fit as plain_fit
    from napari_histosge.pipeline.run_settings import run_settings

    prior = load_model(prior_path, device="cpu")
    config = run_settings("histosge", {"epochs": 1, "val_fraction": 0.0, "lr": None}, prior)
    assert (config.dim, config.head_hidden, config.epochs, config.schedule_epochs) == (32, 32, 1, None)
    assert run_settings("histosge", {"dim": 64, "heads": 4}, prior).dim == 64  # a given setting wins
    assert run_settings("histosge", {}) == train_config()
    # napari_histosge.fit without settings starts from the model's network (it refused before: other settings);
    # its default 1000 epochs cut to 3 for speed, on the same path
    monkeypatch.setattr(steps, "run_settings", lambda model, given, init: run_settings(model, {**given, "epochs": 3},
                                                                                       init))
    tuned = plain_fit(demo, init=prior)
    assert (tuned.config.dim, tuned.config.head_hidden) == (32, 32) and tuned.genes == prior.genes


def test_a_run_from_a_model_takes_its_network_settings_unless_given_to_every_entry(demo, prior_path):
    """recover and fit with a start model whose network is not the default: settings left out are the model's."""
    from napari_histosge.models import HisToSGEConfig

    prior = load_model(prior_path, device="cpu")
    quick = {"epochs": 1, "val_fraction": 0.0}
    recovered = run_to_end(recover(demo, holdout=0.5, init=prior, train_config=train_config(**quick)))
    assert (recovered.model.config.dim, recovered.model.config.head_hidden) == (32, 32)
    from napari_histosge import fit as plain_fit

    tuned = plain_fit(demo, train_config=train_config(**quick), init=prior)
    assert (tuned.config.dim, tuned.config.head_hidden, tuned.config.epochs) == (32, 32, 1)
    # settings built from the class: those at its defaults are not given either
    tuned = run_to_end(fit(demo, train_config=HisToSGEConfig(**quick), init=prior))
    assert (tuned.config.dim, tuned.config.head_hidden, tuned.config.epochs) == (32, 32, 1)
    # a network setting given (even the default's value) wins, and is refused before any feature is read
    events: list = []
    gen = recover(demo, holdout=0.5, init=prior, train_config=train_config(dim=256, **quick))
    with pytest.raises(InputError, match="other network settings"):
        while True:
            events.append(next(gen))
    assert events == []


def test_recover_from_a_model_without_settings_runs_with_its_network(demo, prior_path, monkeypatch):
    import napari_histosge.pipeline.recovery as recovery

    prior = load_model(prior_path, device="cpu")
    settings = recovery.run_settings  # the path without settings, its default 1000 epochs cut to 3 for speed
    monkeypatch.setattr(recovery, "run_settings", lambda model, given, init: settings(model, {**given, "epochs": 3},
                                                                                      init))
    result = run_to_end(recover(demo, holdout=0.5, init=prior))
    assert (result.model.config.dim, result.model.config.head_hidden) == (32, 32)
    assert result.scored_genes == prior.genes
