"""The Train widget's model section is built from the chosen model's declared settings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from napari_histosge.errors import InputError
from napari_histosge.models import HisToSGEConfig, model_names, registry, train_config
from napari_histosge.models.registry import ModelSpec, register_model
from napari_histosge.plugin.widgets.settings_form import control_value
from napari_histosge.plugin.widgets.state import SESSION_MODELS
from napari_histosge.plugin.widgets.train import FORM_SETTINGS, TrainWidget
from napari_histosge.training import config as training_config
from napari_histosge.training.config import TrainConfig, config_class, register_config, setting, setting_of
from napari_histosge.training.trained_model import TrainedModel

WORKER_TIMEOUT_MS = 120_000



def test_every_declared_setting_of_every_model_appears_with_the_librarys_default(make_napari_viewer):
    widget = TrainWidget(make_napari_viewer())
    assert widget.n_genes.value == TrainConfig.default_of("n_top_genes")  # the genes section: the library's too
    assert widget.device.value == TrainConfig.default_of("device")
    for model in model_names():
        widget.model_name.value = model
        cls = config_class(model)
        shown = [c.name for c in widget.model_settings]
        assert shown == [f.name for f in fields(cls) if f.name not in FORM_SETTINGS], model
        for f in fields(cls):
            if f.name in FORM_SETTINGS:
                continue
            spec, control = setting_of(f), widget.model_settings.control(f.name)
            assert control_value(f.name, spec, control) == cls.default_of(f.name), (model, f.name)
            assert control.tooltip.startswith(spec.help), (model, f.name)
        # Left alone, the form gives the library's settings of the model, nothing of its own.
        assert widget.model_settings.given_values() == {}
        assert widget.train_config() == cls(**cls.implied({}))


def test_a_typed_value_reaches_the_config_and_a_bad_one_is_one_line(make_napari_viewer, demo_dir, notifications):
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = TrainWidget(viewer)
    form = widget.model_settings
    form.control("dim").value = 128
    form.control("output").value = "relu"
    form.control("lr").value = "5e-4"
    form.control("head_rank").value = "8"
    form.control("average_from").value = ""  # empty: None, the default
    config = widget.train_config()
    assert (config.dim, config.output, config.lr, config.head_rank, config.average_from) == (
        128, "relu", 5e-4, 8, None)
    assert config.schedule_epochs == HisToSGEConfig.default_of("schedule_epochs")  # epochs left alone
    widget.epochs.value = 7  # typed epochs run as typed (HisToSGEConfig.implied), as --epochs
    assert (widget.train_config().epochs, widget.train_config().schedule_epochs) == (7, None)
    # A setting shared with the next model keeps its typed value; the model's own defaults come with it.
    widget.model_name.value = "conditioned"
    assert widget.train_config().lr == 5e-4 and widget.train_config().neighbours == 32
    form.control("lr").value = "fast"
    with pytest.raises(InputError, match="training setting lr must be a number > 0, got 'fast'"):
        widget.train_config()
    form.control("lr").value = "-1"
    widget.start()
    assert widget.worker is None
    [(kind, message)] = [n for n in notifications if n[0] == "error"]
    assert kind == "error" and message == "training setting lr must be a number > 0, got -1.0"


@dataclass
class _ToyConfig(TrainConfig):
    """A model's settings of every kind a form shows."""

    MODEL = "toy"

    width: int = setting(7, "toy width", least=2)
    rate: float = setting(0.25, "toy rate", least=0, most=1)
    smooth: bool = setting(True, "toy switch")
    style: str = setting("b", "toy style", choices=("a", "b"))
    prior: str | None = setting(None, "a file the toy starts from", kind=Path, optional=True, none_means="none")
    rank: int | None = setting(None, "toy rank", kind=int, optional=True, none_means="full", least=1)


