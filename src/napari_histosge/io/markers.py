"""Known marker genes per tissue, and which of them a section's default gene choice always keeps.

The table (``napari_histosge/data/tissue_markers.tsv``) lists, per tissue, the genes a
biologist names for it (a HER2+ breast tumour's ERBB2 and GRB7, a cortex's layer markers, an
olfactory bulb's layer markers), by symbol and, where data name genes by Ensembl id, by id.
A ranking by spatial structure or dispersion alone can leave such genes out of a few hundred;
:func:`marker_genes` picks the markers a section expresses so that the gene choice
(:func:`napari_histosge.io.preprocess.select_genes`) keeps them besides the ranked genes.
The markers known by id also give data named by Ensembl id their symbols where no table
of ids and symbols does (:func:`attach_marker_symbols`, :func:`attach_recorded_symbols`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..gene_lists import names_genes_by_ensembl_id
from .gene_names import MARKER_FALLBACK, SYMBOLS_FROM, attach_gene_names, find_gene_table, gene_keys, read_gene_table

__all__ = ["MARKER_CAP", "TissueMarker", "attach_marker_symbols", "attach_recorded_symbols", "choose_tissue",
           "marker_genes", "marker_symbols", "section_species", "tissue_markers", "tissues"]

#: At most this many markers are always kept (and at most a quarter of the genes asked for).
MARKER_CAP = 24
#: ``auto`` needs at least this many of a tissue's own markers among a section's most expressed genes.
MIN_TISSUE_MARKERS = 3
#: ``auto`` counts a tissue's markers among this share of a section's genes, highest mean first.
TOP_EXPRESSED_SHARE = 0.1
#: A section is of a species when more than this share of its Ensembl ids, or of its symbols, say so.
SPECIES_SHARE = 0.7
#: A marker is kept only when detected in at least this share of the spots ...
MIN_DETECTED_SHARE = 0.05
#: ... and in at least this many spots (a marker seen in two spots is noise, not the tissue).
MIN_DETECTED_SPOTS = 10


@dataclass(frozen=True)
class TissueMarker:
    """One row of the marker table: a tissue's marker gene and what it marks."""

    tissue: str
    species: str
    symbol: str
    ensembl_id: str
    marks: str


@lru_cache(maxsize=1)
def _table() -> tuple[TissueMarker, ...]:
    text = resources.files("napari_histosge").joinpath("data/tissue_markers.tsv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple(TissueMarker(**{k: (v or "").strip() for k, v in row.items()})
                 for row in csv.DictReader(lines, delimiter="\t"))


def marker_symbols() -> dict[str, str]:
    """``{Ensembl id: symbol}`` of every marker the table names by id too: symbols for data named by id."""
    return {m.ensembl_id: m.symbol for m in _table() if m.ensembl_id}


def attach_marker_symbols(adata) -> int:
    """Symbols of the known markers (:func:`marker_symbols`) for data named by id.

    The fallback where no table of ids and symbols was given or shipped: a user typing MBP
    on data named by Ensembl id finds ENSG00000197971. Data named by symbol, or already
    holding ``var["gene_symbols"]``, are left as they are; returns how many genes got a symbol.
    These few symbols are marked as the fallback (``uns["histosge"]["gene_symbols_from"]``):
    sections are never matched on them (:mod:`napari_histosge.pipeline.gene_choice`).
    """
    names = [str(g) for g in adata.var_names]
    if "gene_symbols" in adata.var or not names_genes_by_ensembl_id(names):
        return 0
    table = marker_symbols()
    if not any(n.split(".")[0] in table for n in names):
        return 0
    attached = attach_gene_names(adata, table)
    adata.uns.setdefault("histosge", {})[SYMBOLS_FROM] = MARKER_FALLBACK
    return attached


