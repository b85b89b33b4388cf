"""The sub-spot model's histology prior (``--prior``): the cellridge model, the pattern, its weights, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import napari_histosge as hs
from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.evaluation.metrics import within_bin_pcc
from napari_histosge.io.preprocess import dense_targets, normalize_log1p
from napari_histosge.models import load_model
from napari_histosge.models.subspot import histology_prior
from napari_histosge.models.subspot.histology_prior import WEIGHTS, choose_weights
from napari_histosge.pipeline.pooled import pool_spots

CELL_UM = "30"  # about 16 px on the demo slide: quick


@pytest.fixture(scope="module")
def prior_path(demo, tmp_path_factory) -> Path:
    """A cellridge model of the demo section (standing in for other sections of the same tissue)."""
    path = tmp_path_factory.mktemp("prior") / "prior.pt"
    hs.fit(demo, train_config=hs.train_config("cellridge", n_top_genes=20, cell_um=float(CELL_UM)),
           checkpoint_path=path)
    return path


def _subspot(adata, **settings):
    return hs.fit(adata, train_config=hs.train_config("subspot", n_top_genes=20, cell_um=float(CELL_UM), **settings))


# ----------------------------------------------------------------------------- the weights
def _footprints(n_squares: int = 30, seed: int = 0):
    """Footprints in squares of four; gene 0 varies inside each square as ``truth``, gene 1 does not."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_squares), 4)
    level = rng.normal(0, 0.5, n_squares)[labels]
    truth = rng.normal(0, 0.6, len(labels))
    rates = np.exp(np.stack([3 + level + truth, 3 + level, np.full(len(labels), 6.0)], axis=1))
    counts = sp.csr_matrix(rng.poisson(rates))
    return labels, truth, counts


def test_a_pattern_that_is_right_inside_the_squares_is_kept_and_a_wrong_one_is_not():
    labels, truth, counts = _footprints()
    rng = np.random.default_rng(1)
    pattern = np.stack([truth, rng.normal(0, 0.6, len(truth))], axis=1)  # right for gene 0; noise for gene 1
    weight = choose_weights(pattern, counts, np.array([0, 1]), labels)
    assert weight[0] >= 0.75 and weight[1] <= 0.25


def test_a_flat_pattern_gets_weight_zero():
    labels, _, counts = _footprints()
    assert np.all(choose_weights(np.zeros((len(labels), 2)), counts, np.array([0, 1]), labels) == WEIGHTS[0])


def test_a_sparse_gene_gets_about_its_true_weight_not_full_weight():
    # About 1.6 counts per footprint, whose deviation inside its square is a quarter of the
    # pattern: a correlation criterion chose full weight here (it ignores the pattern's size).
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(400), 4)
    pattern = rng.normal(0, 1.0, len(labels))
    level = rng.normal(0, 0.3, 400)[labels]
    sparse = 1.6 * np.exp(level + 0.25 * pattern) / np.exp(0.25**2 / 2)
    counts = sp.csr_matrix(rng.poisson(np.stack([sparse, np.full(len(labels), 2000.0)], axis=1)))
    assert choose_weights(pattern[:, None], counts, np.array([0]), labels)[0] in (0.25, 0.5)


# ----------------------------------------------------------------------------- the fitted model
def test_weight_zero_changes_nothing(demo, prior_path, monkeypatch):
    monkeypatch.setattr(histology_prior, "choose_weights", lambda pattern, *a, **k: np.zeros(pattern.shape[1]))
    with_prior, without = _subspot(demo, prior=str(prior_path)), _subspot(demo)
    assert with_prior.meta.histology_prior["genes_kept"] == 0 and not with_prior.uses_image
    prior = load_model(prior_path, device="cpu")
    assert prior.meta.extra == {} and prior.meta.cell_um is not None  # the cellridge entries are declared
    first = hs.superresolve_grid(with_prior, demo, mask=None)
    second = hs.superresolve_grid(without, demo, mask=None)
    assert np.array_equal(first.X, second.X)


