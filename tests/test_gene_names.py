"""Ensembl ids and gene symbols: a table from the data or the user lets symbols name genes of data named by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.io import read_spots
from napari_histosge.io.gene_names import attach_gene_names, find_gene_table, gene_label, read_gene_table
from napari_histosge.io.preprocess import resolve_gene
from napari_histosge.models import load_model

IDS = {"ENSG00000197971": "MBP", "ENSG00000183036": "PCP4", "ENSG00000132639": "SNAP25"}


def _by_id(n_spots: int = 4) -> AnnData:
    return AnnData(np.ones((n_spots, len(IDS)), np.float32), var=pd.DataFrame(index=list(IDS)))


@pytest.mark.parametrize(("text", "name"), [
    ("gene_id\tgene_name\nENSG00000197971.5\tMBP\nENSG00000183036\tPCP4\nENSG00000132639\tSNAP25\n", "a.tsv"),
    ("MBP,ENSG00000197971\nPCP4,ENSG00000183036\nSNAP25,ENSG00000132639\n", "b.csv"),  # symbol first, no header
    ("ENSG00000197971\tMBP\tGene Expression\nENSG00000183036\tPCP4\tGene Expression\n"
     "ENSG00000132639\tSNAP25\tGene Expression\n", "features.tsv"),  # a 10x features file
])
def test_a_table_is_read_whatever_its_column_order_header_or_separator(tmp_path: Path, text: str, name: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert read_gene_table(path) == IDS


@pytest.mark.parametrize(("text", "message"), [
    ("MBP\nPCP4\n", "needs two columns"),
    ("MBP\tmyelin\nPCP4\tlayer 5\n", "no column of Ensembl ids"),
    ("ENSG00000197971\tENSG00000197971\n", "no column of gene symbols"),
])
def test_a_bad_table_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_gene_table(path)
    assert len(str(err.value).splitlines()) == 1 and "bad.tsv" in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        read_gene_table(tmp_path / "missing.tsv")


def test_symbols_name_the_genes_of_data_named_by_id_and_label_them() -> None:
    adata = _by_id()
    assert resolve_gene(adata, "MBP") is None  # without a table a symbol finds nothing
    assert attach_gene_names(adata, IDS) == 3
    assert resolve_gene(adata, "MBP") == "ENSG00000197971"
    assert resolve_gene(adata, "pcp4") == "ENSG00000183036"  # any case, as gene ids
    assert gene_label(adata, "ENSG00000132639") == "SNAP25"
    assert gene_label(_by_id(), "ENSG00000132639") == "ENSG00000132639"  # no table: the id


def test_data_named_by_symbol_get_the_ids_of_the_table() -> None:
    adata = AnnData(np.ones((2, 2), np.float32), var=pd.DataFrame(index=["MBP", "OTHER"]))
    assert attach_gene_names(adata, IDS) == 1
    assert resolve_gene(adata, "ENSG00000197971") == "MBP"
    assert gene_label(adata, "MBP") == "MBP"


def _section_by_id(folder: Path) -> tuple[Path, dict[str, str]]:
    """The demo section with its genes renamed to (made-up) Ensembl ids, and a table naming them."""
    counts = pd.read_csv(folder / "demo.tsv.gz", sep="\t", index_col=0)
    table = {f"ENSG{900000 + i:011d}": str(g) for i, g in enumerate(counts.columns)}
    counts.columns = list(table)
    counts.to_csv(folder / "demo.tsv.gz", sep="\t")
    return folder, table


def test_read_spots_takes_a_table_shipped_with_the_data_or_given(tmp_path: Path, demo_copy) -> None:
    folder, table = _section_by_id(demo_copy())
    assert find_gene_table(folder) is None
    given = tmp_path / "names.csv"
    given.write_text("\n".join(f"{i},{s}" for i, s in table.items()))
    adata = read_spots(folder, gene_names=given)
    assert resolve_gene(adata, "GENE03") == "ENSG00000900003"
    (folder / "gene_names.tsv").write_text("\n".join(f"{i}\t{s}" for i, s in table.items()))
    assert find_gene_table(folder) == folder / "gene_names.tsv"
    assert resolve_gene(read_spots(folder), "GENE03") == "ENSG00000900003"


def test_the_command_line_trains_on_symbols_of_data_named_by_id(tmp_path: Path, demo_copy, capsys) -> None:
    folder, table = _section_by_id(demo_copy())
    names = tmp_path / "names.tsv"
    names.write_text("gene_id\tgene_name\n" + "\n".join(f"{i}\t{s}" for i, s in table.items()))
    model = tmp_path / "m.pt"
    args = ["train", str(folder), "--genes", "GENE01,GENE05", "--epochs", "1", "--extractor", "none",
            "--out", str(model), "--quiet"]
    assert main(args) == 2  # the symbols alone are not in the data
    assert "Ensembl id" in capsys.readouterr().err
    assert main([*args, "--gene-names", str(names)]) == 0
    assert load_model(model, device="cpu").genes == ["ENSG00000900001", "ENSG00000900005"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("GENE01\n")
    assert main([*args[:-3], "--out", str(tmp_path / "n.pt"), "--gene-names", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs two columns" in err[0]
    assert not (tmp_path / "n.pt").exists()


@pytest.mark.realdata
def test_mob_ships_its_table_and_dlpfc_takes_a_users(real_data: Path, tmp_path: Path) -> None:
    mob = read_spots(real_data / "stutility_mob" / "MOB1")
    assert resolve_gene(mob, "ENSMUSG00000064339") == "mt-Rnr2"  # the first row of MOB1_genes.tsv
    names = tmp_path / "names.tsv"
    names.write_text("\n".join(f"{i}\t{s}" for i, s in IDS.items()))
    dlpfc = read_spots(real_data / "dlpfc" / "151676", gene_names=names)
    assert resolve_gene(dlpfc, "MBP") == "ENSG00000197971"


def test_a_truncated_gzipped_table_is_one_line(tmp_path: Path) -> None:
    import gzip

    whole = gzip.compress(b"ENSG00000197971\tMBP\nENSG00000123560\tPLP1\n" * 200)
    table = tmp_path / "features.tsv.gz"
    table.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cannot be read"):
        read_gene_table(table)


def test_a_pandas_row_index_is_not_taken_for_the_symbols(tmp_path: Path) -> None:
    table = tmp_path / "genes.csv"
    pd.DataFrame({"gene_id": ["ENSG00000197971", "ENSG00000123560"], "symbol": ["MBP", "PLP1"]}).to_csv(table)
    assert read_gene_table(table) == {"ENSG00000197971": "MBP", "ENSG00000123560": "PLP1"}


def test_a_symbol_of_two_ids_is_one_line_naming_both() -> None:
    # The symbol resolved silently to the first of its ids.
    adata = AnnData(np.ones((2, 3), np.float32), var=pd.DataFrame(index=["ENSG00000197971", "ENSG00000999999",
                                                                         "ENSG00000183036"]))
    attach_gene_names(adata, {"ENSG00000197971": "MBP", "ENSG00000999999": "MBP", "ENSG00000183036": "PCP4"})
    assert resolve_gene(adata, "PCP4") == "ENSG00000183036"
    with pytest.raises(InputError, match=r"'MBP' names 2 genes .*ENSG00000197971, ENSG00000999999") as err:
        resolve_gene(adata, "MBP")
    assert "\n" not in str(err.value)


def test_the_command_line_refuses_a_symbol_of_two_ids_in_one_line(tmp_path: Path, demo_copy, capsys) -> None:
    folder, table = _section_by_id(demo_copy())
    first, second = list(table)[1:3]
    names = tmp_path / "names.tsv"
    names.write_text("\n".join(f"{i}\t{table[first] if i == second else s}" for i, s in table.items()))
    model = tmp_path / "m.pt"
    args = ["train", str(folder), "--genes", f"{table[first]},GENE05", "--epochs", "1", "--extractor", "none",
            "--out", str(model), "--quiet", "--gene-names", str(names)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and first in err[0] and second in err[0]
    assert not model.exists()