def attach_recorded_symbols(adata, table: str | os.PathLike | None = None) -> int:
    """Symbols for a file read back (predictions, spots) whose genes are named by id; returns how many.

    From ``table`` (:func:`read_gene_table`) where given; else from a table shipped with a
    section the file records (``uns["histosge"]``: ``source``, ``training_sources``), else
    from the known markers (:func:`attach_marker_symbols`). Symbols the file holds already
    are kept unless ``table`` is given.

    Raises
    ------
    InputError
        If ``table`` is given and cannot be read as a table of ids and symbols.
    """
    if table is not None:
        given = read_gene_table(table)
        return attach_gene_names(adata, given) if names_genes_by_ensembl_id(list(map(str, adata.var_names))) else 0
    if "gene_symbols" in adata.var or not names_genes_by_ensembl_id([str(g) for g in adata.var_names]):
        return 0
    info = adata.uns.get("histosge", {}) or {}
    recorded = [str(info.get("source") or ""), *map(str, info.get("training_sources") or [])]
    for source in (part.strip() for text in recorded for part in text.split(";")):  # several sections: "a; b"
        shipped = find_gene_table(source) if source and Path(source).exists() else None
        if shipped is not None:
            try:
                return attach_gene_names(adata, read_gene_table(shipped))
            except InputError:  # a features file of another layout: try the next
                continue
    return attach_marker_symbols(adata)


def tissues() -> list[str]:
    """The tissues the marker table knows, in its order."""
    return list(dict.fromkeys(m.tissue for m in _table()))


def tissue_markers(tissue: str) -> list[TissueMarker]:
    """The markers of ``tissue`` in the table's order.

    Raises
    ------
    InputError
        If the table has no such tissue.
    """
    rows = [m for m in _table() if m.tissue == tissue]
    if not rows:
        raise InputError(f"no marker genes known for tissue {tissue!r}; known: {', '.join(tissues())} "
                         "(or auto, none)")
    return rows


def _marker_columns(adata_log, markers: list[TissueMarker]) -> dict[str, int]:
    """Each marker the data holds, as ``{symbol: column}``: by symbol, by a symbol column, or by Ensembl id."""
    names = [str(g) for g in adata_log.var_names]
    index: dict[str, int] = {}
    for column in ("gene_symbols", "gene_ids"):  # a symbol table (io.gene_names) or a reader's feature ids
        if column in adata_log.var:
            for i, value in enumerate(adata_log.var[column].astype(str)):
                index.setdefault(value.split(".")[0] if column == "gene_ids" else value, i)
    for i, name in enumerate(names):
        index[name] = i
        index.setdefault(name.split(".")[0], i)  # a versioned Ensembl id (ENSG....5)
    found: dict[str, int] = {}
    for m in markers:
        at = index.get(m.symbol)
        if at is None and m.ensembl_id:
            at = index.get(m.ensembl_id)
        if at is not None:
            found[m.symbol] = at
    return found


def _detected(x, n_obs: int) -> np.ndarray:
    counts = np.asarray((x > 0).sum(axis=0)).ravel()
    return counts >= max(MIN_DETECTED_SPOTS, MIN_DETECTED_SHARE * n_obs)


def _means(x) -> np.ndarray:
    return np.asarray(x.mean(axis=0)).ravel().astype(np.float64)


def section_species(adata_log) -> str | None:
    """The species a section's gene names say, ``"human"`` or ``"mouse"`` (``None`` when they say neither).

    By the prefix of its Ensembl ids where it has them (``ENSG``, ``ENSMUSG``), else by the case
    of its symbols: human symbols are upper case (MBP), mouse ones are not (Mbp).
    """
    ids, symbols = gene_keys(adata_log)
    known = [i for i in ids if i]
    if known:
        mouse = sum(i.startswith("ENSMUSG") for i in known)
        human = sum(i.startswith("ENSG") for i in known)
        if max(mouse, human) > SPECIES_SHARE * len(known):
            return "mouse" if mouse > human else "human"
    words = [s for s in symbols if any(ch.isalpha() for ch in s)]
    upper = sum(s == s.upper() for s in words)
    if words and upper > SPECIES_SHARE * len(words):
        return "human"
    if words and len(words) - upper > SPECIES_SHARE * len(words):
        return "mouse"
    return None


