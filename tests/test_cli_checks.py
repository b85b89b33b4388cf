"""Every ``histosge`` option is checked before any data are read or any model is loaded.

The readers, the checkpoint loader and the demo generator are replaced by functions that
fail the test when called, so each bad option must be refused by the checks alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_histosge.cli.main import main


def _must_not_run(*_args, **_kwargs):
    raise AssertionError("work started before the options were checked")


@pytest.fixture(autouse=True)
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import anndata

    import napari_histosge.demo
    import napari_histosge.io
    import napari_histosge.models

    monkeypatch.setattr(napari_histosge.io, "read_spots", _must_not_run)
    monkeypatch.setattr(napari_histosge.models, "load_model", _must_not_run)
    monkeypatch.setattr(napari_histosge.demo, "run_demo", _must_not_run)
    monkeypatch.setattr(anndata, "read_h5ad", _must_not_run)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Inputs that exist (their content is never read) and positions files, good and bad."""
    (tmp_path / "data").mkdir()  # a section by its names (ST v1): its counts are never read, their header is
    (tmp_path / "data" / "S_selection.tsv").write_text("x\ty\tpixel_x\tpixel_y\tselected\n")
    (tmp_path / "data" / "S.tsv").write_text("\tERBB2\tGRB7\n")
    for name in ("m.pt", "he.tif", "pred.h5ad", "layers.tsv"):
        (tmp_path / name).write_bytes(b"")
    csvs = {
        "good": "id,x,y\na,1,2\n",
        "no_y": "id,x\na,1\n",
        "inf": "id,x,y\na,1,inf\n",
        "text": "id,x,y\na,1,far\n",
        "empty_cell": "id,x,y\na,1,\n",
        "twice": "id,x,y\na,1,2\na,3,4\n",
        "header_only": "id,x,y\n",
        "blank_id": "id,x,y\n ,1,2\n",
    }
    for name, text in csvs.items():
        (tmp_path / f"{name}.csv").write_text(text)
    paths = {name: str(tmp_path / name) for name in ("data", "m.pt", "he.tif", "pred.h5ad", "layers.tsv")}
    paths.update({f"csv_{name}": str(tmp_path / f"{name}.csv") for name in csvs})
    paths["out"] = str(tmp_path / "o.h5ad")
    paths["tmp"] = str(tmp_path)
    return paths


def _predict(f, *extra):
    return ["predict", f["m.pt"], f["data"], "--out", f["out"], *extra]


def _superresolve(f, *extra):
    return ["superresolve", f["m.pt"], f["data"], "--out", f["out"], *extra]


def _recover(f, *extra):
    return ["recover", f["data"], "--out", f["out"], *extra]


def _train(f, *extra):
    return ["train", f["data"], "--out", f["tmp"] + "/m2.pt", *extra]


def _evaluate(f, *extra):
    return ["evaluate", f["pred.h5ad"], f["data"], *extra]


