"""Which genes a model is trained on: one choice for fitting one or several sections and for the Train widget's preview.

Genes are ranked on the log-normalised training spots (:func:`napari_histosge.io.preprocess.select_genes`)
by the settings' ``gene_selection``, with ``include_genes`` and the tissue's known ``markers``
(:mod:`napari_histosge.io.markers`) always kept, or given outright
(``genes``). Several sections are stacked first, among the genes every section measured; their
spatial structure (Moran's I) is measured within each section.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..gene_lists import names_genes_by_ensembl_id
from ..io.gene_names import gene_keys
from ..io.preprocess import normalize_log1p, resolve_gene, select_genes
from ..training.config import TrainConfig

__all__ = ["MIN_SHARED_SHARE", "choose_genes", "section_names", "stack_sections", "training_genes"]

#: Sections named differently (ids and symbols) are one gene space only when they share at least this
#: share of the smaller one's genes: fewer means the names were not linked, not that the sections differ.
MIN_SHARED_SHARE = 0.5


def section_names(adatas: Sequence[Any]) -> list[str]:
    """A unique short name per section: its library id (``section<i>`` without one), ``#2``... on clashes."""
    names: list[str] = []
    for i, a in enumerate(adatas):
        base = str(a.uns.get("histosge", {}).get("library_id") or f"section{i + 1}")
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def _match(per_section: Sequence[Sequence[str]]) -> tuple[list[list[int]], int]:
    """Each section's columns of the keys every section holds (the first's order), and how many were ambiguous.

    A key two columns of one section hold (a symbol of two Ensembl ids) is left out everywhere:
    which gene it stands for is unknown.
    """
    where: list[dict[str, int]] = [{} for _ in per_section]
    twice: set[str] = set()
    for at, section in zip(where, per_section, strict=True):
        for column, key in enumerate(section):
            if key:
                if key in at:
                    twice.add(key)
                at.setdefault(key, column)
    shared = set.intersection(*(set(at) for at in where))
    ambiguous = len(shared & twice)
    order = [key for key in dict.fromkeys(per_section[0]) if key in shared and key not in twice]
    return ([[at[key] for key in order] for at in where] if order else []), ambiguous


def _shared_genes(logs: Sequence[Any], names: Sequence[str]) -> tuple[list[list[int]], pd.DataFrame]:
    """The genes every section measured: each section's columns of them (one order) and their ``var``.

    Genes are matched by name, by Ensembl id or by symbol (:func:`~napari_histosge.io.gene_names.gene_keys`),
    whichever the sections share most of (ids on a tie: an id names one gene): a section named
    by id with a table of symbols and one named by symbol are one gene space. A symbol naming
    two genes of a section is left out, with a warning saying how many. The genes are named as
    the first section names them, in its order, with their other name beside (``gene_symbols``
    or ``gene_ids``). The known markers' symbols given to data without a table are never
    matched on (:func:`~napari_histosge.io.gene_names.gene_keys`), and a match covering under
    :data:`MIN_SHARED_SHARE` of the smaller section's genes is refused.
    """
    keys = [gene_keys(log) for log in logs]
    # Ids first: an id names one gene, so on a tie they are taken over names and symbols.
    candidates = {"id": [ids for ids, _ in keys], "name": [[str(g) for g in log.var_names] for log in logs],
                  "symbol": [symbols for _, symbols in keys]}
    matched = {mode: _match(per_section) for mode, per_section in candidates.items()}
    smallest = min(log.n_vars for log in logs)
    mode = max(matched, key=lambda m: len(matched[m][0][0]) if matched[m][0] else 0)
    best, ambiguous = matched[mode]
    if ambiguous and best:
        warnings.warn(f"{ambiguous} {mode}s that name two genes of a section were left out of the sections' "
                      "shared genes", stacklevel=3)
    by_id = [names_genes_by_ensembl_id([str(g) for g in log.var_names]) for log in logs]
    # Named alike, sections may measure other genes (panels, filtered tables); named differently, a small
    # match means the names were not linked (a table of a few genes), not that the sections differ.
    if any(by_id) and not all(by_id) and len(best[0] if best else []) < MIN_SHARED_SHARE * smallest:
        raise InputError(f"section {names[by_id.index(True)]!r} names genes by Ensembl id and section "
                         f"{names[by_id.index(False)]!r} by symbol, and no table of ids and symbols links them"
                         f"{f' (they share only {len(best[0])} of {smallest} genes)' if best else ''}: "
                         "give one with --gene-names TABLE")
    if not best:
        raise InputError(f"the sections {', '.join(names)} share no gene")
    first = logs[0]
    var = pd.DataFrame(index=pd.Index([str(first.var_names[c]) for c in best[0]]))
    ids, symbols = zip(*[(keys[0][0][c], keys[0][1][c]) for c in best[0]], strict=True)
    for i, log_keys in enumerate(keys[1:], start=1):  # a name the first section lacks, from another
        ids = tuple(a or log_keys[0][c] for a, c in zip(ids, best[i], strict=True))
        symbols = tuple(a or log_keys[1][c] for a, c in zip(symbols, best[i], strict=True))
    other, values = ("gene_symbols", symbols) if names_genes_by_ensembl_id(list(var.index)) else ("gene_ids", ids)
    if any(values):
        var[other] = [v or name for v, name in zip(values, var.index, strict=True)]
    return best, var