def _unique_markers(species: str | None) -> dict[str, list[TissueMarker]]:
    """Each candidate tissue's markers that no other candidate lists (a breast's KRT17 is a cortex's too)."""
    candidates = {t: tissue_markers(t) for t in tissues()}
    candidates = {t: m for t, m in candidates.items() if species is None or m[0].species == species}
    listed: dict[str, int] = {}
    for markers in candidates.values():
        for symbol in {m.symbol for m in markers}:
            listed[symbol] = listed.get(symbol, 0) + 1
    return {t: [m for m in markers if listed[m.symbol] == 1] for t, markers in candidates.items()}


def choose_tissue(adata_log) -> str | None:
    """The tissue whose markers ``adata_log`` expresses most (``None`` when no tissue has enough).

    Only tissues of the section's species (:func:`section_species`) are candidates, and only
    the markers one candidate alone lists count (a gene two tissues name says neither). A
    tissue scores the hypergeometric p-value of its markers among the section's most
    expressed genes (the top :data:`TOP_EXPRESSED_SHARE` by mean), its markers the section
    lacks counted as not among them: an enrichment, so neither a long table (immune cells,
    vessels, stroma that every tissue expresses) nor a short one wins by its length. The
    lowest p-value wins; a tissue needs :data:`MIN_TISSUE_MARKERS` such markers.
    """
    from scipy.stats import hypergeom

    means = _means(adata_log.X)
    n_top = max(1, int(np.ceil(TOP_EXPRESSED_SHARE * len(means))))
    cut = np.sort(means)[::-1][n_top - 1] if len(means) else 0.0
    best, best_p = None, 1.0
    for tissue, markers in _unique_markers(section_species(adata_log)).items():
        if not markers:
            continue
        columns = _marker_columns(adata_log, markers)
        hits = sum(bool(means[i] >= cut and means[i] > 0) for i in columns.values())
        population = len(means) + len(markers) - len(columns)  # a marker the section lacks: a gene not on top
        p_value = float(hypergeom.sf(hits - 1, population, n_top, len(markers)))
        if hits >= MIN_TISSUE_MARKERS and (best is None or p_value < best_p):
            best, best_p = tissue, p_value
    return best


def marker_genes(adata_log, markers: str | None = "auto", *, n_top: int = 1000) -> list[str]:
    """The known markers that a gene choice of ``n_top`` genes on ``adata_log`` always keeps.

    Parameters
    ----------
    adata_log
        Log-normalised spots (:func:`napari_histosge.io.preprocess.normalize_log1p`).
    markers
        ``"auto"``: the markers of the tissue :func:`choose_tissue` finds; a tissue of the
        table; ``"none"`` or ``None``: no markers.
    n_top
        The number of genes asked for: at most a quarter of them (and :data:`MARKER_CAP`)
        are markers.

    Returns
    -------
    list of str
        Gene names of ``adata_log`` (``var_names``): the tissue's markers detected in enough
        spots, the highest expressed and most variable first (the better of a marker's two
        ranks among the markers), cut at the cap.

    Raises
    ------
    InputError
        If ``markers`` names no tissue of the table.
    """
    if markers is None or markers == "none":
        return []
    tissue = choose_tissue(adata_log) if markers == "auto" else markers
    if tissue is None:
        return []
    columns = _marker_columns(adata_log, tissue_markers(tissue))
    if not columns:
        return []
    idx = np.fromiter(columns.values(), dtype=np.int64)
    x = adata_log.X[:, idx]
    keep = _detected(x, adata_log.n_obs)
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)  # sparse or dense
    mean, var = x.mean(axis=0), x.var(axis=0)
    rank_mean, rank_var = np.argsort(np.argsort(-mean, kind="stable")), np.argsort(np.argsort(-var, kind="stable"))
    best, other = np.minimum(rank_mean, rank_var), np.maximum(rank_mean, rank_var)
    order = [k for k in np.lexsort((other, best)) if keep[k]]
    cap = min(MARKER_CAP, max(1, int(n_top) // 4))
    return [str(adata_log.var_names[idx[k]]) for k in order[:cap]]
