"""Which genes a model trains on: the default ranking, markers always kept, lists from files, the preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig
from napari_histosge.gene_lists import parse_gene_names
from napari_histosge.io import read_spots
from napari_histosge.io.preprocess import gene_scores, normalize_log1p
from napari_histosge.models import load_model, train_config
from napari_histosge.pipeline.gene_choice import training_genes
from napari_histosge.pipeline.steps import NO_IMAGE, fit
from napari_histosge.progress import run_to_end

FAST = dict(epochs=1, head_hidden=32, dim=16, device="cpu")
POSITIONS_ONLY = FeatureConfig(extractor=NO_IMAGE)


@pytest.fixture(scope="module")
def sections(demo_section):
    return [read_spots(demo_section(seed)) for seed in (0, 1)]


def test_gene_names_come_from_text_or_from_a_file_with_comments(tmp_path: Path) -> None:
    assert parse_gene_names(" ERBB2, GRB7;KRT19\tCOL1A1\nIGKC ") == ["ERBB2", "GRB7", "KRT19", "COL1A1", "IGKC"]
    markers = tmp_path / "markers.txt"
    markers.write_text("# HER2+ markers\nERBB2\nGRB7, KRT19\n\n")
    assert parse_gene_names(str(markers)) == ["ERBB2", "GRB7", "KRT19"]
    with pytest.raises(InputError, match="gene list file does not exist") as err:
        parse_gene_names(str(tmp_path / "missing.txt"))
    assert "missing.txt" in str(err.value)


@pytest.mark.parametrize("n_names", [1, 50, 2000])
def test_gene_lists_of_any_length_are_names_not_file_names(n_names: int) -> None:
    # A long list is longer than a file name may be: asking the file system about it raised
    # "OSError: File name too long" instead of reading the names.
    names = [f"GENE{i}" for i in range(n_names)]
    assert parse_gene_names(",".join(names)) == names
    assert parse_gene_names(" , ".join(names) + " ") == names
    assert parse_gene_names("\n".join(names)) == names


def test_a_list_ending_like_a_file_name_is_still_a_list(tmp_path: Path) -> None:
    assert parse_gene_names("ERBB2, notes.txt") == ["ERBB2", "notes.txt"]
    with pytest.raises(InputError, match="gene list file does not exist"):
        parse_gene_names(str(tmp_path / "no such folder" / "markers.txt"))


def test_a_gene_file_with_a_long_path_is_read(tmp_path: Path) -> None:
    folder = tmp_path
    for i in range(12):  # a path of well over 255 characters, each part a legal name
        folder = folder / (f"part{i}_" + "x" * 30)
    folder.mkdir(parents=True)
    markers = folder / "markers with spaces.txt"
    markers.write_text("ERBB2\nGRB7\n")
    assert len(str(markers)) > 300
    assert parse_gene_names(str(markers)) == ["ERBB2", "GRB7"]


@pytest.mark.slow
def test_the_default_ranks_genes_by_spatial_structure(sections) -> None:
    adata = sections[0]
    config = train_config(n_top_genes=5)
    assert config.gene_selection == "spatial"
    moran = gene_scores(normalize_log1p(adata), "spatial")
    best = set(np.asarray(adata.var_names)[np.argsort(-moran)[:5]])
    assert set(training_genes(adata, config)) == best


def test_markers_are_always_predicted_and_the_preview_is_what_training_uses(sections) -> None:
    adata = sections[0]
    log = normalize_log1p(adata)
    weakest = str(adata.var_names[int(np.argmin(gene_scores(log, "spatial")))])
    config = train_config(n_top_genes=6, include_genes=[weakest], **FAST)
    preview = training_genes(adata, config)
    assert weakest in preview and len(preview) == 6
    model = run_to_end(fit(adata, train_config=config, feature_config=POSITIONS_ONLY))
    assert model.genes == preview


def test_several_sections_rank_genes_within_each_section_and_keep_markers(sections) -> None:
    marker = str(sections[0].var_names[3])
    config = train_config(n_top_genes=5, include_genes=[marker], **FAST)
    preview = training_genes(list(sections), config)
    assert marker in preview and len(preview) == 5
    model = run_to_end(fit(list(sections), train_config=config, feature_config=POSITIONS_ONLY))
    assert model.genes == preview


def test_gene_lists_and_markers_are_refused_together_and_unknown_markers_named(sections) -> None:
    with pytest.raises(InputError, match="not both"):
        train_config(genes=["a"], include_genes=["b"])
    with pytest.raises(InputError, match="NOTAGENE"):
        training_genes(sections[0], train_config(include_genes=["NOTAGENE"]))
    other = sections[1].copy()
    marker = str(other.var_names[0])
    with pytest.raises(InputError, match=f"gene '{marker}' is not in section"):
        training_genes([sections[0][:, [g for g in sections[0].var_names if g != marker]], other],
                       train_config(include_genes=[marker]))


@pytest.mark.slow
def test_the_command_line_takes_markers_from_a_file(demo_dir: Path, tmp_path: Path, capsys) -> None:
    data = demo_dir
    adata = read_spots(data)
    wanted = [str(adata.var_names[-1]), str(adata.var_names[-2])]
    markers = tmp_path / "markers.txt"
    markers.write_text("\n".join(["# mine", *wanted]))
    out = tmp_path / "m.pt"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1", "--n-genes", "4", "--dim", "16",
                 "--head-hidden", "32", "--extractor", "none", "--include-genes", str(markers)]) == 0
    genes = load_model(out, device="cpu").genes
    assert set(wanted) <= set(genes) and len(genes) == 4
    assert main(["train", str(data), "--out", str(tmp_path / "n.pt"), "--include-genes",
                 str(tmp_path / "nope.txt")]) == 2
    assert "gene list file does not exist" in capsys.readouterr().err


def test_a_run_that_starts_from_a_model_refuses_markers_it_does_not_predict(sections, tmp_path: Path) -> None:
    adata = sections[0]
    init = run_to_end(fit(adata, train_config=train_config(n_top_genes=4, **FAST), feature_config=POSITIONS_ONLY))
    outside = next(str(g) for g in adata.var_names if g not in init.genes)
    with pytest.raises(InputError, match=f"does not predict {outside}"):
        run_to_end(fit(adata, train_config=train_config(include_genes=[outside], **FAST),
                       feature_config=POSITIONS_ONLY, init=init))


def test_a_name_starting_with_a_tilde_is_a_gene_not_a_home_folder() -> None:
    # Found by fuzzing: "~0" asked for the home folder of a user "0" (RuntimeError: Could not determine home directory).
    assert parse_gene_names("~0, ~nouser_xyz") == ["~0", "~nouser_xyz"]


def test_symbols_asked_of_ensembl_named_data_get_a_hint() -> None:
    from napari_histosge.gene_lists import ensembl_hint, names_genes_by_ensembl_id, unknown_genes_message

    ids = [f"ENSG{n:011d}" for n in range(1, 40)] + ["ENSMUSG00000000001.3"]
    assert names_genes_by_ensembl_id(ids) and not names_genes_by_ensembl_id(["MBP", "GFAP", "ENSG00000197971"])
    message = unknown_genes_message(["MBP"], ids)
    assert "Ensembl id (e.g. ENSG00000000001)" in message and "\n" not in message
    assert ensembl_hint(["ENSG99999999999"], ids) == ""  # an unknown id: no symbol to explain
    assert ensembl_hint(["MBP"], ["GFAP", "SNAP25"]) == ""  # data named by symbol
    assert ensembl_hint(["MBP"], []) == ""


def _named_by_id(adata, *, symbols: bool):
    """``adata`` with genes renamed to (made-up) Ensembl ids; ``symbols``: the table attached, as read_spots does."""
    from napari_histosge.io.gene_names import attach_gene_names

    table = {f"ENSG{900000 + i:011d}": str(g) for i, g in enumerate(adata.var_names)}
    out = adata.copy()
    out.var_names = list(table)
    if symbols:
        attach_gene_names(out, table)
    return out, table


def test_sections_named_by_id_and_by_symbol_are_one_gene_space(sections) -> None:
    by_id, table = _named_by_id(sections[0], symbols=True)
    config = train_config(n_top_genes=6, include_genes=["GENE03"], **FAST)  # a symbol of both sections
    genes = training_genes([by_id, sections[1]], config)
    assert len(genes) == 6 and "ENSG00000900003" in genes and set(genes) <= set(table)  # named as the first
    back = training_genes([sections[1], by_id], config)
    assert len(back) == 6 and "GENE03" in back and set(back) <= set(table.values())
    from napari_histosge.pipeline.gene_choice import section_names, stack_sections

    combined, _ = stack_sections([by_id, sections[1]], section_names([by_id, sections[1]]), config)
    assert combined.n_vars == sections[0].n_vars and combined.var["gene_symbols"]["ENSG00000900003"] == "GENE03"


def test_sections_all_named_by_id_take_symbols_from_their_table(sections) -> None:
    first, _ = _named_by_id(sections[0], symbols=True)
    second, _ = _named_by_id(sections[1], symbols=True)
    genes = training_genes([first, second], train_config(genes=["GENE01", "GENE05"], **FAST))
    assert genes == ["ENSG00000900001", "ENSG00000900005"]


def test_sections_named_differently_with_no_table_are_one_line_naming_the_table(sections) -> None:
    by_id, _ = _named_by_id(sections[0], symbols=False)
    with pytest.raises(InputError, match=r"names genes by Ensembl id .* by symbol.*--gene-names TABLE"):
        training_genes([by_id, sections[1]], train_config(n_top_genes=6, **FAST))


def _marker_repro_sections(n_other: int = 400):
    """A section named by id (the markers' ids and others) and the same genes named by symbol, no table."""
    import anndata as ad
    import pandas as pd

    from napari_histosge.io.markers import marker_symbols

    markers = {i: s for i, s in marker_symbols().items() if i.startswith("ENSG")}
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(60, len(markers) + n_other)).astype(np.float32)
    spatial = rng.uniform(0, 1000, size=(60, 2))

    def section(names, library_id):
        adata = ad.AnnData(counts.copy(), var=pd.DataFrame(index=names))
        adata.obsm["spatial"] = spatial.copy()
        adata.uns["histosge"] = {"library_id": library_id}
        return adata

    by_id = section([*markers, *(f"ENSG{800000 + i:011d}" for i in range(n_other))], "A")
    by_symbol = section([*markers.values(), *(f"OTHER{i}" for i in range(n_other))], "B")
    return by_id, by_symbol


