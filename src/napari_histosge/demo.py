"""A generated sample that needs nothing downloaded: an H&E-like slide with known truth.

The slide has three tissue compartments (tumour: dense large nuclei; immune: small
dark nuclei; stroma: pink, sparse) drawn from smooth random fields. Spots sit on a
square Spatial Transcriptomics v1 lattice; each gene's expected expression is a
known mix of the compartments under the spot plus a smooth spatial gradient, and
the counts are Poisson draws from it. The folder is written in the ST v1 layout,
so the demo exercises the real reader, features, training, recovery and
super-resolution.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .evaluation.metrics import gene_metrics, summarize
from .features import FeatureConfig
from .io import read_spots
from .models import HisToSGEConfig
from .pipeline.recovery import recover
from .pipeline.steps import superresolve
from .progress import CancelToken, Progress, ProgressGenerator

SPOT_SPACING_PX = 110.0  # 200 um ST v1 pitch at 1.82 um/px: a small, fast slide
N_GRID = 18
N_GENES = 40
MARGIN_PX = 120


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian random field; made at 1/8 size and zoomed up, which is fast."""
    from scipy.ndimage import gaussian_filter, zoom

    small = (shape[0] // 8 + 1, shape[1] // 8 + 1)
    field = gaussian_filter(rng.standard_normal(small), sigma / 8)
    field = zoom(field, (shape[0] / small[0], shape[1] / small[1]), order=1)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-9)


