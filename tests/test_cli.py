"""The ``histosge`` command line, end to end on the generated demo and on real data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from napari_histosge.cli.main import main
from napari_histosge.io import read_spots
from napari_histosge.models import load_model


@pytest.mark.slow
def test_recover_writes_hidden_spots_only(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hidden.h5ad"
    status = main([
        "recover", str(demo_dir), "--holdout", "0.5", "--seed", "0", "--out", str(out),
        "--epochs", "5", "--n-genes", "20", "--quiet", "--metrics", str(tmp_path / "m.csv"),
    ])
    assert status == 0
    pred = ad.read_h5ad(out)
    spots = read_spots(demo_dir)
    train = list(pred.uns["split"]["train"])
    assert set(pred.obs_names).isdisjoint(train)
    assert set(pred.obs_names) | set(train) == set(spots.obs_names)
    assert abs(pred.n_obs - spots.n_obs / 2) <= 1
    assert set(pred.var_names) <= set(spots.var_names)
    assert np.isfinite(pred.X).all() and (np.asarray(pred.X) >= 0).all()
    assert (tmp_path / "m.csv").read_text().startswith(",pcc") or "pcc" in (tmp_path / "m.csv").read_text()


@pytest.mark.slow
def test_recover_and_evaluate_report_the_same_genes_and_scores(demo_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    import re

    hidden = tmp_path / "hidden.h5ad"
    assert main(["recover", str(demo_dir), "--out", str(hidden), "--save-model", str(tmp_path / "m.pt"),
                 "--epochs", "2", "--n-genes", "10", "--min-validation-spots", "0", "--quiet"]) == 0
    recovered = capsys.readouterr().out
    assert main(["evaluate", str(hidden), str(demo_dir)]) == 0
    evaluated = capsys.readouterr().out
    every = re.search(r"every predicted gene\s+PCC (\S+)\s+MSE (\S+)\s+MAE (\S+)\s+\((\d+) genes\)", recovered)
    scored = re.search(r"PCC (\S+) \(median \S+\), MSE (\S+), MAE (\S+)", evaluated)
    n_genes = re.search(r"spots x (\d+) genes", evaluated)
    assert every and scored and n_genes, (recovered, evaluated)
    assert every.group(4) == n_genes.group(1) == str(ad.read_h5ad(hidden).n_vars)
    assert every.groups()[:3] == scored.groups()
    # The spots the network fitted and those it held back to choose its epoch, both named truthfully.
    split = ad.read_h5ad(hidden).uns["split"]
    held = load_model(tmp_path / "m.pt", device="cpu").meta.n_validation_spots
    assert held > 0
    assert f"(trained on {len(split['train']) - held} ({held} held for validation))" in recovered


@pytest.mark.slow
def test_train_predict_evaluate(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "m.pt"
    # The demo section (245 spots) is too small to validate on: every spot trains, for the epochs given.
    assert main(["train", str(demo_dir), "--out", str(model), "--epochs", "3", "--n-genes", "10", "--quiet"]) == 0
    assert model.exists()
    assert "epochs: 3 on every training spot, as asked" in capsys.readouterr().out
    assert main(["train", str(demo_dir), "--out", str(model), "--epochs", "3", "--n-genes", "10",
                 "--min-validation-spots", "0", "--quiet"]) == 0
    kept = load_model(model, device="cpu").meta.best_epoch
    out = capsys.readouterr().out
    assert f"epochs: 3 of at most 3; kept the weights of epoch {kept}" in out
    assert "validation PCC (mean per gene, " in out
    assert main(["train", str(demo_dir), "--out", str(tmp_path / "all.pt"), "--epochs", "2", "--n-genes", "10",
                 "--val-fraction", "0", "--dropout", "0.2", "--head-rank", "4", "--quiet"]) == 0
    assert "epochs: 2\n" in capsys.readouterr().out
    saved = load_model(tmp_path / "all.pt", device="cpu").config
    assert (saved.dropout, saved.head_rank) == (0.2, 4)
    sr = tmp_path / "sr.h5ad"
    assert main(["superresolve", str(model), str(demo_dir), "--fold", "4", "--out", str(sr), "--quiet"]) == 0
    result = ad.read_h5ad(sr)
    spots = read_spots(demo_dir)
    assert result.n_obs == 4 * spots.n_obs
    assert result.uns["histosge"]["fold"] == 4
    hidden = tmp_path / "h.h5ad"
    assert main(["recover", str(demo_dir), "--out", str(hidden), "--epochs", "3", "--n-genes", "10", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(hidden), str(demo_dir)]) == 0
    assert "PCC" in capsys.readouterr().out
    at_spots = tmp_path / "spots.h5ad"  # predictions at the measured spots can be scored too
    assert main(["predict", str(model), str(demo_dir), "--out", str(at_spots), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(at_spots), str(demo_dir), "--metrics", str(tmp_path / "m.csv")]) == 0
    assert f"{spots.n_obs} spots x {len(load_model(model, device='cpu').genes)} genes: PCC" in \
        capsys.readouterr().out
    assert (tmp_path / "m.csv").read_text().startswith("gene,pcc,mse,mae")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["recover", "/no/such/folder", "--out", "x.h5ad"], "does not exist"),
        (["predict", "/no/such/model.pt", "/no/such/folder", "--out", "x.h5ad"], "model.pt"),
        (["superresolve", "/no/such/model.pt", "/no/such/folder", "--out", "x.h5ad"], "model.pt"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, message, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_gene(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(["train", str(demo_dir), "--out", str(tmp_path / "m.pt"), "--genes", "GENE01,NOTAGENE", "--quiet"])
    assert status == 2
    assert "NOTAGENE" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.slow
def test_recover_on_real_section(her2st_b4: Path, tmp_path: Path) -> None:
    out = tmp_path / "b4.h5ad"
    assert main(["recover", str(her2st_b4), "--out", str(out), "--epochs", "20", "--n-genes", "100", "--quiet"]) == 0
    pred = ad.read_h5ad(out)
    spots = read_spots(her2st_b4)
    assert set(pred.obs_names) <= set(spots.obs_names)
    assert "metrics_summary" in pred.uns


@pytest.mark.slow
def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "30", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "held-out PCC" in out
    assert (tmp_path / "demo" / "superres_4x.h5ad").exists()


@pytest.mark.slow
def test_conditioned_model_writes_uncertainty(demo_dir: Path, demo_section, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "c.pt"
    assert main(["train", str(demo_dir), "--model", "conditioned", "--epochs", "2", "--n-genes", "10",
                 "--kriging-rank", "0", "--val-fraction", "0", "--histosge-members", "1", "--out", str(model),
                 "--quiet"]) == 0
    saved = load_model(model, device="cpu")
    assert saved.config.kriging_rank == 0 and saved.model.basis.shape[1] == 0 and saved.config.val_fraction == 0
    assert len(saved.companions) == saved.config.histosge_members == 1
    assert saved.meta.kriging["share"] == {"plain": 1.0}  # rank 0: every gene kriged alone
    no_trend = tmp_path / "no_trend.pt"
    assert main(["train", str(demo_dir), "--model", "conditioned", "--epochs", "1", "--n-genes", "10",
                 "--no-image-trend", "--no-depth-term", "--histosge-weight", "0", "--out", str(no_trend),
                 "--quiet"]) == 0
    saved_no_trend = load_model(no_trend, device="cpu")
    assert not saved_no_trend.config.image_trend and not saved_no_trend.meta.kriging["image_trend"]
    assert saved_no_trend.config.histosge_weight == 0 and saved_no_trend.companions == ()
    assert "drift" not in saved_no_trend.meta.kriging["share"]
    assert not saved_no_trend.config.depth_term and saved_no_trend.meta.depth_term is None
    assert saved.config.depth_term and saved.meta.depth_term is not None  # on by default
    sr = tmp_path / "sr.h5ad"
    assert main(["superresolve", str(model), str(demo_dir), "--fold", "4", "--out", str(sr), "--quiet"]) == 0
    result = ad.read_h5ad(sr)
    assert result.uns["histosge"]["model"] == "conditioned"
    assert set(result.var["estimator"]) == {"plain"}  # kriging_rank 0: every gene kriged alone
    std = np.asarray(result.layers["std"])
    assert std.shape == result.shape and np.isfinite(std).all() and (std >= 0).all() and std.max() > 0
    other = demo_section(1)  # a section it did not measure
    capsys.readouterr()
    assert main(["predict", str(model), str(other), "--out", str(tmp_path / "other.h5ad"), "--quiet"]) == 2
    assert "a conditioned model predicts only on the section it was trained on" in capsys.readouterr().err
    hidden = tmp_path / "h.h5ad"
    capsys.readouterr()
    assert main(["recover", str(demo_dir), "--model", "conditioned", "--epochs", "2", "--n-genes", "10",
                 "--out", str(hidden), "--quiet"]) == 0
    recovered = ad.read_h5ad(hidden)
    assert "std" in recovered.layers
    assert set(recovered.var["estimator"]) <= {"plain", "coupled", "drift"}
    out = capsys.readouterr().out
    assert "kriging estimators (share of genes): plain" in out
    assert "blended with its HisToSGE companion, the mean of 3 models (weight " in out
    assert "chosen on validation spots" in out
    assert "spread (std) vs error: rank corr per gene" in out  # recover scores the uncertainty
    assert "uncertainty" in recovered.uns["metrics_summary"]
    assert main(["evaluate", str(hidden), str(demo_dir)]) == 0
    assert "spread (std) vs error" in capsys.readouterr().out


def test_subspot_train_superresolve_on_a_grid_and_predict(demo_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "sub.pt"
    assert main(["train", str(demo_dir), "--model", "subspot", "--cell-um", "30", "--n-genes", "10",
                 "--out", str(model), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "measured footprints, cells of 30 µm" in out
    # Fitted in closed form: no loss to report, and never "final loss nan" (the words of a diverged run).
    assert "fitted without epochs (no training loss)" in out and "nan" not in out
    grid = tmp_path / "grid.h5ad"
    assert main(["superresolve", str(model), str(demo_dir), "--grid-um", "60", "--mask", "none",
                 "--out", str(grid), "--quiet"]) == 0
    result = ad.read_h5ad(grid)
    assert np.isclose(result.uns["histosge"]["grid"]["cell_um"], 60.0)
    assert {"grid_row", "grid_col"} <= set(result.obs.columns) and np.isfinite(result.X).all()
    # A subspot model has no lattice: --fold is refused with one line naming the checkpoint.
    assert main(["superresolve", str(model), str(demo_dir), "--fold", "4", "--out", str(grid), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "makes the grid of cells (grid): use --grid-um" in err and "not --fold" in err
    spots = tmp_path / "spots.h5ad"
    assert main(["predict", str(model), str(demo_dir), "--out", str(spots), "--quiet"]) == 0
    measured = read_spots(demo_dir)
    assert ad.read_h5ad(spots).n_obs == measured.n_obs


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture) -> None:
    from napari_histosge import __version__

    tomllib = pytest.importorskip("tomllib")

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert capsys.readouterr().out.strip() == f"histosge {project['version']}" == f"histosge {__version__}"
