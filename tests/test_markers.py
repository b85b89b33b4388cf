"""Known marker genes: the default gene choice keeps a tissue's markers that the section expresses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.io import read_spots
from napari_histosge.io.markers import (
    MARKER_CAP,
    choose_tissue,
    marker_genes,
    section_species,
    tissue_markers,
    tissues,
)
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


def test_the_command_line_refuses_an_unknown_tissue_with_exit_2(capsys: pytest.CaptureFixture[str], tmp_path,
                                                               demo_dir) -> None:
    demo = demo_dir
    with pytest.raises(SystemExit) as done:
        main(["train", str(demo), "--markers", "lung", "--out", str(tmp_path / "m.pt")])
    assert done.value.code == 2
    assert "argument --markers: invalid choice: 'lung'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.realdata
def test_her2st_b4s_default_genes_keep_erbb2_and_grb7(her2st_b4) -> None:
    genes = training_genes(read_spots(her2st_b4), train_config("histosge", n_top_genes=300))
    assert {"ERBB2", "GRB7"} <= set(genes) and len(genes) == 300


def test_auto_scores_a_tissue_by_the_share_of_its_markers_not_by_its_tables_length() -> None:
    # A human cortex named by symbol: its layer and glia markers, and the vessels' and microglia's genes
    # that the breast table lists too (as it lists every tissue's immune and stromal cells).
    brain = {g: 30.0 for g in ("MBP", "PLP1", "MOBP", "SNAP25", "GFAP", "NRGN", "ENC1", "PCP4")}
    shared = {g: 30.0 for g in ("CD74", "HLA-DRA", "MGP", "VWF", "FN1", "COL1A1", "COL3A1", "PTPRC", "LYZ",
                                "CD68")}
    log = _section({**brain, **shared})
    assert choose_tissue(log) == "brain-cortex"
    kept = marker_genes(log, "auto", n_top=100)
    assert set(kept) <= set(brain) and "CD74" not in kept  # no breast marker chosen for a cortex


def test_auto_keeps_to_the_sections_species() -> None:
    human = _section(BREAST)
    mouse = _section({"Mbp": 30.0, "Plp1": 30.0, "Fabp7": 20.0, "Penk": 20.0},
                     var=pd.DataFrame(index=["Mbp", "Plp1", "Fabp7", "Penk", *(f"Gm{i}" for i in range(200))]))
    assert section_species(human) == "human" and section_species(mouse) == "mouse"
    assert choose_tissue(mouse) == "olfactory-bulb" and choose_tissue(human) == "breast"
    by_id = _section({"ENSMUSG00000041607": 30.0}, n_other=5,
                     var=pd.DataFrame(index=["ENSMUSG00000041607", *(f"ENSMUSG{i:011d}" for i in range(5))]))
    assert section_species(by_id) == "mouse"


@pytest.mark.realdata
def test_auto_picks_the_olfactory_bulb_on_mob_and_the_cortex_on_dlpfc(real_data) -> None:
    mob = normalize_log1p(read_spots(real_data / "stutility_mob" / "MOB1"))  # mouse symbols, ids in a table
    assert section_species(mob) == "mouse" and choose_tissue(mob) == "olfactory-bulb"
    mob_markers = {m.symbol for m in tissue_markers("olfactory-bulb")}
    assert set(marker_genes(mob, "auto", n_top=300)) <= mob_markers
    dlpfc = normalize_log1p(read_spots(real_data / "dlpfc" / "151676"))  # Ensembl ids only
    assert section_species(dlpfc) == "human" and choose_tissue(dlpfc) == "brain-cortex"
    cortex_ids = {m.ensembl_id for m in tissue_markers("brain-cortex")}
    kept = marker_genes(dlpfc, "auto", n_top=300)
    assert kept and set(kept) <= cortex_ids
    b4 = normalize_log1p(read_spots(real_data / "her2st" / "B4"))
    assert section_species(b4) == "human" and choose_tissue(b4) == "breast"


def test_auto_picks_breast_for_a_basal_like_section_whatever_the_shorter_table() -> None:
    # Basal-like breast: keratins 5/14/17, luminal 8/19, and FABP7 and ENC1, which the cortex table lists too.
    # Scored by the share of a table's markers on top, the cortex's 3 of 23 beat the breast's 5 of 44.
    basal = {g: 40.0 for g in ("KRT17", "FABP7", "ENC1", "KRT5", "KRT14", "KRT8", "KRT19")}
    log = _section({**basal, **{f"LOW{i:03d}": 1.0 for i in range(200)}}, n_other=0)
    assert choose_tissue(log) == "breast"
    assert set(marker_genes(log, "auto", n_top=100)) <= {m.symbol for m in tissue_markers("breast")}
