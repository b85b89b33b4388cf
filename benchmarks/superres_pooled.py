"""Pooled super-resolution scored by count splitting: train on bins of half the counts, score against the other half.

A spot's own counts are part of its bin's sum, so scoring a model of the bins against the
same counts rewards reproducing their counting noise. Here every spot's raw counts ``C`` are
split per gene into ``A ~ Binomial(C, 1/2)`` and ``B = C - A``
(:func:`napari_histosge.evaluation.count_split.split_counts`): half A is summed into square
bins of about F spots (:func:`napari_histosge.pipeline.pooled.pool_spots`; F = 4 on ST
arrays, 7 and 16 on Visium), every model is trained on those bins only and predicts every
real spot with its real diameter, and each spot is scored against half B, normalised on its
own: ``log1p(normalize_total(B))`` with B's own total per spot, so nothing of half A reaches
the target. Genes: the 50 highest-mean genes and the 1000 HVGs of the half-A bins.

Columns, per seed (one split per seed): mean per-gene PCC (top-50, HVG); within-bin PCC
(prediction minus its bin's mean against truth minus its bin's mean); mean Poisson deviance
of half B's counts around the prediction turned back into counts with B's depth; and the
attainable limit, ``sqrt(max(r, 0))`` per gene where ``r`` is the PCC over spots of the
normalised halves A and B (the PCC a predictor knowing each spot's expected expression
would have with one half-depth measurement). Image-free baselines: copy of the bin,
inverse-distance interpolation of the 4 nearest bin centres, and Gaussian smoothing of the
bin values at a grid of bandwidths (spot spacings), whose bandwidth the render step picks
leave-one-section-out. Cell maps (``subspot-cells``, ``subspot-prior-cells``): the same fits as
``subspot-smoothfield`` and ``subspot-prior``, mapped onto the nuclei the built-in detector finds
(:func:`napari_histosge.pipeline.cell_maps.superresolve_cells`), each spot the mean of the nuclei
whose centroid lies in its disc. One section per process, its own JSON::

    python benchmarks/superres_pooled.py --section her2st/B4 --seeds 0 1 2 \\
        --out benchmarks/results/superres_pooled/B4.json
    python benchmarks/superres_pooled.py --render    # results/superres_pooled.json + its doc block
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, existing_data_root, machine_info, machines_line, publish  # noqa: E402

import napari_histosge as hs  # noqa: E402
from napari_histosge.evaluation.count_split import split_counts  # noqa: E402
from napari_histosge.evaluation.metrics import column_pcc, knn_baseline, within_bin_pcc  # noqa: E402
from napari_histosge.io.preprocess import TARGET_SUM, dense_targets, normalize_log1p, select_genes, top_mean_genes  # noqa: E402
from napari_histosge.pipeline.grid_maps import predict_discs  # noqa: E402
from napari_histosge.pipeline.pooled import own_bin_copy, pool_spots  # noqa: E402
from napari_histosge.prediction.lattice import estimate_lattice  # noqa: E402

#: Model label -> (registered model, training settings) of the trained models compared.
TRAINED = {
    "subspot": ("subspot", {"prior_bandwidth": 1.5}),
    "subspot-counting": ("subspot", {"prior_bandwidth": 1.5}),
    "subspot-smoothfield": ("subspot", {}),
    "subspot-with-image": ("subspot", {"image_modulation": True, "prior_bandwidth": 1.5}),
    "histosge": ("histosge", {}),
    # The histology prior: a cellridge model of the group's OTHER sections (full counts), see prior_model.
    "subspot-prior": ("subspot", {"prior_bandwidth": 1.5}),
    # Cell maps: the same fits as their grid columns (CELL_MAPS), mapped onto detected nuclei.
    "subspot-cells": ("subspot", {}),
    "subspot-prior-cells": ("subspot", {"prior_bandwidth": 1.5}),
}
#: The sub-spot map's consistency for each label (``pipeline.grid_maps.CONSISTENCY``). ``subspot`` is the
#: earlier default (exact, 1.5 spacings); ``subspot-smoothfield`` is the model's current defaults.
CONSISTENCY_OF = {"subspot": "exact", "subspot-with-image": "exact", "subspot-counting": "counting",
                  "subspot-smoothfield": "smooth", "subspot-prior": "exact", "subspot-cells": "smooth",
                  "subspot-prior-cells": "exact"}
#: Cell-map label -> the grid-map label of the same fit and consistency it is compared with. A cell map
#: predicts the nuclei the built-in detector finds (cached in :data:`CACHE`); a spot's value is the mean of
#: the nuclei whose centroid lies in its disc (the nearest nucleus where none does), as a grid map's is the
#: mean of the squares whose centre does.
CELL_MAPS = {"subspot-cells": "subspot-smoothfield", "subspot-prior-cells": "subspot-prior"}
#: Gridded like the smoothing baseline: one fit per prior bandwidth (bin spacings), each scored with
#: these consistency modes; the render step picks the bandwidth leave-one-section-out.
BANDWIDTH_GRID = "subspot-bandwidths"
SUBSPOT_BANDWIDTHS = (0.5, 1.0, 1.5, 2.0, 3.0)
GRID_MODES = ("smooth", "none")
BASELINES = ("copy", "interpolation", "smoothing")
#: Run by default: ``subspot-with-image`` reads cell features over the section for every fit
#: (minutes per seed on 2 cores), which does not fit three seeds in one section's 15 minutes.
DEFAULT_MODELS = ("copy", "interpolation", "smoothing", "subspot", "histosge")
GENE_SETS = ("top50", "hvg")
#: Gaussian smoothing bandwidths tried, in spot spacings.
SIGMAS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
#: Predicted counts are floored here before the deviance's logarithm (a zero prediction of a
#: nonzero count would be infinitely wrong).
MIN_MEAN_COUNT = 1e-3
PER_SECTION = RESULTS / "superres_pooled"
#: Prior models and cell features, cached between processes (never committed: derived from the data).
CACHE = Path("/tmp/histosge-superres-prior")


def factors(adata) -> tuple[int, ...]:
    """Spots per bin: 4 on ST arrays, 7 and 16 on Visium."""
    return (7, 16) if adata.uns["histosge"].get("platform") == "visium" else (4,)


def with_counts(adata, counts):
    """A copy of ``adata`` (image, positions, metadata) holding ``counts`` instead of its own."""
    out = adata.copy()
    out.X = counts.astype(np.float32)
    return out


def log_normalised(adata, genes: list[str]) -> np.ndarray:
    """``log1p(normalize_total)`` of ``adata``'s counts (each spot by its own total) at ``genes``."""
    with warnings.catch_warnings():  # a shallow spot can draw no counts into one half
        warnings.filterwarnings("ignore", message="Some cells have zero counts")
        return dense_targets(normalize_log1p(adata), genes).astype(np.float64)


