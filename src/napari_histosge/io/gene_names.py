"""Ensembl gene ids and gene symbols: a two-column table, read from the data or given by the user.

Some data name genes by Ensembl id only (DLPFC's matrices: ``ENSG00000197971``), others by
symbol with the ids in a table beside the counts (STUtility's ``<S>_genes.tsv``). A user
types symbols (MBP) and reads them in legends. A table of ids and symbols attached to a
section (:func:`attach_gene_names`) adds the other name of each gene to ``var``:
``var["gene_symbols"]`` for data named by id, ``var["gene_ids"]`` for data named by symbol,
so :func:`napari_histosge.io.preprocess.resolve_gene` takes either name and
:func:`gene_label` shows the symbol.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import zlib
from pathlib import Path

from ..errors import InputError
from ..gene_lists import names_genes_by_ensembl_id

__all__ = ["GENE_TABLE_NAMES", "MARKER_FALLBACK", "SYMBOLS_FROM", "attach_gene_names",
           "find_gene_table", "gene_keys", "gene_label", "read_gene_table"]

#: Table files looked for in a section's folder: ``<section>_genes.tsv`` (STUtility), these names, 10x features.
GENE_TABLE_NAMES = ("gene_names.tsv", "gene_names.csv", "features.tsv.gz", "features.tsv", "genes.tsv")
#: Where ``uns["histosge"]`` records that a section's symbols are only the known markers' ...
SYMBOLS_FROM = "gene_symbols_from"
#: ... symbols (:func:`napari_histosge.io.markers.attach_marker_symbols`), not a table of all its genes.
MARKER_FALLBACK = "markers"
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def _rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # a truncated .gz raises EOFError, a damaged one zlib.error
        raise InputError(f"the gene name table cannot be read ({getattr(exc, 'strerror', None) or exc})",
                         path) from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    sample = "\n".join(lines[:20])
    delimiter = "\t" if "\t" in sample else "," if "," in sample else None
    if delimiter is None:
        return [line.split() for line in lines]
    return [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]


def read_gene_table(path: str | os.PathLike) -> dict[str, str]:
    """``{Ensembl id: symbol}`` from a table of two (or more) columns, one of them Ensembl ids.

    Tab, comma or space separated, with or without a header line, gzipped or not; the id
    column is the one most of whose values are Ensembl ids, the symbol the next column that
    is not (a 10x ``features.tsv``: id, name, type). Versions (``ENSG....5``) are dropped.

    Raises
    ------
    InputError
        If the file is missing or unreadable, has fewer than two columns, or no column of
        Ensembl ids.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError("the gene name table does not exist", path)
    rows = _rows(path)
    width = min((len(r) for r in rows), default=0)
    if width < 2:
        raise InputError("the gene name table needs two columns, Ensembl id and symbol (tab or comma separated)",
                         path)
    share = [sum(bool(_ENSEMBL.match(r[c])) for r in rows) / len(rows) for c in range(width)]
    id_col = max(range(width), key=lambda c: share[c])
    if share[id_col] < 0.5:
        raise InputError("the gene name table has no column of Ensembl ids (e.g. ENSG00000197971)", path)
    # A symbol column has letters: a row index (pandas' to_csv) or a count column is not one.
    name_col = next((c for c in range(width) if c != id_col and share[c] < 0.5
                     and sum(any(ch.isalpha() for ch in r[c]) for r in rows) / len(rows) >= 0.5), None)
    if name_col is None:
        raise InputError("the gene name table has no column of gene symbols beside its Ensembl ids", path)
    table: dict[str, str] = {}
    for r in rows:
        if _ENSEMBL.match(r[id_col]) and r[name_col]:
            table.setdefault(r[id_col].split(".")[0], r[name_col])
    return table


def find_gene_table(path: str | os.PathLike) -> Path | None:
    """A table of gene ids and symbols shipped with the section at ``path`` (its folder), if any."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    candidates = [folder / f"{folder.name}_genes.tsv", *(folder / n for n in GENE_TABLE_NAMES),
                  *(folder / "filtered_feature_bc_matrix" / n for n in ("features.tsv.gz", "features.tsv"))]
    return next((c for c in candidates if c.is_file()), None)


def attach_gene_names(adata, table: dict[str, str]) -> int:
    """Add each gene's other name from ``table`` (``{id: symbol}``) to ``adata.var``; returns how many matched.

    Data named by Ensembl id get ``var["gene_symbols"]`` (the id where the table has none);
    data named by symbol get ``var["gene_ids"]`` where they have none yet.
    """
    names = [str(g) for g in adata.var_names]
    if names_genes_by_ensembl_id(names):
        symbols = [table.get(n.split(".")[0], "") for n in names]
        adata.var["gene_symbols"] = [s or n for s, n in zip(symbols, names, strict=True)]
        (adata.uns.get("histosge") or {}).pop(SYMBOLS_FROM, None)  # a table's symbols, not the markers' fallback
        return sum(bool(s) for s in symbols)
    if "gene_ids" in adata.var:
        return 0
    by_symbol: dict[str, str] = {}
    for gene_id, symbol in table.items():
        by_symbol.setdefault(symbol, gene_id)
    ids = [by_symbol.get(n, "") for n in names]
    adata.var["gene_ids"] = [i or n for i, n in zip(ids, names, strict=True)]
    return sum(bool(i) for i in ids)


def gene_keys(adata, *, fallback_symbols: bool = False) -> tuple[list[str], list[str]]:
    """Each gene's Ensembl id (without version) and symbol, ``""`` where the data do not know it.

    Data named by id know a symbol where a table was attached (``var["gene_symbols"]``);
    data named by symbol know an id where the reader or a table gave ``var["gene_ids"]``.
    Several sections are matched on these keys when they name their genes differently.
    The known markers' symbols, the fallback of data without a table (``uns["histosge"]``
    ``SYMBOLS_FROM``), count as unknown unless ``fallback_symbols``: a few dozen symbols
    must not stand for a section's gene space.
    """
    names = [str(g) for g in adata.var_names]
    if names_genes_by_ensembl_id(names):
        ids = [n.split(".")[0] for n in names]
        from_markers = (adata.uns.get("histosge") or {}).get(SYMBOLS_FROM) == MARKER_FALLBACK
        known = "gene_symbols" in adata.var and (fallback_symbols or not from_markers)
        symbols = [str(s) for s in adata.var["gene_symbols"]] if known else names
        return ids, [s if s != n else "" for s, n in zip(symbols, names, strict=True)]
    given = [str(i) for i in adata.var["gene_ids"]] if "gene_ids" in adata.var else [""] * len(names)
    return [i.split(".")[0] if _ENSEMBL.match(i) else "" for i in given], names


def gene_label(adata, gene: str) -> str:
    """How ``gene`` (a ``var_name``) is shown: its symbol where the data name it by id and know the symbol."""
    if adata is None or "gene_symbols" not in adata.var or gene not in adata.var_names:
        return gene
    symbol = str(adata.var["gene_symbols"].iloc[adata.var_names.get_loc(gene)])
    return symbol if symbol and symbol != gene else gene