def _render_slide(labels: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint an H&E-like RGB image from a compartment label map (0 stroma, 1 tumour, 2 immune)."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    h, w = labels.shape
    # nuclei centres: density and size differ by compartment
    density = np.array([0.0006, 0.004, 0.006])[labels] * tissue
    centres = rng.random((h, w)) < density
    big = centres & (labels == 1)
    small = centres & (labels != 1)
    nuclei_big = binary_dilation(big, structure=np.ones((7, 7), bool))
    nuclei_small = binary_dilation(small, structure=np.ones((4, 4), bool))
    nuclei = nuclei_big | nuclei_small
    background = np.array([244, 242, 246], np.float32)
    stroma = np.array([232, 160, 196], np.float32)
    tumour = np.array([214, 150, 200], np.float32)
    nucleus = np.array([72, 44, 132], np.float32)
    base = np.where((labels == 1)[..., None], tumour, stroma)
    image = np.where(tissue[..., None], base, background)
    image = np.where(nuclei[..., None], nucleus, image)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    image = gaussian_filter(image, sigma=(0.8, 0.8, 0))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_demo_dataset(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the demo section (ST v1 layout) into ``out_dir`` and return that folder.

    Parameters
    ----------
    out_dir
        Folder to create; it receives ``demo.tsv.gz`` (counts), ``demo_selection.tsv``
        (spot positions), ``demo_HE.jpg`` (the slide) and ``truth.tsv.gz`` (the expected
        expression per spot and gene, before Poisson noise).
    seed
        Random seed; the same seed gives the same files.
    """
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = int(2 * MARGIN_PX + (N_GRID - 1) * SPOT_SPACING_PX)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tissue = ((xx - 0.5) ** 2 / 0.23 + (yy - 0.5) ** 2 / 0.2) < 1.0
    # compartments about one to two spots across, so a spot's own histology matters
    tumour_field = _smooth_field((size, size), SPOT_SPACING_PX * 0.9, rng) + 0.8 * (xx - 0.5)
    immune_field = _smooth_field((size, size), SPOT_SPACING_PX * 0.5, rng)
    labels = np.zeros((size, size), np.int64)
    labels[tumour_field > 0.4] = 1
    labels[(immune_field > 0.9) & (labels == 0)] = 2
    Image.fromarray(_render_slide(labels, tissue, rng)).save(out / "demo_HE.jpg", quality=90)

    # spots on a square lattice; composition = mean of one-hot labels over the spot disk
    radius = SPOT_SPACING_PX / 4
    onehot = np.stack([(labels == k) & tissue for k in range(3)], -1).astype(np.float32)
    comp_maps = gaussian_filter(onehot[::4, ::4], sigma=(radius / 6, radius / 6, 0))
    rows = []
    for gx in range(N_GRID):
        for gy in range(N_GRID):
            px = MARGIN_PX + gx * SPOT_SPACING_PX + rng.normal(0, 1.5)
            py = MARGIN_PX + gy * SPOT_SPACING_PX + rng.normal(0, 1.5)
            inside = bool(tissue[int(py), int(px)])
            rows.append((gx + 1, gy + 1, px, py, int(inside)))
    sel = pd.DataFrame(rows, columns=["x", "y", "pixel_x", "pixel_y", "selected"])
    sel["new_x"], sel["new_y"] = sel["x"].astype(float), sel["y"].astype(float)
    sel = sel[["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]]
    sel.to_csv(out / "demo_selection.tsv", sep="\t", index=False)

    spots = sel[sel["selected"] == 1]
    comp = comp_maps[spots["pixel_y"].astype(int) // 4, spots["pixel_x"].astype(int) // 4]
    gradient = (spots["pixel_x"].to_numpy() / size - 0.5)[:, None]
    loadings = rng.normal(0, 2.0, (3, N_GENES))
    slopes = rng.normal(0, 1.0, (1, N_GENES)) * (rng.random(N_GENES) < 0.4)
    base = rng.uniform(-1.0, 1.5, N_GENES)
    log_rate = base + comp @ loadings + gradient @ slopes
    depth = rng.uniform(2500, 5000, (len(spots), 1))
    rate = np.exp(log_rate)
    rate = rate / rate.sum(1, keepdims=True) * depth
    counts = rng.poisson(rate)
    genes = [f"GENE{i:02d}" for i in range(N_GENES)]
    ids = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    pd.DataFrame(counts, index=ids, columns=genes).to_csv(out / "demo.tsv.gz", sep="\t")
    truth = np.log1p(rate / rate.sum(1, keepdims=True) * 1e4)
    pd.DataFrame(truth, index=ids, columns=genes).to_csv(out / "truth.tsv.gz", sep="\t")
    return out


def run_demo(
    out_dir: str | Path, *, epochs: int = 150, device: str = "auto", seed: int = 0,
    cancel: CancelToken | None = None,
) -> ProgressGenerator[dict[str, Any]]:
    """Generate the demo slide, run recovery (hold out half) and 4-fold super-resolution.

    Returns
    -------
    dict
        ``summary`` (the recovery summary), ``truth_pcc`` (held-out PCC of the model
        against the noise-free truth), ``paths`` of everything written, and ``report``
        (a few lines of text for the terminal).
    """
    out = Path(out_dir)
    start = time.perf_counter()
    yield Progress("demo", 0, 1, "generating the slide")
    data_dir = make_demo_dataset(out / "data", seed=seed)
    adata = read_spots(data_dir)
    yield Progress("demo", 1, 1, f"{adata.n_obs} spots x {adata.n_vars} genes")
    # checkpoint once at the end: the demo has nothing to resume
    train_config = HisToSGEConfig(epochs=epochs, seed=seed, device=device, n_top_genes=N_GENES, checkpoint_every=epochs)
    feature_config = FeatureConfig(device=device)
    result = yield from recover(
        adata, holdout=0.5, seed=seed, train_config=train_config, feature_config=feature_config, cancel=cancel
    )
    truth = pd.read_csv(data_dir / "truth.tsv.gz", sep="\t", index_col=0)
    truth_metrics = gene_metrics(
        truth.loc[result.test_ids, result.genes].to_numpy(), np.asarray(result.predictions.X), result.genes
    )
    # super-resolve with the model trained on the visible half: no extra training
    model = result.model
    model.save(out / "model.pt")
    sr = yield from superresolve(model, adata, 4, cancel=cancel)
    paths = {
        "data": str(data_dir), "model": str(out / "model.pt"),
        "recovered": str(out / "recovered.h5ad"), "superres_4x": str(out / "superres_4x.h5ad"),
    }
    result.predictions.write_h5ad(paths["recovered"])
    sr.write_h5ad(paths["superres_4x"])
    summary = result.summary()
    summary["model_vs_truth"] = summarize(truth_metrics)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    elapsed = time.perf_counter() - start
    report = "\n".join([
        f"demo: {adata.n_obs} spots, {len(result.genes)} genes, half hidden; {elapsed:.1f} s in all",
        f"  held-out PCC, model vs measured:       {summary['model']['mean_pcc']:.3f}",
        f"  held-out PCC, 6-NN baseline:           {summary['baseline']['mean_pcc']:.3f}",
        f"  held-out PCC, model vs noise-free truth: {summary['model_vs_truth']['mean_pcc']:.3f}",
        f"  4-fold super-resolution (model trained on the visible half): {sr.n_obs} positions"
        f" -> {paths['superres_4x']}",
        f"  open it in napari: napari {data_dir}  (then Plugins > napari-histosge)",
    ])
    return {"summary": summary, "paths": paths, "report": report, "elapsed_s": elapsed}
