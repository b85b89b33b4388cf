"""How many image pixels across a spot do the default image features need?

DLPFC's only image is the Visium low-res PNG, about 4.3 px across a spot, and there the
default features trail features off on the variable genes (the ``seeds`` block). This
script asks whether that is the resolution: it runs the recovery protocol (hold-out half,
``recovery.py``) on the her2st sections, whose H&E is full resolution (about 145 px across a
spot), with the default features read from that image and from copies shrunk to
``--px`` pixels across a spot (box filter, as a low-res PNG is made), and with image
features off. Writes ``benchmarks/results/resolution.json`` and the ``resolution`` block of
``docs/benchmarks.md``. Usage::

    python benchmarks/resolution.py                          # her2st, splits 0-4, 16 and 4.34 px
    python benchmarks/resolution.py --sections B4 --seeds 0 --px 8

Sections measured before stay in the table (re-running one replaces it).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, measure_sections, run_lines, signed, wins  # noqa: E402
from recovery import run_variant, sections  # noqa: E402

from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots, spot_image  # noqa: E402
from napari_histosge.models import train_config  # noqa: E402
from napari_histosge.pipeline.steps import NO_IMAGE, image_pixels_per_spot, spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

#: 4.34 px across a spot: DLPFC's low-res PNG (spot diameter 96.4 full-res px x scale 0.0450).
DEFAULT_PX = (16.0, 4.34)


def shrunk_copies(adata, pxs: list[float], folder: Path) -> list:
    """``adata`` once per ``px``, its image replaced by a copy shrunk to ``px`` pixels across a spot.

    The full-resolution image is decoded once for all of them (her2st's H&E is ~92 Mpx).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # above PIL's decompression-bomb guard
    path, scale = spot_image(adata)
    full_px = image_pixels_per_spot(adata)
    copies = []
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        for px in pxs:
            size = (max(1, round(rgb.width * px / full_px)), max(1, round(rgb.height * px / full_px)))
            out = folder / f"{Path(path).stem}_{px:g}px.png"
            rgb.resize(size, Image.Resampling.BOX).save(out)
            shrunk = adata.copy()
            info = copy.deepcopy(dict(shrunk.uns["histosge"]))
            # The scale the reader would record: shrunk width over full-res width.
            info["images"] = {"shrunk": {"path": str(out), "scale": scale * size[0] / rgb.width}}
            info["image"] = "shrunk"
            shrunk.uns["histosge"] = info
            copies.append(shrunk)
    return copies


def scores(adata, feats, seed: int, *, off: bool = False) -> list[float]:
    """Held-out PCC (HVG, top-50) of HisToSGE with its defaults on split ``seed``."""
    split = argparse.Namespace(holdout=0.5, seed=seed)
    features = FeatureConfig(extractor=NO_IMAGE) if off else FeatureConfig()
    config = train_config(seed=seed, gene_selection="hvg")
    _, row, _ = run_variant(adata, "resolution", config, features, None if off else feats, split)
    return [row["pcc_hvg"], row["pcc_top50"]]


def run_section(adata, seeds: list[int], pxs: list[float]) -> dict:
    """``{"seeds", "off": [[hvg, top50] per split], "images": [{"px", "full_resolution", "scores"}]}``:
    the full-resolution image first, then one shrunk copy per ``pxs``."""
    out: dict = {"seeds": seeds, "off": [scores(adata, None, s, off=True) for s in seeds], "images": []}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in [adata, *shrunk_copies(adata, pxs, Path(tmp))]:
            feats = run_to_end(spot_features(variant, FeatureConfig()))
            runs = [scores(variant, feats, s) for s in seeds]
            px = image_pixels_per_spot(variant)
            out["images"].append({"px": px, "full_resolution": variant is adata, "scores": runs})
            print(f"{px:.1f} px: " + ", ".join(f"{h:.4f}/{t:.4f}" for h, t in runs), flush=True)
    return out


def render(payload: dict) -> str:
    lines = [
        *run_lines(payload["machines"]),
        "Recovery protocol (hold-out 50%), HisToSGE with its defaults, trained with the default image features "
        "read from the full-resolution H&E and from copies shrunk (box filter) to fewer pixels across a spot, "
        "and with image features off. Mean (SD) of the held-out PCC over the splits; 'default - off' lists "
        "the HVG difference on each split; 'above off' counts the splits on which the image features are "
        "above features off (HVG, top-50).",
        "",
        "| section | image: px across a spot | splits | PCC HVG mean (SD) | default - off per split (HVG) | "
        "PCC top-50 mean (SD) | above off: HVG, top-50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for section, res in payload["results"].items():
        off = np.array(res["off"])
        splits = ", ".join(str(s) for s in res["seeds"])
        lines.append(f"| {section} | image features off | {splits} "
                     f"| {off[:, 0].mean():.4f} ({off[:, 0].std(ddof=1):.4f})"
                     f" |  | {off[:, 1].mean():.4f} ({off[:, 1].std(ddof=1):.4f}) |  |")
        for image in res["images"]:
            v = np.array(image["scores"])
            label = f"{image['px']:.1f}" + (" (full resolution)" if image["full_resolution"] else "")
            lines.append(
                f"| {section} | {label} | {splits} | {v[:, 0].mean():.4f} ({v[:, 0].std(ddof=1):.4f}) | "
                f"{signed(v[:, 0] - off[:, 0])} | {v[:, 1].mean():.4f} ({v[:, 1].std(ddof=1):.4f}) | {wins(v, off)} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", default=["B4", "C2", "C3", "C4"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="split seeds (at least 2)")
    parser.add_argument("--px", nargs="+", type=float, default=list(DEFAULT_PX),
                        help="pixels across a spot of the shrunk copies")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least 2 splits (the table reports an SD)")
    if any(not px > 0 for px in args.px):
        parser.error("--px values must be positive")
    import torch

    torch.set_num_threads(2)
    root = existing_data_root()
    todo = sections(root, args.sections)
    if not todo:
        raise SystemExit(f"none of the sections {args.sections} under {root}")
    data = {name: read_spots(path) for name, path in todo}
    for name, adata in data.items():  # before any run, so a bad --px costs nothing
        full = image_pixels_per_spot(adata)
        if full is None or any(px >= full for px in args.px):
            raise SystemExit(f"{name}: its image has {full} px across a spot; --px must all be below that")
    pxs = sorted(args.px, reverse=True)
    measure_sections("resolution", data, lambda adata: run_section(adata, list(args.seeds), pxs),
                     render, doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