CASES = [
    # output files: suffix, folder
    (lambda f: ["predict", f["m.pt"], f["data"], "--out", f["tmp"] + "/gone/o.h5ad"], "does not exist"),
    (lambda f: ["predict", f["m.pt"], f["data"], "--out", f["tmp"] + "/o.csv"], "must end in .h5ad"),
    (lambda f: ["predict", f["m.pt"], f["data"], "--out", f["tmp"]], "must end in .h5ad"),
    (lambda f: ["superresolve", f["m.pt"], f["data"], "--out", f["tmp"] + "/gone/o.h5ad"], "does not exist"),
    (lambda f: ["recover", f["data"], "--out", f["tmp"] + "/gone/o.h5ad"], "does not exist"),
    (lambda f: ["train", f["data"], "--out", f["tmp"] + "/m.h5ad"], "must end in .pt"),
    (lambda f: ["train", f["data"], "--out", f["tmp"] + "/gone/m.pt"], "does not exist"),
    (lambda f: _recover(f, "--metrics", f["tmp"] + "/gone/m.csv"), "does not exist"),
    (lambda f: _recover(f, "--metrics", f["tmp"] + "/m.txt"), "must end in .csv"),
    (lambda f: _recover(f, "--save-model", f["tmp"] + "/m.bin"), "must end in .pt"),
    (lambda f: _evaluate(f, "--metrics", f["tmp"] + "/gone/m.csv"), "does not exist"),
    (lambda f: ["demo", "--out", f["m.pt"]], "is a file, not a folder"),
    (lambda f: ["demo", "--out", f["tmp"] + "/gone/demo"], "does not exist"),
    # ranges
    (lambda f: _superresolve(f, "--fold", "1"), "--fold must be an integer between 2 and 16, got 1"),
    (lambda f: _superresolve(f, "--fold", "17"), "--fold must be an integer between 2 and 16, got 17"),
    (lambda f: _recover(f, "--holdout", "0"), "--holdout must be between 0 and 1"),
    (lambda f: _recover(f, "--holdout", "1"), "--holdout must be between 0 and 1"),
    (lambda f: _recover(f, "--holdout", "1.5"), "--holdout must be between 0 and 1"),
    (lambda f: _predict(f, "--diameter", "0"), "--diameter must be a positive number"),
    (lambda f: _predict(f, "--diameter", "-4"), "--diameter must be a positive number"),
    (lambda f: _predict(f, "--diameter", "nan"), "--diameter must be a positive number"),
    (lambda f: _train(f, "--epochs", "0"), "epochs"),
    (lambda f: _train(f, "--patch-um", "-1"), "--patch-um must be a positive number"),
    (lambda f: _train(f, "--genes", " , "), "--genes lists no name"),
    (lambda f: _train(f, "--cell-um", "10"),
     "--cell-um is a setting of the cellridge and subspot models, not of histosge"),
    (lambda f: _superresolve(f, "--workers", "0"), "--workers must be at least 1"),
    (lambda f: _superresolve(f, "--grid-um", "0"), "--grid-um must be a positive number"),
    (lambda f: _superresolve(f, "--grid-um", "-10"), "--grid-um must be a positive number"),
    (lambda f: _superresolve(f, "--grid-um", "10", "--fold", "4"), "give one or the other"),
    (lambda f: _superresolve(f, "--product", "grid", "--fold", "4"),
     "the grid product takes --grid-um, --mask, --consistency, not --fold"),
    (lambda f: _superresolve(f, "--mask", f["tmp"] + "/none.geojson"), "--mask file not found"),
    (lambda f: _train(f, "--model", "subspot", "--cell-um", "0"), "cell_um must be a number > 0"),
    (lambda f: _train(f, "--model", "subspot", "--prior-bandwidth", "0"),
     "prior_bandwidth must be a number in (0, 10]"),
    (lambda f: ["demo", "--out", f["tmp"] + "/d", "--epochs", "0"], "--epochs must be at least 1"),
    # inputs that must exist
    (lambda f: ["predict", f["tmp"] + "/none.pt", f["data"], "--out", f["out"]], "model checkpoint not found"),
    (lambda f: ["superresolve", f["m.pt"], f["tmp"] + "/none", "--out", f["out"]], "data does not exist"),
    (lambda f: _predict(f, "--image", f["tmp"] + "/none.tif"), "--image file not found"),
    (lambda f: _train(f, "--resume", f["tmp"] + "/none.pt"), "--resume checkpoint not found"),
    (lambda f: _train(f, "--weights", f["tmp"] + "/none.bin"), "--weights file not found"),
    (lambda f: ["train", f["data"], f["tmp"] + "/none", "--out", f["tmp"] + "/m2.pt"], "data does not exist"),
    (lambda f: ["evaluate", f["tmp"] + "/none.h5ad", f["data"]], "predictions file does not exist"),
    (lambda f: ["evaluate", f["layers.tsv"], f["data"]], "must be an .h5ad file"),
    (lambda f: _evaluate(f, "--layers", f["tmp"] + "/none.tsv"), "layer annotation file (--layers) not found"),
    # a folder that is no section, told from its names
    (lambda f: ["train", f["tmp"], "--out", f["tmp"] + "/m2.pt"], "unsupported input"),
    (lambda f: ["recover", f["tmp"], "--out", f["out"]], "unsupported input"),
    (lambda f: ["superresolve", f["m.pt"], f["tmp"], "--out", f["out"]], "unsupported input"),
    (lambda f: ["predict", f["m.pt"], f["tmp"], "--out", f["out"]], "unsupported input"),
    (lambda f: ["evaluate", f["pred.h5ad"], f["tmp"]], "unsupported input"),
    (lambda f: _train(f, "--bin-um", "8"), "a bin size applies to Visium HD outputs only"),
    # gene names, against the counts' header
    (lambda f: _train(f, "--genes", "ERBB2,GRB77"), "1 requested gene(s) are not in the data: 'GRB77' (did you "
                                                     "mean 'GRB7'?)"),
    (lambda f: _train(f, "--include-genes", "NOTAGENE"), "1 requested gene(s) are not in the data: 'NOTAGENE'"),
    (lambda f: _recover(f, "--genes", ",".join(f"G{i}" for i in range(2000))), "2000 requested gene(s) are not"),
    (lambda f: ["region", f["data"], "--regions", f["layers.tsv"], "--out", f["tmp"] + "/r.csv", "--genes", "KRT"],
     "1 requested gene(s) are not in the data: 'KRT'"),
    (lambda f: _superresolve(f, "--grid-um", "0.1"), "--grid-um must be at least 0.5 µm"),
    # the positions file
    (lambda f: _predict(f, "--positions", f["tmp"] + "/none.csv"), "positions file not found"),
    (lambda f: _predict(f, "--positions", f["csv_no_y"]), "needs columns id,x,y; missing y"),
    (lambda f: _predict(f, "--positions", f["csv_inf"]), "x and y must be finite numbers; row 1"),
    (lambda f: _predict(f, "--positions", f["csv_text"]), "x and y must be finite numbers; row 1"),
    (lambda f: _predict(f, "--positions", f["csv_empty_cell"]), "x and y must be finite numbers"),
    (lambda f: _predict(f, "--positions", f["csv_twice"]), "ids must be unique; 'a' appears more than once"),
    (lambda f: _predict(f, "--positions", f["csv_header_only"]), "has no rows"),
    (lambda f: _predict(f, "--positions", f["csv_blank_id"]), "empty id in row 1"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"case{i}-{m[:28]}" for i, (_, m) in enumerate(CASES)])
