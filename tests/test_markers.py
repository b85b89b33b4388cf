"""Known marker genes: the default gene choice keeps a tissue's markers that the section expresses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.io import read_spots
from napari_histosge.io.markers import MARKER_CAP, choose_tissue, marker_genes, tissue_markers, tissues
from napari_histosge.io.preprocess import normalize_log1p, select_genes
from napari_histosge.models import train_config
from napari_histosge.pipeline.gene_choice import training_genes
from napari_histosge.training.config import MARKER_CHOICES


def _section(genes: dict[str, float], *, n_spots: int = 100, n_other: int = 200, seed: int = 0,
             var: pd.DataFrame | None = None) -> AnnData:
    """Log-normalised spots: ``genes`` at the given mean counts (noisy), ``n_other`` strongly patterned fillers.

    The fillers follow gradients across the grid, so any spatial or dispersion ranking
    prefers them to the named genes, which carry no spatial pattern.
    """
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_spots)))
    xy = np.array([(i % side, i // side) for i in range(n_spots)], dtype=np.float64)
    ramps = (1 + 20 * xy[:, 0] / side, 21 - 20 * xy[:, 0] / side)  # opposite: the spots' totals stay even
    named = [rng.poisson(mean, n_spots) for mean in genes.values()]
    fillers = [rng.poisson(ramps[i % 2] * rng.uniform(0.5, 2.0)) for i in range(n_other)]
    counts = np.column_stack(named + fillers).astype(np.float32)
    names = list(genes) + [f"FILL{i:03d}" for i in range(n_other)]
    adata = AnnData(counts, obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]),
                    var=var if var is not None else pd.DataFrame(index=names))
    adata.obsm["spatial"] = xy
    return normalize_log1p(adata)


BREAST = {"ERBB2": 30.0, "GRB7": 8.0, "KRT19": 40.0, "IGKC": 60.0, "COL1A1": 20.0, "MKI67": 0.01}


def test_the_marker_settings_choices_are_the_tables_tissues() -> None:
    assert MARKER_CHOICES == ("auto", "none", *tissues())
    assert {m.symbol for m in tissue_markers("breast")} >= {"ERBB2", "GRB7", "ESR1", "PGR", "KRT5", "MKI67"}


def test_auto_finds_the_tissue_and_keeps_its_expressed_markers_only() -> None:
    log = _section(BREAST)
    assert choose_tissue(log) == "breast"
    kept = marker_genes(log, "auto", n_top=100)
    assert set(kept) == {"ERBB2", "GRB7", "KRT19", "IGKC", "COL1A1"}  # MKI67 hardly detected: left out
    assert marker_genes(log, "none") == [] and marker_genes(log, None) == []
    assert marker_genes(log, "brain-cortex") == []  # none of its markers in the data


def test_a_section_of_no_known_tissue_gets_no_markers() -> None:
    log = _section({"ERBB2": 30.0, "ABC1": 20.0})  # one breast marker is not a tissue
    assert choose_tissue(log) is None
    assert marker_genes(log, "auto") == []


def test_markers_are_capped_at_a_quarter_of_the_genes_highest_expressed_first() -> None:
    log = _section(BREAST)
    few = marker_genes(log, "breast", n_top=8)
    assert len(few) == 2 and "IGKC" in few  # the highest expressed (and the most variable) kept
    many = {m.symbol: 20.0 for m in tissue_markers("breast")}
    assert len(marker_genes(_section(many), "breast", n_top=1000)) == MARKER_CAP


def test_default_gene_choice_keeps_markers_the_ranking_leaves_out() -> None:
    log = _section(BREAST)
    plain = select_genes(log, n_top=20, method="spatial")
    assert "ERBB2" not in plain and "GRB7" not in plain  # the patterned fillers win the ranking
    chosen = select_genes(log, n_top=20, method="spatial", markers="auto")
    assert {"ERBB2", "GRB7"} <= set(chosen) and len(chosen) == 20
    config = train_config("histosge", n_top_genes=20)
    assert config.markers == "auto"
    assert {"ERBB2", "GRB7"} <= set(training_genes(log, config))
    assert "ERBB2" not in training_genes(log, train_config("histosge", n_top_genes=20, markers="none"))


def test_markers_are_found_by_ensembl_id_in_data_named_by_id() -> None:
    ids = {"ENSG00000197971": 50.0, "ENSG00000168314": 20.0, "ENSG00000123560": 40.0, "ENSG00000132639": 30.0,
           "ENSG00000183036": 10.0}  # MBP, MOBP, PLP1, SNAP25, PCP4
    log = _section(ids)
    assert choose_tissue(log) == "brain-cortex"
    assert set(marker_genes(log, "auto")) == set(ids)


def test_an_unknown_tissue_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(InputError, match="no marker genes known for tissue 'lung'.*breast"):
        marker_genes(_section(BREAST), "lung")
    with pytest.raises(InputError, match="markers"):
        train_config("histosge", markers="lung")


def test_the_command_line_refuses_an_unknown_tissue_with_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from napari_histosge.demo import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo")
    with pytest.raises(SystemExit) as done:
        main(["train", str(demo), "--markers", "lung", "--out", str(tmp_path / "m.pt")])
    assert done.value.code == 2
    assert "argument --markers: invalid choice: 'lung'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.realdata
def test_her2st_b4s_default_genes_keep_erbb2_and_grb7(her2st_b4) -> None:
    genes = training_genes(read_spots(her2st_b4), train_config("histosge", n_top_genes=300))
    assert {"ERBB2", "GRB7"} <= set(genes) and len(genes) == 300