def test_a_registered_model_shows_its_own_settings_without_editing_the_widget(make_napari_viewer, monkeypatch,
                                                                             tmp_path):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.setattr(training_config, "_CONFIGS", dict(training_config._CONFIGS))
    register_config(_ToyConfig)
    register_model(ModelSpec(name="toy", network=object, trainer=None, trained_class=TrainedModel, hparam_keys=()))
    widget = TrainWidget(make_napari_viewer())
    widget.model_name.value = "toy"
    form = widget.model_settings
    assert [c.name for c in form][-6:] == ["width", "rate", "smooth", "style", "prior", "rank"]
    assert (form.control("width").min, form.control("width").value) == (2, 7)
    assert form.control("prior").tooltip == "a file the toy starts from"
    prior = tmp_path / "prior.txt"
    prior.write_text("x")
    form.control("prior").value = str(prior)
    form.control("smooth").value = False
    form.control("style").value = "a"
    form.control("rank").value = "3"
    config = widget.train_config()
    assert isinstance(config, _ToyConfig)
    assert (config.prior, config.smooth, config.style, config.rank, config.rate) == (str(prior), False, "a", 3, 0.25)
    widget.model_name.value = "histosge"  # another model: the toy's controls go
    assert "width" not in [c.name for c in form] and "dim" in [c.name for c in form]


def test_a_run_from_a_model_of_other_network_settings_trains(make_napari_viewer, demo_dir, demo, qtbot, tmp_path,
                                                            notifications):
    """The Train widget gave the start model's run the default network: a non-default model failed."""
    from napari_histosge.features import FeatureConfig
    from napari_histosge.pipeline.steps import fit
    from napari_histosge.progress import run_to_end

    prior_path = tmp_path / "prior.pt"
    small = train_config(epochs=2, n_top_genes=10, dim=32, head_hidden=32, val_fraction=0.0)
    run_to_end(fit(demo, train_config=small, feature_config=FeatureConfig(extractor="none"),
                   checkpoint_path=prior_path))
    SESSION_MODELS.clear()
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir), plugin="napari-histosge")
    widget = TrainWidget(viewer)
    widget.out_dir.value = str(tmp_path)
    widget.extractor.value = "none"
    widget.epochs.value = 1
    widget.init.value = str(prior_path)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.last_outcome.error is None, widget.last_outcome.error
    model = widget.last_model
    assert (model.config.dim, model.config.head_hidden) == (32, 32) and model.meta.init["path"] == str(prior_path)
    SESSION_MODELS.clear()


def test_a_setting_typed_is_given_even_at_its_default_and_a_start_models_are_shown_not_given(
        make_napari_viewer, demo, qtbot, tmp_path):
    """Typed epochs equal to the default run as typed (as --epochs 1000); a typed width overrides the start model's."""
    from napari_histosge.features import FeatureConfig
    from napari_histosge.models import load_model
    from napari_histosge.pipeline.run_settings import run_settings
    from napari_histosge.pipeline.steps import fit
    from napari_histosge.progress import run_to_end

    widget = TrainWidget(make_napari_viewer())
    default = HisToSGEConfig.default_of("epochs")
    widget.epochs.value = 5
    widget.epochs.value = default  # the user typed the default: given
    assert widget.model_settings.given_values() == {"epochs": default}
    assert (widget.train_config().epochs, widget.train_config().schedule_epochs) == (default, None)
    prior_path = tmp_path / "prior.pt"
    run_to_end(fit(demo, train_config=train_config(epochs=1, n_top_genes=10, dim=32, head_hidden=32,
                                                   val_fraction=0.0),
                   feature_config=FeatureConfig(extractor="none"), checkpoint_path=prior_path))
    prior = load_model(prior_path, device="cpu")
    widget.init.value = str(prior_path)
    # the start model's network settings are shown, and are not edits
    qtbot.waitUntil(lambda: widget.model_settings.control("dim").value == 32, timeout=WORKER_TIMEOUT_MS)
    assert widget.model_settings.control("head_hidden").value == 32 and "dim" not in widget.model_settings.edited
    assert run_settings("histosge", widget.given_settings(), prior).dim == 32
    widget.model_settings.control("dim").value = 64
    widget.model_settings.control("dim").value = HisToSGEConfig.default_of("dim")  # typed: it wins
    assert run_settings("histosge", {**widget.given_settings(), "heads": 4}, prior).dim == HisToSGEConfig.default_of(
        "dim")
    widget.init.value = ""  # no start model: the defaults again, the typed width kept
    assert widget.model_settings.control("head_hidden").value == HisToSGEConfig.default_of("head_hidden")
    assert widget.model_settings.control("dim").value == HisToSGEConfig.default_of("dim")


def test_a_setting_in_micrometres_is_labelled_in_micrometres() -> None:
    from napari_histosge.plugin.widgets.settings_form import _label

    assert (_label("grid_um"), _label("expand_um"), _label("n_top_genes"), _label("um")) == (
        "grid µm", "expand µm", "n top genes", "um")