def test_the_markers_fallback_symbols_never_match_sections() -> None:
    # The markers' few symbols (MBP for ENSG00000197971) on data named by id without a table matched
    # as many genes of a section named by symbol, and the run trained silently on those few.
    from napari_histosge.io.markers import attach_marker_symbols
    from napari_histosge.io.preprocess import resolve_gene

    by_id, by_symbol = _marker_repro_sections()
    assert attach_marker_symbols(by_id) > 0 and resolve_gene(by_id, "MBP") == "ENSG00000197971"
    with pytest.raises(InputError, match=r"names genes by Ensembl id .* by symbol.*--gene-names TABLE"):
        training_genes([by_id, by_symbol], train_config("histosge", n_top_genes=30, **FAST))


def test_sections_named_differently_sharing_under_half_their_genes_are_refused(sections) -> None:
    # A table naming a few genes links a section named by id to one named by symbol on those few only.
    from napari_histosge.io.gene_names import attach_gene_names

    by_id, table = _named_by_id(sections[0], symbols=False)
    attach_gene_names(by_id, dict(list(table.items())[:2]))
    with pytest.raises(InputError, match=r"share only 2 of \d+ genes.*--gene-names TABLE"):
        training_genes([by_id, sections[1]], train_config(n_top_genes=2, **FAST))


