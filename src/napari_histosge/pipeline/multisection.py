"""One model on several sections: :func:`napari_histosge.pipeline.steps.fit` with a list of AnnData.

Each section gets its own image features and normalisation; genes are chosen on all
spots together among the genes every section measured; each section's positions are
scaled by its own box (:func:`napari_histosge.training.inputs.section_frame`); spot ids that
repeat across sections are prefixed with the section's name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputError
from ..features import SpotFeatures
from ..io.preprocess import dense_targets
from ..models import train
from ..progress import Progress, ProgressGenerator, map_events
from ..training.inputs import TrainingData, section_frame
from ..training.trained_model import TrainedModel
from .gene_choice import choose_genes, section_names, stack_sections
from .section_features import model_meta, section_record, spot_features


def _labelled(gen: ProgressGenerator[Any], label: str) -> ProgressGenerator[Any]:
    """Re-yield ``gen``'s events with ``label`` in front of their message (which section is worked on)."""
    return map_events(gen, lambda e: replace(e, message=f"{label}: {e.message}" if e.message else label))


def fit_sections(adatas, *, train_config, feature_config, features, checkpoint_path, resume, scheduler,
                  n_workers, cancel, uncut=None) -> ProgressGenerator[TrainedModel]:
    """:func:`fit` on several sections: one model, each section's positions in its own frame.

    ``uncut`` are the whole sections where ``adatas`` are their training spots (the bin
    limit): each section's frame and record are of all its spots, as its predictions are.
    """
    uncut = adatas if uncut is None else uncut
    names, k = section_names(adatas), len(adatas)
    if features is not None and (not isinstance(features, (list, tuple)) or len(features) != k):
        raise InputError(f"precomputed features must be a list with one entry per section ({k})")
    feats: list[SpotFeatures] = []
    for i, (a, name) in enumerate(zip(adatas, names, strict=True)):
        if features is not None:
            f = features[i]
            if len(f.features) != a.n_obs:
                raise InputError(f"section {name!r}: {len(f.features)} precomputed feature rows for {a.n_obs} spots",
                                 a.uns.get("histosge", {}).get("source"))
        else:
            f = yield from _labelled(spot_features(a, feature_config, scheduler=scheduler, n_workers=n_workers,
                                                   cancel=cancel), f"section {i + 1}/{k} ({name})")
        feats.append(f)
    yield Progress("prepare", 0, 1, f"normalising {k} sections and selecting genes")
    combined, sections = stack_sections(adatas, names, train_config)
    genes = choose_genes(combined, train_config, sections)
    frames = np.stack([np.stack(section_frame(a.obsm["spatial"])) for a in uncut])
    data = TrainingData(
        features=np.concatenate([f.features for f in feats]),
        mean_rgb=np.concatenate([f.mean_rgb for f in feats]),
        positions=np.concatenate([np.asarray(a.obsm["spatial"], np.float64) for a in adatas]),
        targets=dense_targets(combined, genes),
        spot_ids=list(combined.obs_names),
        genes=genes,
        sections=sections,
        frames=frames,
    )
    yield Progress("prepare", 1, 1, f"{len(genes)} genes, {combined.n_obs} training spots in {k} sections")
    meta = model_meta(uncut[0], feature_config)
    meta.section_box = None  # each section's box is in its record (and in the model's frames)
    meta.source = combined.uns["histosge"]["source"]
    meta.sections = [{"name": name, "n_spots": int(a.n_obs), **section_record(whole, feature_config)}
                     for a, whole, name in zip(adatas, uncut, names, strict=True)]
    meta.feature_identity = feats[0].identity
    return (yield from train(data, train_config, checkpoint_path=checkpoint_path, resume=resume, meta=meta,
                             cancel=cancel))
