"""A table of Ensembl ids and gene symbols given in the Gene viewer, attached to the open layers' data.

The core's :mod:`napari_histosge.io.gene_names` reads it and adds each gene's other name to
a section's ``var``; here it reaches every spots and prediction layer open now (and those
added later, through :func:`attach_to_layer`), so a symbol typed in the Gene viewer finds a
gene of data named by Ensembl id and the legend names the symbol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .layers import histosge_meta, layers_with_role


def load_gene_table(viewer: Any, path: str | Path, roles: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """Read the table at ``path`` and attach it to the data of ``viewer``'s layers of ``roles``.

    Returns the table and a one-line summary for the status line.

    Raises
    ------
    InputError
        For a missing file or a table without a column of Ensembl ids and one of symbols.
    """
    from ...io.gene_names import read_gene_table

    table = read_gene_table(path)
    named, total = 0, 0
    for adata in _layer_data(viewer, roles):
        named += attach_to_adata(adata, table)
        total += adata.n_vars
    return table, f"gene names: {len(table)} ids in {Path(path).name}; {named} of the open layers' {total} genes named"


def attach_to_layer(layer: Any, table: dict[str, str] | None) -> None:
    """Name the genes of a newly added ``layer`` by the table loaded earlier (if any)."""
    adata = histosge_meta(layer).get("adata")
    if table and adata is not None:
        attach_to_adata(adata, table)


def attach_to_adata(adata: Any, table: dict[str, str]) -> int:
    """The core's :func:`~napari_histosge.io.gene_names.attach_gene_names` (imported when first used)."""
    from ...io.gene_names import attach_gene_names

    return attach_gene_names(adata, table)


def _layer_data(viewer: Any, roles: tuple[str, ...]) -> list[Any]:
    """Each distinct AnnData behind the viewer's layers of ``roles`` (layers share their section's)."""
    seen: dict[int, Any] = {}
    for layer in layers_with_role(viewer.layers, *roles):
        adata = histosge_meta(layer).get("adata")
        if adata is not None:
            seen.setdefault(id(adata), adata)
    return list(seen.values())


def gene_symbols_of(viewer: Any, roles: tuple[str, ...]) -> set[str]:
    """The symbols known for the genes of ``viewer``'s layers of ``roles`` (for the completer)."""
    return {str(s) for adata in _layer_data(viewer, roles) if "gene_symbols" in adata.var
            for s in adata.var["gene_symbols"]}
