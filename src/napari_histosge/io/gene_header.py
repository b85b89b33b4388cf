"""The genes a section measures, from the counts' header only: names checked before any work.

Every format names its genes in a few bytes at the head of its counts (a table's first
line, a 10x matrix's features, an AnnData's ``var`` index), so a misspelled gene is refused
in a fraction of a second instead of after the image features were computed. Standard
library only, plus h5py or zarr for the formats stored in them (imported when read).

A header that cannot be read this way gives ``None``: the reader checks the genes when it
reads the section, with the same message.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .detect import BIN_FOLDER, counts_files, detect_format, selection_files

__all__ = ["MeasuredGenes", "measured_genes"]

#: An ST v1 spot id, ``"<x>x<y>"``: a header of these is a table stored genes x spots.
SPOT_ID = re.compile(r"^\d+(\.\d+)?x\d+(\.\d+)?$")
#: A name the readers make unique by a suffix (``GENE-1``): AnnData's ``var_names_make_unique``.
MADE_UNIQUE = re.compile(r"^(.+)-\d+$")


@dataclass(frozen=True)
class MeasuredGenes:
    """The gene names of a section's counts (``var_names``) and the gene ids that stand for them."""

    names: tuple[str, ...]
    ids: frozenset[str]  # lower case: ids match in any case, as the readers match them

    def unknown(self, requested: Iterable[str]) -> list[str]:
        """The names of ``requested`` that are neither a gene name nor a gene id of the section."""
        names = set(self.names)

        def known(gene: str) -> bool:
            base = MADE_UNIQUE.match(gene)
            return gene in names or gene.lower() in self.ids or (base is not None and base.group(1) in names)

        return [g for g in requested if not known(g)]


def measured_genes(path: str | os.PathLike, *, bin_um: int | None = None) -> MeasuredGenes | None:
    """The genes section ``path`` measures, from its header; ``None`` when no header can be read cheaply."""
    path = Path(path)
    try:
        fmt = detect_format(path)
        if fmt == "st_v1":
            return _st_v1(path)
        if fmt == "spaceranger":
            return _tenx(path)
        if fmt == "visium_hd":
            return _visium_hd(path, bin_um)
        if fmt == "h5ad":
            return _h5ad(path)
        if fmt == "spatialdata":
            return _spatialdata(path)
    except Exception:  # noqa: BLE001 - any unreadable header: the reader reports the file when it reads it
        return None
    return None


def _st_v1(folder: Path) -> MeasuredGenes | None:
    tables, selections = counts_files(folder), selection_files(folder)
    if len(selections) != 1:
        return None
    stem = selections[0].name[: -len("_selection.tsv")]
    named = [p for p in tables if p.name.split(".")[0] == stem]
    table = tables[0] if len(tables) == 1 else named[0] if len(named) == 1 else None
    if table is None:
        return None
    opener: Any = gzip.open if table.name.endswith(".gz") else open
    with opener(table, "rt", encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")[1:]
    if not header or sum(bool(SPOT_ID.match(h)) for h in header) > len(header) // 2:
        return None  # stored genes x spots: the genes are the rows
    return MeasuredGenes(tuple(h.strip('"') for h in header), frozenset())


def _tenx(folder: Path) -> MeasuredGenes | None:
    h5 = folder / "filtered_feature_bc_matrix.h5"
    if h5.is_file():
        return _tenx_h5(h5)
    mtx = folder / "filtered_feature_bc_matrix"
    for name in ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"):
        if (mtx / name).is_file():
            opener: Any = gzip.open if name.endswith(".gz") else open
            with opener(mtx / name, "rt", encoding="utf-8") as fh:
                rows = [line.rstrip("\r\n").split("\t") for line in fh if line.strip()]
            return MeasuredGenes(tuple(r[1] if len(r) > 1 else r[0] for r in rows),
                                 frozenset(r[0].lower() for r in rows))
    return None


def _tenx_h5(path: Path) -> MeasuredGenes | None:
    import h5py

    with h5py.File(path, "r") as f:
        if "matrix" in f:  # Cell Ranger 3 and later
            features = f["matrix"]["features"]
            names, ids = features["name"][:], features["id"][:]
        else:  # Cell Ranger 2: one group per genome
            genome = f[next(iter(f.keys()))]
            names, ids = genome["gene_names"][:], genome["genes"][:]
    return MeasuredGenes(tuple(_text(n) for n in names), frozenset(_text(i).lower() for i in ids))


def _visium_hd(folder: Path, bin_um: int | None) -> MeasuredGenes | None:
    if BIN_FOLDER.match(folder.name):
        bins = {int(BIN_FOLDER.match(folder.name).group(1)): folder}  # type: ignore[union-attr]
    else:
        root = folder if folder.name == "binned_outputs" else folder / "binned_outputs"
        bins = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := BIN_FOLDER.match(p.name))}
    chosen = bins.get(bin_um) if bin_um is not None else bins.get(16) or bins.get(8)
    return None if chosen is None else _tenx(chosen)


def _h5ad(path: Path) -> MeasuredGenes | None:
    import h5py

    with h5py.File(path, "r") as f:
        var = f["var"]
        names = _column(var, str(var.attrs["_index"]))
        ids = _column(var, "gene_ids") if "gene_ids" in var else []
    return MeasuredGenes(tuple(names), frozenset(i.lower() for i in ids))


def _spatialdata(store: Path) -> MeasuredGenes | None:
    import zarr

    tables = store / "tables"
    found = [p for p in sorted(tables.iterdir()) if (p / "var").is_dir()] if tables.is_dir() else []
    if len(found) != 1:  # which table is read depends on its annotation: the reader checks
        return None
    var = zarr.open_group(str(found[0] / "var"), mode="r")
    names = _column(var, str(var.attrs["_index"]))
    ids = _column(var, "gene_ids") if "gene_ids" in var else []
    return MeasuredGenes(tuple(names), frozenset(i.lower() for i in ids))


def _column(group: Any, name: str) -> list[str]:
    """One string column of an AnnData ``var`` group (plain, or categorical: codes into categories)."""
    column = group[name]
    if hasattr(column, "keys") and "categories" in column:
        categories = [_text(c) for c in column["categories"][:]]
        return [categories[int(c)] if int(c) >= 0 else "" for c in column["codes"][:]]
    return [_text(v) for v in column[:]]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