def test_sections_named_alike_may_share_few_genes(sections) -> None:
    # Sections of one naming measure other genes (DLPFC's filtered tables share under half): not refused.
    from napari_histosge.pipeline.gene_choice import section_names, stack_sections

    renamed = sections[1].copy()
    renamed.var_names = [*sections[1].var_names[:4], *(f"X{i}" for i in range(renamed.n_vars - 4))]
    pair = [sections[0], renamed]
    combined, _ = stack_sections(pair, section_names(pair), train_config(n_top_genes=2, **FAST))
    assert list(combined.var_names) == list(sections[0].var_names[:4])


def test_symbols_of_two_ids_are_left_out_of_the_shared_genes_with_a_warning(sections) -> None:
    # In symbol mode a symbol of two ids resolved silently to the first of them.
    from napari_histosge.io.gene_names import attach_gene_names
    from napari_histosge.pipeline.gene_choice import section_names, stack_sections

    by_id, table = _named_by_id(sections[0], symbols=False)
    twice = dict(table)
    first, second = list(table)[:2]
    twice[second] = twice[first]  # GENE00's symbol on GENE01's id too
    attach_gene_names(by_id, twice)
    config = train_config(n_top_genes=6, **FAST)
    pair = [by_id, sections[1]]
    with pytest.warns(UserWarning, match=r"1 symbols that name two genes of a section were left out"):
        combined, _ = stack_sections(pair, section_names(pair), config)
    assert first not in combined.var_names and second not in combined.var_names
    assert combined.n_vars == sections[0].n_vars - 2