def test_bad_option_fails_before_any_work(argv, message, files, capsys: pytest.CaptureFixture) -> None:
    assert main(argv(files)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("histosge: error: ") and len(err.strip().splitlines()) == 1


def test_good_options_pass_the_checks_and_reach_the_work(files) -> None:
    """The checks let valid options through: the (replaced) loader is then called."""
    with pytest.raises(AssertionError, match="before the options were checked"):
        main(_predict(files, "--positions", files["csv_good"], "--diameter", "55"))
    with pytest.raises(AssertionError, match="before the options were checked"):
        main(_superresolve(files, "--fold", "16"))
    with pytest.raises(AssertionError, match="before the options were checked"):  # genes of the header pass
        main(_recover(files, "--genes", "ERBB2, GRB7"))
    with pytest.raises(AssertionError, match="before the options were checked"):
        main(["demo", "--out", files["tmp"] + "/new_demo", "--epochs", "1"])


@pytest.mark.parametrize("command", [_train, _recover])
def test_a_bad_training_setting_is_refused_without_loading_a_model(command, files, monkeypatch, capsys) -> None:
    """Setting bounds are checked on the plain settings: no model registry (and no torch) first."""
    import napari_histosge.models

    monkeypatch.setattr(napari_histosge.models, "train_config", _must_not_run)
    assert main(command(files, "--lr", "-1")) == 2
    assert "training setting lr must be a number > 0" in capsys.readouterr().err


def test_an_unknown_stain_normalisation_is_refused_by_the_parser(files, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(_train(files, "--stain", "reinhard"))
    assert exit_info.value.code == 2
    assert "argument --stain: invalid choice: 'reinhard'" in capsys.readouterr().err
