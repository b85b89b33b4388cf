"""Which genes a model is trained on: one choice for fitting one or several sections and for the Train widget's preview.

Genes are ranked on the log-normalised training spots (:func:`napari_histosge.io.preprocess.select_genes`)
by the settings' ``gene_selection``, with ``include_genes`` and the tissue's known ``markers``
(:mod:`napari_histosge.io.markers`) always kept, or given outright
(``genes``). Several sections are stacked first, among the genes every section measured; their
spatial structure (Moran's I) is measured within each section.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.preprocess import normalize_log1p, select_genes
from ..training.config import TrainConfig

__all__ = ["choose_genes", "section_names", "stack_sections", "training_genes"]


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


def stack_sections(adatas: Sequence[Any], names: Sequence[str], config: TrainConfig):
    """``(combined, sections)``: the sections' log-normalised spots stacked, and each spot's section label.

    ``combined`` holds the genes every section measured (in the first section's order), the
    spots' positions in ``obsm["spatial"]`` and spot ids prefixed with the section's name
    where ids repeat across sections.

    Raises
    ------
    InputError
        If a gene of ``config.genes`` or ``config.include_genes`` is missing from a section, or
        the sections share no gene.
    """
    import scipy.sparse as sp
    from anndata import AnnData

    logs = [normalize_log1p(a) for a in adatas]
    shared = set.intersection(*(set(map(str, log.var_names)) for log in logs))
    wanted = list(config.genes or []) + list(config.include_genes or [])
    for log, name in zip(logs, names, strict=True):
        present = set(map(str, log.var_names))
        missing = [g for g in wanted if g not in present]
        if missing:
            raise InputError(f"gene {missing[0]!r} is not in section {name!r}"
                             + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""),
                             log.uns.get("histosge", {}).get("source"))
    common = [str(g) for g in logs[0].var_names if str(g) in shared]
    if not common:
        raise InputError(f"the sections {', '.join(names)} share no gene")
    ids = [list(map(str, a.obs_names)) for a in adatas]
    flat = [i for section in ids for i in section]
    if len(set(flat)) < len(flat):  # e.g. ST v1 "<x>x<y>" ids repeat across sections
        ids = [[f"{name}:{i}" for i in section] for name, section in zip(names, ids, strict=True)]
    combined = AnnData(X=sp.vstack([sp.csr_matrix(log[:, common].X) for log in logs]).tocsr(),
                       obs=pd.DataFrame(index=pd.Index([i for section in ids for i in section])),
                       var=pd.DataFrame(index=pd.Index(common)))
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
