"""Training settings: declared once per model, checked from the declarations, stored and read back."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from napari_histosge.cli import settings as cli_settings
from napari_histosge.cli.main import build_parser
from napari_histosge.errors import InputError
from napari_histosge.io.preprocess import GENE_METHODS
from napari_histosge.models import CellRidgeConfig, ConditionedConfig, HisToSGEConfig, SubspotConfig
from napari_histosge.training.config import (
    GENE_SELECTIONS,
    TrainConfig,
    config_from_dict,
    config_names,
    make_config,
    setting_names,
    setting_of,
)
from napari_histosge.training.grouping import GROUPING_MODES

REPO = Path(__file__).resolve().parents[1]


def test_every_model_has_a_settings_class_and_the_shared_settings():
    assert config_names() == ["cellridge", "conditioned", "histosge", "subspot"]
    for cls in (HisToSGEConfig, ConditionedConfig, SubspotConfig, CellRidgeConfig):
        assert issubclass(cls, TrainConfig)
        assert {f.name for f in TrainConfig.own_fields()} <= setting_names(cls)
    assert "neighbours" not in setting_names(HisToSGEConfig) and "dim" not in setting_names(SubspotConfig)
    assert "MODEL" not in setting_names(HisToSGEConfig)
    assert GENE_SELECTIONS == GENE_METHODS  # the light copy agrees with the library's


def test_the_shared_class_alone_is_no_model():
    with pytest.raises(InputError, match="settings every model shares"):
        TrainConfig()


@pytest.mark.parametrize(("cls", "change", "words"), [
    (HisToSGEConfig, {"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    (HisToSGEConfig, {"epochs": 2.5}, "epochs must be an integer"),
    (HisToSGEConfig, {"epochs": True}, "epochs must be an integer"),
    (HisToSGEConfig, {"lr": 0.0}, "lr must be a number > 0"),
    (HisToSGEConfig, {"lr": float("nan")}, "lr must be a number > 0"),
    (HisToSGEConfig, {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    (HisToSGEConfig, {"grouping": "random"}, "one of spatial, file_order"),
    (HisToSGEConfig, {"dim": 30, "heads": 4}, "divisible by heads"),
    (HisToSGEConfig, {"head_rank": 0}, "head_rank must be an integer >= 1 or None"),
    (HisToSGEConfig, {"gene_selection": "moran"}, "one of hvg, spatial, hvg\\+spatial"),
    (ConditionedConfig, {"histosge_weight": 1.5}, r"histosge_weight must be a number in \[0, 1\] or None"),
    (ConditionedConfig, {"image_trend": "yes"}, "image_trend must be true or false"),
    (ConditionedConfig, {"kriging_rank": -1}, "kriging_rank must be an integer >= 0"),
    (SubspotConfig, {"cell_um": -2.0}, "cell_um must be a number > 0 or None"),
    (SubspotConfig, {"prior_bandwidth": 11.0}, r"prior_bandwidth must be a number in \(0, 10\]"),
])
def test_each_bound_is_checked_with_one_clear_line(cls, change, words):
    with pytest.raises(InputError, match=words):
        cls(**change)


def test_values_become_plain_python_values():
    import numpy as np

    config = HisToSGEConfig(epochs=np.int64(3), lr=np.float32(0.5), genes=("A", "B"))
    assert type(config.epochs) is int and type(config.lr) is float and config.genes == ["A", "B"]


def test_a_setting_of_another_model_is_refused_naming_its_owner():
    with pytest.raises(InputError, match=r"no setting cell_um \(a setting of cellridge and subspot\)"):
        make_config("histosge", {"cell_um": 10.0})
    assert make_config("conditioned", {"dim": 32, "heads": 2}).dim == 32  # inherited from HisToSGE


def test_settings_round_trip_and_flat_old_dicts_still_read():
    config = ConditionedConfig(epochs=3, neighbours=6)
    stored = config.to_dict()
    assert stored["model"] == "conditioned" and config_from_dict(stored) == config
    # Checkpoints of the flat era hold every model's settings: the other models' are dropped.
    flat = {**HisToSGEConfig(epochs=4).to_dict(), "neighbours": 8, "cell_um": None, "histosge_members": 3}
    assert config_from_dict(flat) == HisToSGEConfig(epochs=4)
    with pytest.raises(InputError, match="unknown training settings: colour"):
        config_from_dict({**stored, "colour": "red"})
    with pytest.raises(InputError, match="unknown model 'nope'"):
        config_from_dict({**stored, "model": "nope"})


def _train_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "DATA", "--out", "m.pt", *flags])


def test_every_setting_has_a_flag_and_the_flags_build_the_models_settings():
    config = cli_settings.check_settings(_train_args("--model", "conditioned", "--epochs", "5", "--no-image-trend",
                                                     "--neighbours", "12", "--genes", "A, B"))
    assert isinstance(config, ConditionedConfig)
    assert (config.epochs, config.image_trend, config.neighbours, config.genes) == (5, False, 12, ["A", "B"])
    assert config.batch_size == 256  # not given: the model's own default
    flags = build_parser().parse_args(["train", "DATA", "--out", "m.pt"])
    for cls in (HisToSGEConfig, ConditionedConfig, SubspotConfig):
        for f in fields(cls):
            assert not setting_of(f).on_cli or hasattr(flags, f.name), f.name


def test_a_flag_of_another_model_or_out_of_bounds_is_one_line():
    with pytest.raises(InputError,
                       match=r"--cell-um is a setting of the cellridge and subspot models, not of histosge"):
        cli_settings.check_settings(_train_args("--cell-um", "10"))
    with pytest.raises(InputError, match="--neighbours is a setting of the conditioned model"):
        cli_settings.check_settings(_train_args("--model", "subspot", "--neighbours", "4"))
    with pytest.raises(InputError, match="val_fraction must be a number in"):
        cli_settings.check_settings(_train_args("--val-fraction", "1.5"))
    with pytest.raises(InputError, match="lists no name"):
        cli_settings.check_settings(_train_args("--genes", " , "))


def test_grouping_choices_are_the_grouping_modules():
    assert setting_of(HisToSGEConfig.__dataclass_fields__["grouping"]).choices == GROUPING_MODES


def test_the_cli_reference_shows_the_generated_settings_table():
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    start, end = "<!-- settings-table: start -->\n", "<!-- settings-table: end -->"
    assert start in doc and end in doc, "docs/cli.md lost its generated settings table"
    block = doc.split(start, 1)[1].split(end, 1)[0]
    assert block == cli_settings.settings_table(), (
        "docs/cli.md's settings table is out of date: paste `python -m napari_histosge.cli.settings` between "
        "its settings-table markers")


def test_output_choices_are_the_networks():
    from napari_histosge.models.histosge import OUTPUTS

    assert set(setting_of(HisToSGEConfig.__dataclass_fields__["output"]).choices) == set(OUTPUTS)


def test_given_epochs_replace_the_small_section_schedule_on_the_cli_and_in_the_api():
    from napari_histosge.models import train_config

    default = HisToSGEConfig.default_of("schedule_epochs")
    assert cli_settings.check_settings(_train_args()).schedule_epochs == default
    assert cli_settings.check_settings(_train_args("--epochs", "300")).schedule_epochs is None
    assert train_config(epochs=300).schedule_epochs is None and train_config().schedule_epochs == default
    both = cli_settings.check_settings(_train_args("--epochs", "300", "--schedule-epochs", "40"))
    assert (both.epochs, both.schedule_epochs) == (300, 40)  # both given: the schedule stands


def test_the_image_feature_flags_are_the_declared_feature_settings():
    from napari_histosge.cli.options import feature_config
    from napari_histosge.features import FeatureConfig
    from napari_histosge.settings import declared_fields

    parser = build_parser()
    flags = parser.parse_args(["train", "DATA", "--out", "m.pt"])
    assert feature_config(flags) == FeatureConfig()  # no flag given: the declared defaults
    given = parser.parse_args(["train", "DATA", "--out", "m.pt", "--weights", "w.pt", "--patch-um", "120",
                               "--feature-batch-size", "8", "--no-cache", "--stain", "macenko", "--device", "cpu"])
    assert feature_config(given) == FeatureConfig(checkpoint="w.pt", patch_um=120.0, batch_size=8, cache=False,
                                                  stain="macenko", device="cpu")
    on_cli = [f.name for f in declared_fields(FeatureConfig) if setting_of(f).on_cli]
    assert on_cli == ["extractor", "checkpoint", "patch_um", "patch_spot_fraction", "batch_size", "cache", "stain"]
    with pytest.raises(InputError, match="feature setting batch_size must be an integer >= 1, got 0"):
        FeatureConfig(batch_size=0)
    with pytest.raises(InputError, match="feature setting patch_um must be a positive number, got -2.0"):
        FeatureConfig(patch_um=-2.0)



def test_the_feature_weights_may_be_a_path_and_are_stored_as_text():
    from napari_histosge.features import FeatureConfig

    config = FeatureConfig(checkpoint=Path("w.pt"))
    assert config.checkpoint == "w.pt" and FeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="feature setting checkpoint must be a file path"):
        FeatureConfig(checkpoint=3)


def test_the_model_flag_lists_the_registered_models(monkeypatch, capsys):
    from dataclasses import dataclass

    from napari_histosge.training import config as training_config
    from napari_histosge.training.config import TrainConfig, register_config, setting

    monkeypatch.setattr(training_config, "_CONFIGS", dict(training_config._CONFIGS))

    @register_config
    @dataclass
    class _ToyConfig(TrainConfig):
        MODEL = "toy"
        width: int = setting(3, "toy width", least=1)

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "registered models: histosge, cellridge, conditioned, subspot, toy" in shown
    config = cli_settings.check_settings(_train_args("--model", "toy", "--width", "5"))
    assert isinstance(config, _ToyConfig) and config.width == 5


def test_a_true_or_false_feature_setting_gets_flags_that_mean_what_they_say(monkeypatch):
    """Only a true-by-default setting flagged --no-... is an off switch; others get --name and --no-name."""
    from dataclasses import dataclass

    from napari_histosge.cli import options
    from napari_histosge.settings import declared_fields, setting

    @dataclass
    class _ToyFeatures:
        sharpen: bool = setting(False, "sharpen the patches")
        cache: bool = setting(True, "read or write the cache", flag="--no-cache")
        smooth: bool = setting(True, "smooth the patches")

    monkeypatch.setattr(options, "_feature_settings", lambda: [
        (setting_of(f).flag or "--" + f.name, f) for f in declared_fields(_ToyFeatures)])
    parser = argparse.ArgumentParser()
    options.add_feature_args(parser)
    assert options.feature_values(parser.parse_args([])) == {"sharpen": False, "cache": True, "smooth": True}
    assert options.feature_values(parser.parse_args(["--sharpen", "--no-cache", "--no-smooth"])) == {
        "sharpen": True, "cache": False, "smooth": False}