def test_a_prior_that_predicts_none_of_the_selected_genes_is_said(demo, prior_path):
    prior_genes = set(load_model(prior_path, device="cpu").genes)
    others = [g for g in map(str, demo.var_names) if g not in prior_genes][:5]
    with pytest.warns(UserWarning, match="the histology prior predicts none of the selected genes"):
        model = hs.fit(demo, train_config=hs.train_config("subspot", genes=others, cell_um=float(CELL_UM),
                                                          prior=str(prior_path)))
    assert "predicts none of the selected genes, so every weight is 0" in model.training_summary()


def test_the_image_pattern_within_bins_is_recovered(demo, prior_path):
    # The demo's expression follows its tissue image; bins of four spots hide it within each bin.
    pooled = pool_spots(demo, 4)
    genes = load_model(prior_path, device="cpu").genes
    truth = dense_targets(normalize_log1p(demo), genes)
    scores = {}
    for name, settings in {"default": {}, "prior": {"prior": str(prior_path)}}.items():
        model = hs.fit(pooled.bins, train_config=hs.train_config("subspot", genes=genes, cell_um=float(CELL_UM),
                                                                 **settings))
        pred = hs.predict_spots(model, demo, positions=np.asarray(demo.obsm["spatial"]),
                                diameter=float(demo.uns["histosge"]["spot_diameter_px"]))
        scores[name] = float(np.mean(within_bin_pcc(np.asarray(pred[:, genes].X), truth, pooled.spot_bin)))
    assert scores["prior"] > scores["default"] + 0.1, scores


def _grid_maps(demo, prior_path, monkeypatch):
    """Unconstrained (consistency none) grid maps with the prior at full weight and without, and the grid."""
    from napari_histosge.pipeline.grid_maps import grid_rates
    from napari_histosge.progress import run_to_end
    from napari_histosge.slide.cell_grid import CellGrid

    monkeypatch.setattr(histology_prior, "choose_weights", lambda pattern, *a, **k: np.ones(pattern.shape[1]))
    with_prior, without = _subspot(demo, prior=str(prior_path)), _subspot(demo)
    footprints = with_prior.footprints()
    grid = CellGrid.covering(footprints.centres.min(axis=0), footprints.centres.max(axis=0), with_prior.cell_px)
    maps = [run_to_end(grid_rates(m, demo, grid, consistency="none")) for m in (with_prior, without)]
    return maps, footprints.cell_weights(grid.centres(), nearest_if_empty=False)


def test_the_prior_adds_only_a_pattern_below_the_footprints_not_a_level(demo, prior_path, monkeypatch):
    # The prior's map predicts a cell against the whole section; the smoothed measurement
    # already carries the level, so only what differs from the footprints' own level around a
    # cell may move it. The demo's pattern changes from spot to spot, so some level remains;
    # before the fix (the map's level added as is) the medians were 0.97 and 0.90.
    (with_prior, without), weights = _grid_maps(demo, prior_path, monkeypatch)
    change = np.abs(np.log1p(with_prior) - np.log1p(without))
    uncovered = np.asarray((weights != 0).sum(axis=0)).ravel() == 0
    assert uncovered.sum() > 100
    assert np.median(change[uncovered]) < 0.75
    footprint_change = np.abs(np.log1p(np.asarray(weights @ with_prior)) - np.log1p(np.asarray(weights @ without)))
    assert np.median(footprint_change) < 0.65