def deviance(pred: np.ndarray, counts: np.ndarray, depth: np.ndarray) -> float:
    """Mean Poisson deviance of ``counts`` around ``pred`` (log1p per 1e4) at each spot's ``depth``."""
    mu = np.maximum(np.expm1(np.clip(pred, 0, None)) / TARGET_SUM * depth[:, None], MIN_MEAN_COUNT)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(counts > 0, counts * np.log(counts / mu), 0.0)
    return float(np.mean(2.0 * (term - (counts - mu))))


def scores(pred: np.ndarray, target: dict, cols: dict) -> dict:
    """PCC, within-bin PCC and deviance of ``pred`` against half B, per gene set."""
    out = {}
    for key, idx in cols.items():
        p, t = pred[:, idx], target["log"][:, idx]
        out[key] = {"pcc": float(np.nan_to_num(column_pcc(t, p), nan=0.0).mean()),
                    "within_bin_pcc": float(within_bin_pcc(p, t, target["spot_bin"]).mean()),
                    "deviance": deviance(p, target["counts"][:, idx], target["depth"])}
    return out


def smoothed(bin_xy: np.ndarray, bin_values: np.ndarray, spot_xy: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-weighted mean of the bin values at each spot (bandwidth ``sigma_px``)."""
    d2 = ((spot_xy[:, None, :] - bin_xy[None, :, :]) ** 2).sum(-1)
    # Relative to each spot's nearest bin, so a narrow kernel does not underflow to 0 / 0.
    weights = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / (2 * sigma_px**2))
    return (weights @ bin_values) / weights.sum(axis=1, keepdims=True)


def cached_cell_features(path, scale, grid, *, sigmas=None, cancel=None):
    """:func:`~napari_histosge.features.cell_raster.cell_features`, read from :data:`CACHE` once computed.

    The bins of every seed cover the same cells, so the slide is filtered once per grid; the
    values are the function's own.
    """
    from napari_histosge.features import cell_raster

    sigmas = tuple(sigmas or cell_raster.SIGMAS_IN_CELLS)
    kept = b"" if grid.kept is None else np.asarray(grid.kept).tobytes()
    # The features' version is in the key: a changed filter bank never reads an old file.
    key = cache_key(cell_raster.IDENTITY, str(path), scale, grid.cell_px, grid.origin_xy, grid.shape, sigmas, kept)
    file = CACHE / "cells" / f"{key}.npy"
    if file.exists():
        return np.load(file)
    out = yield from cell_raster.cell_features(path, scale, grid, sigmas=sigmas, cancel=cancel)
    write_atomically(file, lambda handle: np.save(handle, out))
    return out


def cache_key(*parts) -> str:
    """A file-name key of ``parts`` (their ``repr``; bytes as they are)."""
    import hashlib

    digest = hashlib.sha1()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
    return digest.hexdigest()[:20]


def write_atomically(file: Path, write) -> None:
    """``write(handle)`` into a temporary file beside ``file``, then renamed: a killed run leaves no half file."""
    import os

    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, file)
    finally:
        temporary.unlink(missing_ok=True)


def prior_model(section: Path) -> Path:
    """A ``cellridge`` model of the other sections of ``section``'s group, on their full counts (cached).

    The sections (``section`` too, which the prior will serve) are checked before any cell
    feature is read; the cache key holds the features' version and the prior's settings.
    """
    from napari_histosge.features.cell_raster import IDENTITY
    from napari_histosge.models.subspot.cellridge import check_sections, fit_cellridge, section_cells
    from napari_histosge.progress import run_to_end

    others = sorted(p for p in section.parent.iterdir() if p.is_dir() and p.name != section.name)
    config = hs.train_config("cellridge")
    key = cache_key(IDENTITY, sorted(config.to_dict().items()), [str(p) for p in others])
    out = CACHE / f"{section.parent.name}-without-{section.name}-{key}.pt"
    if out.exists():
        return out
    adatas = [hs.read_spots(p) for p in others]
    check_sections([*adatas, hs.read_spots(section)], config.cell_um)
    cells = [run_to_end(section_cells(a, config.cell_um)) for a in adatas]
    fit_cellridge(cells, config).save(out)  # atomic (TrainedModel.save)
    print(f"  prior model of {', '.join(p.name for p in others)} -> {out}", flush=True)
    return out


def fitted(model_name: str, settings: dict, pooled, genes: list[str], cache: dict):
    """The model trained on the half-A bins, once per (model, settings) of a split."""
    key = (model_name, tuple(sorted(settings.items())))
    if key not in cache:
        cache[key] = hs.fit(pooled.bins, train_config=hs.train_config(model_name, genes=genes, **settings))
    return cache[key]


#: Segmentations read in this process, by section: every seed and cell-map column maps the same nuclei.
NUCLEI: dict = {}


def nuclei_cache_key(section: str, settings) -> str:
    """The cache key of a section's detected nuclei: the detector's identity, its settings and the section."""
    from napari_histosge.cells.detect import DETECTOR_VERSION

    return cache_key("detect_nuclei", DETECTOR_VERSION, sorted(dataclasses.asdict(settings).items()), section)


def section_nuclei(adata):
    """The built-in detector's nuclei on ``adata``'s slide (default settings), detected once and cached."""
    from napari_histosge.cells import NucleusSettings, detect_nuclei, read_segmentation, slide_source
    from napari_histosge.cells.write import LABELS_FILE, write_segmentation
    from napari_histosge.slide.open import open_slide

    section = str(adata.uns["histosge"]["source"])
    if section in NUCLEI:
        return NUCLEI[section]
    source = slide_source(section)
    folder = CACHE / f"nuclei-{Path(section).name}-{nuclei_cache_key(section, NucleusSettings())}"
    if not (folder / LABELS_FILE).exists():
        with open_slide(source.image) as slide:
            found = hs.run(detect_nuclei(slide, mpp=source.mpp, scale=source.scale))
        write_segmentation(found, folder)  # atomic per file
        print(f"  {found.n_cells:,} nuclei -> {folder}", flush=True)
    NUCLEI[section] = read_segmentation(folder / LABELS_FILE, source.shape, mpp=source.mpp)
    return NUCLEI[section]


def cell_spot_prediction(model, adata_a, genes: list[str], consistency: str) -> tuple[np.ndarray, dict]:
    """Every spot as the mean of the nuclei of the cell map in its disc; and how many nuclei that took."""
    from napari_histosge.pipeline.cell_maps import superresolve_cells
    from napari_histosge.slide.cell_grid import Footprints

    cells = hs.run(superresolve_cells(model, adata_a, section_nuclei(adata_a), consistency=consistency))
    diameter = float(adata_a.uns["histosge"]["spot_diameter_px"])
    discs = Footprints(np.asarray(adata_a.obsm["spatial"], np.float64), "disc", diameter)
    held = discs.cell_weights(np.asarray(cells.obsm["spatial"]), nearest_if_empty=False)
    per_spot = np.diff(held.indptr)
    weights = discs.cell_weights(np.asarray(cells.obsm["spatial"]))  # a spot without a nucleus: the nearest
    pred = np.log1p(np.asarray(weights @ np.expm1(np.asarray(cells[:, genes].X, np.float64))))
    return pred, {"cells": int(cells.n_obs), "median_cells_per_spot": float(np.median(per_spot)),
                  "spots_without_cells": int((per_spot == 0).sum())}


def spot_prediction(model, adata_a, genes: list[str], consistency: str | None) -> np.ndarray:
    """Every spot predicted (with half A's data only); a sub-spot map with ``consistency``."""
    diameter = float(adata_a.uns["histosge"]["spot_diameter_px"])
    xy = np.asarray(adata_a.obsm["spatial"], np.float64)
    if consistency is not None:
        pred = hs.run(predict_discs(model, adata_a, xy, diameter, consistency=consistency))
        return np.asarray(pred, np.float64)[:, [model.genes.index(g) for g in genes]]
    pred = hs.predict_spots(model, adata_a, positions=xy, position_ids=list(adata_a.obs_names), diameter=diameter)
    return np.asarray(pred[:, genes].X, np.float64)


def trained_prediction(label: str, pooled, adata_a, genes: list[str], cache: dict):
    """Train ``label`` on the half-A bins (or reuse its fit), predict every spot."""
    model_name, settings = TRAINED[label]
    if label in ("subspot-prior", "subspot-prior-cells"):
        settings = {**settings, "prior": str(prior_model(Path(adata_a.uns["histosge"]["source"])))}
    model = fitted(model_name, settings, pooled, genes, cache)
    if label in CELL_MAPS:
        return cell_spot_prediction(model, adata_a, genes, CONSISTENCY_OF[label])
    return spot_prediction(model, adata_a, genes, CONSISTENCY_OF.get(label))


def bandwidth_grid(pooled, adata_a, genes: list[str], target: dict, cols: dict, cache: dict,
                   bandwidths: tuple[float, ...] = SUBSPOT_BANDWIDTHS) -> list[dict]:
    """The default sub-spot model at each of ``bandwidths``, scored with each of :data:`GRID_MODES`."""
    out = []
    for bandwidth in bandwidths:
        model = fitted("subspot", {"prior_bandwidth": bandwidth}, pooled, genes, cache)
        out.append({"bandwidth": bandwidth, **{mode: scores(spot_prediction(model, adata_a, genes, mode), target, cols)
                                               for mode in GRID_MODES}})
        print(f"    bandwidth {bandwidth:g}: " + ", ".join(f"{m} {out[-1][m]['top50']['pcc']:.3f}" for m in GRID_MODES),
              flush=True)
    return out


def measure_split(adata, adata_a, adata_b, factor: int, models: list[str], spacing: float,
                  bandwidths: tuple[float, ...] = SUBSPOT_BANDWIDTHS) -> dict:
    """Every model and baseline on one split and one bin size."""
    pooled = pool_spots(adata_a, factor)
    log_bins = normalize_log1p(pooled.bins)
    hvg = select_genes(log_bins, n_top=1000)
    top = top_mean_genes(log_bins, n=50)
    genes = list(dict.fromkeys(hvg + top))
    cols = {"top50": [genes.index(g) for g in top], "hvg": [genes.index(g) for g in hvg]}
    target = {"log": log_normalised(adata_b, genes), "spot_bin": pooled.spot_bin,
              "counts": np.asarray(adata_b[:, genes].X.toarray(), np.float64),
              "depth": np.asarray(adata_b.X.sum(axis=1), np.float64).ravel()}
    half_a = log_normalised(adata_a, genes)
    limit = np.sqrt(np.clip(np.nan_to_num(column_pcc(half_a, target["log"]), nan=0.0), 0, None))
    bin_values = dense_targets(log_bins, genes).astype(np.float64)
    bin_xy, spot_xy = np.asarray(pooled.bins.obsm["spatial"]), np.asarray(adata.obsm["spatial"], np.float64)
    row: dict = {"bins": int(pooled.bins.n_obs), "side_px": pooled.side_px,
                 "limit": {k: float(limit[idx].mean()) for k, idx in cols.items()}, "models": {}}
    cache: dict = {}
    for label in models:
        t0 = time.perf_counter()
        if label == BANDWIDTH_GRID:
            row[BANDWIDTH_GRID] = bandwidth_grid(pooled, adata_a, genes, target, cols, cache, bandwidths)
            continue
        if label == "smoothing":
            row["smoothing"] = [{"sigma": s, **scores(smoothed(bin_xy, bin_values, spot_xy, s * spacing), target, cols)}
                                for s in SIGMAS]
            continue
        if label == "copy":
            pred = own_bin_copy(pooled, bin_values)
        elif label == "interpolation":
            pred = knn_baseline(bin_xy, bin_values, spot_xy, k=4)
        else:
            pred = trained_prediction(label, pooled, adata_a, genes, cache)
        extra: dict = {}
        if isinstance(pred, tuple):  # a cell map: how many nuclei it predicted
            pred, extra = pred
        row["models"][label] = {**scores(pred, target, cols), "seconds": time.perf_counter() - t0, **extra}
        print(f"  F={factor} {label}: " + ", ".join(f"{k} {row['models'][label][k]['pcc']:.3f}" for k in GENE_SETS)
              + f" ({row['models'][label]['seconds']:.0f} s)", flush=True)
    return row


def cache_cell_features() -> None:
    """Every reader of cell features in the models and maps goes through :func:`cached_cell_features`."""
    from napari_histosge.models.subspot import cellridge, fit
    from napari_histosge.pipeline import cell_maps, grid_maps

    for module in (cellridge, fit, grid_maps, cell_maps):
        module.cell_features = cached_cell_features  # type: ignore[attr-defined]


def measure_section(path: Path, seeds: list[int], models: list[str],
                    bandwidths: tuple[float, ...] = SUBSPOT_BANDWIDTHS) -> dict:
    if {"subspot-prior", "subspot-prior-cells"} & set(models):
        cache_cell_features()
    adata = hs.read_spots(path)
    spacing = float(estimate_lattice(adata).spacing)
    rows = {f: {"factor": f, "spots": int(adata.n_obs), "spacing_px": spacing, "seeds": []} for f in factors(adata)}
    for seed in seeds:
        half_a, half_b = split_counts(adata.X, seed)
        adata_a, adata_b = with_counts(adata, half_a), with_counts(adata, half_b)
        for factor, row in rows.items():
            print(f"[{path.name}] seed {seed}, F={factor}", flush=True)
            row["seeds"].append({"seed": seed, **measure_split(adata, adata_a, adata_b, factor, models, spacing,
                                                                   bandwidths)})
    return {"section": path.name, "rows": list(rows.values())}


def merged(old: dict, new: dict) -> dict:
    """``old`` with ``new``'s models added to each (bin size, seed) both measured; the run records kept.

    ``new`` may hold fewer seeds than ``old`` (a slow model run on one split): the others
    keep what they had.
    """
    for old_row, new_row in zip(old["rows"], new["rows"], strict=True):
        seeds = {s["seed"]: s for s in old_row["seeds"]}
        if old_row["factor"] != new_row["factor"] or not set(s["seed"] for s in new_row["seeds"]) <= set(seeds):
            raise SystemExit("--merge needs the same bin sizes, and seeds the saved run has")
        for new_seed in new_row["seeds"]:
            old_seed = seeds[new_seed["seed"]]
            old_seed["models"].update(new_seed["models"])
            if "smoothing" in new_seed:
                old_seed["smoothing"] = new_seed["smoothing"]
            if BANDWIDTH_GRID in new_seed:  # more bandwidths join the grid; one measured again is replaced
                kept = {g["bandwidth"]: g for g in old_seed.get(BANDWIDTH_GRID, [])}
                kept.update({g["bandwidth"]: g for g in new_seed[BANDWIDTH_GRID]})
                old_seed[BANDWIDTH_GRID] = [kept[b] for b in sorted(kept)]
    old.setdefault("more_runs", []).append({k: new[k] for k in ("machine", "wall_s", "models")})
    return old


# ---------------------------------------------------------------------------- rendering


def loso_choice(section: str, factor: int, payloads: list[dict], grid: str, param: str,
                mode: str | None = None) -> float | None:
    """The ``param`` of the gridded column ``grid`` (``smoothing``: σ; the sub-spot bandwidth grid: its
    bandwidth, scored with ``mode``) with the best mean (top-50 + HVG) PCC on the OTHER sections' runs,
    of the same bin size where another section has it, else of every bin size."""
    others = [(p["section"], r) for p in payloads if p["section"] != section for r in p["rows"]]
    same = [r for _, r in others if r["factor"] == factor and any(grid in s for s in r["seeds"])]
    pool = same or [r for _, r in others]
    runs = [s[grid] for r in pool for s in r["seeds"] if grid in s]
    if not runs:
        return None
    mean = np.mean([[np.mean([(g[mode] if mode else g)[k]["pcc"] for k in GENE_SETS]) for g in run]
                    for run in runs], axis=0)
    return float(runs[0][int(np.argmax(mean))][param])


def loso_sigma(section: str, factor: int, payloads: list[dict]) -> float | None:
    """The smoothing bandwidth chosen leave-one-section-out (:func:`loso_choice`)."""
    return loso_choice(section, factor, payloads, "smoothing", "sigma")


#: Columns read from the bandwidth grid at its leave-one-section-out bandwidth: label -> consistency mode.
GRID_COLUMNS = {"subspot-smooth-loso": "smooth", "subspot-none-loso": "none"}


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": [float(v) for v in values]}


def aggregate(payloads: list[dict]) -> dict:
    """Per section and bin size: mean and SD over the seeds of every column, smoothing at its LOSO bandwidth."""
    rows = []
    for p in payloads:
        for r in p["rows"]:
            sigma = loso_sigma(p["section"], r["factor"], payloads)
            bandwidths = {label: loso_choice(p["section"], r["factor"], payloads, BANDWIDTH_GRID, "bandwidth", mode)
                          for label, mode in GRID_COLUMNS.items()}
            runs = r["seeds"]
            picked: dict = {}  # label -> {seed: that seed's scores}
            for s in runs:
                if sigma is not None and "smoothing" in s:
                    picked.setdefault("smoothing", {})[s["seed"]] = next(g for g in s["smoothing"]
                                                                         if g["sigma"] == sigma)
                for label, mode in GRID_COLUMNS.items():
                    if bandwidths[label] is not None and BANDWIDTH_GRID in s:
                        picked.setdefault(label, {})[s["seed"]] = next(
                            g[mode] for g in s[BANDWIDTH_GRID] if g["bandwidth"] == bandwidths[label])
                for label, scored in s["models"].items():
                    picked.setdefault(label, {})[s["seed"]] = scored
            methods: dict = {}
            for label in [m for m in ("copy", "interpolation", "smoothing", *TRAINED, *GRID_COLUMNS) if m in picked]:
                per_seed = picked[label]
                methods[label] = {k: {m: summary([x[k][m] for x in per_seed.values()])
                                      for m in ("pcc", "within_bin_pcc", "deviance")} for k in GENE_SETS}
                methods[label]["seeds"] = sorted(per_seed)
                if "seconds" in next(iter(per_seed.values())):
                    methods[label]["seconds"] = summary([x["seconds"] for x in per_seed.values()])
                if label in GRID_COLUMNS:
                    methods[label]["bandwidth"] = bandwidths[label]
                if "smoothing" in picked:  # per seed, minus the smoothing, averaged over the seeds both have
                    both = [seed for seed in per_seed if seed in picked["smoothing"]]
                    methods[label]["minus_smoothing"] = {
                        k: float(np.mean([per_seed[seed][k]["pcc"] - picked["smoothing"][seed][k]["pcc"]
                                          for seed in both])) for k in GENE_SETS}
            rows.append({"section": p["section"], "factor": r["factor"], "bins": runs[0]["bins"],
                         "spots": r["spots"], "seeds": [s["seed"] for s in runs], "smoothing_sigma": sigma,
                         "limit": {k: summary([s["limit"][k] for s in runs]) for k in GENE_SETS},
                         "methods": methods})
    return {"machines": {p["section"]: p["machine"] for p in payloads},
            "wall_s": {p["section"]: [p["wall_s"]] + [r["wall_s"] for r in p.get("more_runs", [])]
                       for p in payloads}, "rows": rows}


def render(payload: dict) -> str:
    labels = [m for m in BASELINES + tuple(TRAINED) + tuple(GRID_COLUMNS)
              if any(m in r["methods"] for r in payload["rows"])]
    lines = [
        "Count-split pooled super-resolution: each spot's counts split binomially into halves A and B; half A "
        "summed into square bins of about F spots; every model trained on those bins only; every real spot "
        "predicted and scored against half B (log1p(normalize_total) with B's own depth). Cells: mean over the "
        "thinning seeds ± SD. 'limit': mean over genes of sqrt(PCC of the normalised halves A and B at the "
        "spots), the PCC a predictor of each spot's expected expression would reach against half B. "
        "'smoothing': Gaussian smoothing of the bins, its bandwidth (σ, spot spacings) chosen on the other "
        "sections' runs (same F where another section has it). 'copy': the spot's own bin; 'interpolation': "
        "inverse-distance mean of the 4 nearest bins. 'subspot': the earlier default (exact consistency, prior "
        "bandwidth 1.5 bin spacings); 'subspot-smooth-loso' / 'subspot-none-loso': the sub-spot model with the "
        "smooth correction field / with no consistency, its prior bandwidth (0.5-3 bin spacings) chosen on the "
        "other sections' runs like σ. 'subspot-cells' / 'subspot-prior-cells': the fits of 'subspot-smoothfield' "
        "(the model's defaults) / 'subspot-prior' mapped onto the built-in detector's nuclei, each spot the mean "
        "of the nuclei in its disc. A blank cell: that model was not run on the section; '(1 seed)': run on "
        "seed 0 only.",
        "",
        machines_line(list(payload["machines"].values())),
        "Wall time of each section's process, every seed (a second process where a model was added later): "
        + ", ".join(f"{k} {' + '.join(f'{v:.0f}' for v in runs)} s" for k, runs in payload["wall_s"].items()) + ".",
    ]
    tables = (("Mean per-gene PCC, top-50 genes", "top50", "pcc", True),
              ("Mean per-gene PCC, HVGs", "hvg", "pcc", True),
              ("Within-bin PCC, top-50 genes (a copy scores 0)", "top50", "within_bin_pcc", False),
              ("Poisson deviance per spot and gene of half B, top-50 genes (lower is better)", "top50",
               "deviance", False))
    for title, genes, metric, with_limit in tables:
        head = ["section", "F", "bins", "σ"] + (["limit"] if with_limit else []) + labels
        lines += ["", f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in payload["rows"]:
            cells = [r["section"], str(r["factor"]), str(r["bins"]),
                     "" if r["smoothing_sigma"] is None else f"{r['smoothing_sigma']:g}"]
            if with_limit:
                cells.append(f"{r['limit'][genes]['mean']:.3f}")
            for m in labels:
                s = r["methods"].get(m, {}).get(genes, {}).get(metric)
                few = len(r["methods"].get(m, {}).get("seeds", r["seeds"])) < len(r["seeds"])
                cells.append("" if s is None else f"{s['mean']:.3f}" + (" (1 seed)" if few else f" ± {s['sd']:.3f}"))
            lines.append("| " + " | ".join(cells) + " |")
    chosen = [f"{r['section']} {r['methods'][m]['bandwidth']:g}" for r in payload["rows"] for m in GRID_COLUMNS
              if m == "subspot-smooth-loso" and r["methods"].get(m, {}).get("bandwidth") is not None]
    if chosen:
        lines += ["", "Prior bandwidth (bin spacings) of `subspot-smooth-loso`, chosen on the other sections: "
                  + ", ".join(chosen) + "."]
    return "\n".join(lines)


def render_all(doc: bool) -> None:
    files = sorted(PER_SECTION.glob("*.json"))
    if not files:
        raise SystemExit(f"no per-section results in {PER_SECTION}")
    order = {"B4": 0, "C2": 1, "C3": 2, "C4": 3, "MOB1": 4, "MOB2": 5, "151675": 6, "151676": 7}
    payloads = sorted((json.loads(f.read_text()) for f in files), key=lambda p: order.get(p["section"], 99))
    payload = aggregate(payloads)
    publish("superres_pooled", payload, render(payload), doc=doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", help="GROUP/NAME under the data root, e.g. her2st/B4")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--bandwidths", nargs="+", type=float, default=list(SUBSPOT_BANDWIDTHS),
                        help=f"prior bandwidths (bin spacings) of {BANDWIDTH_GRID}")
    parser.add_argument("--out", type=Path, help="the section's JSON (default results/superres_pooled/NAME.json)")
    parser.add_argument("--render", action="store_true", help="aggregate the per-section JSONs, run nothing")
    parser.add_argument("--merge", action="store_true",
                        help="add this run's models to the seeds of an existing --out (same seeds and bins)")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    if args.render:
        render_all(doc=not args.no_doc)
        return
    if not args.section:
        parser.error("give --section GROUP/NAME, or --render")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in BASELINES and m not in TRAINED and m != BANDWIDTH_GRID]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(BASELINES) + list(TRAINED) + [BANDWIDTH_GRID]}")
    path = existing_data_root() / args.section
    if not path.is_dir():
        parser.error(f"no section folder {path}")
    machine, t0 = machine_info(), time.perf_counter()
    result = measure_section(path, args.seeds, models, tuple(args.bandwidths))
    result.update(machine=machine, wall_s=time.perf_counter() - t0, models=models)
    out = args.out or PER_SECTION / f"{path.name}.json"
    if args.merge and out.exists():
        result = merged(json.loads(out.read_text()), result)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda handle: handle.write(json.dumps(result, indent=2).encode()))
    print(f"{path.name}: {result['wall_s']:.0f} s -> {out}")


if __name__ == "__main__":
    main()