def stack_sections(adatas: Sequence[Any], names: Sequence[str], config: TrainConfig):
    """``(combined, sections)``: the sections' log-normalised spots stacked, and each spot's section label.

    ``combined`` holds the genes every section measured (:func:`_shared_genes`: matched by
    name, Ensembl id or symbol; named and ordered as the first section names them), the
    spots' positions in ``obsm["spatial"]`` and spot ids prefixed with the section's name
    where ids repeat across sections.

    Raises
    ------
    InputError
        If a gene of ``config.genes`` or ``config.include_genes`` is missing from a section, or
        the sections share no gene (naming the table that links ids and symbols where they
        name genes differently).
    """
    import scipy.sparse as sp
    from anndata import AnnData

    logs = [normalize_log1p(a) for a in adatas]
    wanted = list(config.genes or []) + list(config.include_genes or [])
    for log, name in zip(logs, names, strict=True):
        missing = [g for g in wanted if resolve_gene(log, g) is None]  # a symbol stands for its id and back
        if missing:
            raise InputError(f"gene {missing[0]!r} is not in section {name!r}"
                             + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""),
                             log.uns.get("histosge", {}).get("source"))
    columns, var = _shared_genes(logs, names)
    ids = [list(map(str, a.obs_names)) for a in adatas]
    flat = [i for section in ids for i in section]
    if len(set(flat)) < len(flat):  # e.g. ST v1 "<x>x<y>" ids repeat across sections
        ids = [[f"{name}:{i}" for i in section] for name, section in zip(names, ids, strict=True)]
    combined = AnnData(X=sp.vstack([sp.csr_matrix(log.X[:, cols]) for log, cols in zip(logs, columns, strict=True)])
                       .tocsr(), obs=pd.DataFrame(index=pd.Index([i for section in ids for i in section])), var=var)
    combined.uns["histosge"] = {"source": "; ".join(str(a.uns.get("histosge", {}).get("source", ""))
                                                    for a in adatas)}
    combined.obsm["spatial"] = np.concatenate([np.asarray(a.obsm["spatial"], np.float64) for a in adatas])
    return combined, np.repeat(np.arange(len(adatas)), [a.n_obs for a in adatas])


def choose_genes(log, config: TrainConfig, sections=None) -> list[str]:
    """The genes ``config`` picks on log-normalised training spots ``log`` (``sections``: labels of stacked ones)."""
    return select_genes(log, n_top=config.n_top_genes, genes=config.genes, method=config.gene_selection,
                        include=config.include_genes, sections=sections, markers=config.markers)


def training_genes(adatas: Any, config: TrainConfig) -> list[str]:
    """The genes a model trained with ``config`` on every spot of ``adatas`` (one or a list) will predict."""
    if not isinstance(adatas, (list, tuple)):
        return choose_genes(normalize_log1p(adatas), config)
    if len(adatas) == 1:
        return choose_genes(normalize_log1p(adatas[0]), config)
    combined, sections = stack_sections(adatas, section_names(adatas), config)
    return choose_genes(combined, config, sections)