# ----------------------------------------------------------------------------- the command line
def test_train_a_prior_and_a_subspot_model_that_reads_it(demo_dir, tmp_path, capsys):
    prior, model = tmp_path / "prior.pt", tmp_path / "sub.pt"
    assert main(["train", str(demo_dir), str(demo_dir), "--model", "cellridge", "--cell-um", CELL_UM,
                 "--n-genes", "10", "--out", str(prior), "--quiet"]) == 0
    assert "over 490 spots of 2 section(s)" in capsys.readouterr().out
    assert main(["train", str(demo_dir), "--model", "subspot", "--cell-um", CELL_UM, "--n-genes", "10",
                 "--prior", str(prior), "--out", str(model), "--quiet"]) == 0
    assert f"histology prior {prior}: its pattern kept for " in capsys.readouterr().out
    # A prior does not predict spots on its own: refused in one line.
    assert main(["predict", str(prior), str(demo_dir), "--out", str(tmp_path / "p.h5ad"), "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _edited(prior_path: Path, tmp_path: Path, edit) -> str:
    """A copy of the prior model with ``edit(model)`` applied."""
    model = load_model(prior_path, device="cpu")
    edit(model)
    out = tmp_path / "edited.pt"
    model.save(out)
    return str(out)


def _genes_renamed(model):
    model.genes = [f"other-{g}" for g in model.genes]


def _platform_visium(model):
    for section in model.meta.sections:
        section["platform"] = "visium"


def _cells_doubled(model):
    model.meta.cell_um = 2 * model.meta.cell_um


def _mpp_tripled(model):
    for section in model.meta.sections:
        section["mpp"] = 3 * section["mpp"]


@pytest.mark.parametrize("make_prior, message", [
    (lambda p, t: str(t / "missing.pt"), "--prior model not found"),
    (lambda p, t: (t / "junk.pt").write_bytes(b"not a checkpoint") and str(t / "junk.pt"), "not"),
    (lambda p, t: _edited(p, t, _genes_renamed), "share none"),
    (lambda p, t: _edited(p, t, _platform_visium), "trained on visium sections and this section is"),
    (lambda p, t: _edited(p, t, _cells_doubled), "give --cell-um"),
    (lambda p, t: _edited(p, t, _mpp_tripled), "its image features would not mean the same here"),
])
def test_a_bad_prior_fails_in_one_line_before_any_work(demo_dir, prior_path, tmp_path, capsys, monkeypatch,
                                                        make_prior, message):
    prior = make_prior(prior_path, tmp_path)
    _no_cell_features(monkeypatch)
    assert main(["train", str(demo_dir), "--model", "subspot", "--cell-um", CELL_UM, "--prior", prior,
                 "--out", str(tmp_path / "sub.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sub.pt").exists()


def test_a_prior_that_is_not_an_image_model_is_refused(demo, tmp_path, monkeypatch):
    not_image = tmp_path / "sub.pt"
    _subspot(demo).save(not_image)
    _no_cell_features(monkeypatch)
    with pytest.raises(InputError, match="the prior is a subspot model, which does not predict expression from"):
        _subspot(demo, prior=str(not_image))


def test_a_prior_with_the_image_modulation_is_refused(demo, prior_path, monkeypatch):
    _no_cell_features(monkeypatch)
    with pytest.raises(InputError, match="give --prior or --image-modulation, not both"):
        _subspot(demo, prior=str(prior_path), image_modulation=True)


def _no_cell_features(monkeypatch):
    from napari_histosge.models.subspot import fit

    def refuse(*_a, **_k):
        raise AssertionError("cell features were read before the prior was checked")

    monkeypatch.setattr(fit, "cell_features", refuse)


def test_a_prior_on_counts_that_are_not_whole_numbers_is_refused(demo, prior_path, monkeypatch):
    normalised = demo.copy()
    normalised.X = normalize_log1p(demo).X
    _no_cell_features(monkeypatch)
    with pytest.raises(InputError, match="not whole numbers"):
        _subspot(normalised, prior=str(prior_path))


def _without_pixel_size(adata):
    adata.uns["histosge"].pop("mpp", None)


def _coarse_slide(adata):
    # So coarse that the default 14 µm cell is raised to two image pixels: another cell size.
    adata.uns["histosge"]["mpp"] = 20 * float(adata.uns["histosge"]["mpp"])


@pytest.mark.parametrize("edit, message", [(_without_pixel_size, "this section's is unknown"),
                                           (_coarse_slide, "give --cell-um so that every section")])
def test_a_prior_is_not_trained_on_sections_of_unknown_or_mixed_cell_size(demo, monkeypatch, edit, message):
    from napari_histosge.models.subspot import cellridge
    from napari_histosge.progress import run_to_end

    other = demo.copy()
    edit(other)

    def refuse(*_a, **_k):
        raise AssertionError("cell features were read before the sections were checked")

    monkeypatch.setattr(cellridge, "section_cells", refuse)
    with pytest.raises(InputError, match=message):
        run_to_end(cellridge.train_cellridge([demo, other], train_ids=None, config=hs.train_config("cellridge"),
                                             meta={}))
