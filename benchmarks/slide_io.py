"""Gigapixel slide benchmark: lazy opening, patch extraction, naive full-level read.

Generates once (then reuses) a 100,000 x 100,000 px JPEG-compressed pyramidal tiled
TIFF in ``$HISTOSGE_BENCH_DIR`` (default ``~/.cache/napari-histosge-bench``), then
measures, in this one process and run:

- time to open it and to show a first view (whole coarsest level + one screen of
  level 0), and the resident-memory growth that costs;
- patch extraction for 50,000 random spots with :meth:`Slide.read_patches`
  (tiles grouped: each tile decoded once) against reading the same patches one by
  one with :meth:`Slide.read_region` (the per-patch approach, on a subsample), and
  against the naive approach of loading the full-resolution level (refused: it
  would need the size reported).

It writes ``benchmarks/results/slide_io.json`` and the ``slide_io`` block of
``docs/benchmarks.md``. Usage::

    python benchmarks/slide_io.py                 # 100k slide, 50,000 spots
    python benchmarks/slide_io.py --size 20000 --spots 5000 --no-doc   # quick check
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_info, machine_line, publish  # noqa: E402

TILE = 512


def bench_dir() -> Path:
    """``$HISTOSGE_BENCH_DIR`` or ``~/.cache/napari-histosge-bench`` (outside the repo)."""
    env = os.environ.get("HISTOSGE_BENCH_DIR")
    return Path(env) if env else Path.home() / ".cache" / "napari-histosge-bench"


def _tile_pool(n_tissue: int = 12, n_glass: int = 4, seed: int = 0) -> list[bytes]:
    """JPEG-encoded 512 px tiles (tissue-like texture and near-white glass), as tifffile stores them.

    Encoding a few tiles once and repeating their bytes makes writing a 10-gigapixel
    file a matter of disk speed instead of hours of JPEG encoding.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    tiles = []
    for i in range(n_tissue):
        fx, fy, ph = rng.uniform(15, 60), rng.uniform(15, 60), rng.uniform(0, 6)
        nuclei = (np.sin(xx / fx + ph) * np.sin(yy / fy - ph)) > 0.6
        base = np.dstack([215 - 40 * nuclei, 140 - 70 * nuclei, 200 - 30 * nuclei]).astype(np.float32)
        base += rng.normal(0, 5, base.shape)
        tiles.append(np.clip(base, 0, 255).astype(np.uint8))
    for i in range(n_glass):
        tiles.append(np.clip(240 + rng.normal(0, 2, (TILE, TILE, 3)), 0, 255).astype(np.uint8))
    img = np.concatenate(tiles, axis=1)  # one row of tiles
    buf = io.BytesIO()
    tifffile.imwrite(buf, img, tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 85},
                     photometric="rgb")
    buf.seek(0)
    with tifffile.TiffFile(buf) as tf:
        page = tf.pages[0]
        fh = tf.filehandle
        out = []
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            fh.seek(offset)
            out.append(fh.read(count))
    return out


def make_big_slide(path: Path, size: int = 100_000, min_level: int = 1024) -> Path:
    """Write a ``size`` x ``size`` JPEG pyramidal tiled TIFF (SubIFD levels) if absent."""
    import tifffile

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = _tile_pool()
    n_tissue = len(pool) - 4

    def tiles(h: int, w: int, level: int):
        rows, cols = -(-h // TILE), -(-w // TILE)
        for r in range(rows):
            for c in range(cols):
                # Tissue in a disc covering ~60% of the slide, glass around it.
                cy, cx = (r + 0.5) / rows - 0.5, (c + 0.5) / cols - 0.5
                if cy * cy + cx * cx < 0.19:
                    yield pool[(r * 7919 + c * 104729 + level) % n_tissue]
                else:
                    yield pool[n_tissue + (r + c) % 4]

    shapes = [(size, size)]
    while max(shapes[-1]) > min_level:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    tmp = path.with_suffix(".tmp.tif")
    kw = dict(dtype="uint8", tile=(TILE, TILE), compression="jpeg", photometric="rgb")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        h, w = shapes[0]
        tw.write(tiles(h, w, 0), shape=(h, w, 3), subifds=len(shapes) - 1,
                 resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER", **kw)
        for level, (h, w) in enumerate(shapes[1:], 1):
            tw.write(tiles(h, w, level), shape=(h, w, 3), subfiletype=1, **kw)
    os.replace(tmp, path)
    return path


def _rss_mb() -> tuple[float, float]:
    """Current and peak resident memory of this process (MB), from /proc."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":", 1)
            vals[k] = float(v.split()[0]) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def run(size: int, n_spots: int, naive_n: int, patch: int, batch: int) -> dict:
    from napari_histosge.errors import InputError
    from napari_histosge.slide.open import open_slide

    path = bench_dir() / f"synthetic_{size}px_jpeg_pyramid.tif"
    t0 = time.perf_counter()
    make_big_slide(path, size)
    gen_s = time.perf_counter() - t0
    import dask.array  # noqa: F401  (imports are not part of opening)
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    rss0, _ = _rss_mb()
    t0 = time.perf_counter()
    slide = open_slide(path)
    open_s = time.perf_counter() - t0
    thumb = slide.levels[-1].compute()  # what a viewer shows first: the coarsest level...
    cy, cx = size // 2, size // 2
    view = slide.read_region(cx - 960, cy - 540, 1920, 1080, 0)  # ...then one screen at full resolution
    first_view_s = time.perf_counter() - t0
    rss1, _ = _rss_mb()
    opened = {
        "file_gb": path.stat().st_size / 1e9, "levels": [list(lv.shape[:2]) for lv in slide.levels],
        "open_s": open_s, "first_view_s": first_view_s, "rss_growth_mb": rss1 - rss0,
        "thumbnail": list(thumb.shape[:2]), "view_mean": float(view.mean()),
    }
    print(f"open {open_s:.3f} s, first view {first_view_s:.3f} s, RSS +{rss1 - rss0:.0f} MB", flush=True)
    slide.close()

    rng = np.random.default_rng(0)
    xy = rng.uniform(patch, size - patch, (n_spots, 2))
    # Tile-grouped reads, in batches as feature extraction reads them (visiting order sorted).
    from napari_histosge.features.extract import spatial_order

    order = spatial_order(xy, patch)
    with open_slide(path) as s:
        t0 = time.perf_counter()
        for i in range(0, n_spots, batch):
            s.read_patches(xy[order[i : i + batch]], patch, patch)
        grouped_s = time.perf_counter() - t0
        tiles = s.tiles_decoded
    _, peak = _rss_mb()
    print(f"grouped: {n_spots / grouped_s:.0f} patches/s, {tiles} tiles decoded", flush=True)
    # Per-patch reads (each patch decodes its own tiles), on a random subsample.
    with open_slide(path) as s:
        sub = xy[:naive_n]
        t0 = time.perf_counter()
        for x, y in sub:
            s.read_region(int(x) - patch // 2, int(y) - patch // 2, patch, patch, 0)
        per_patch_s = time.perf_counter() - t0
        print(f"per patch: {naive_n / per_patch_s:.0f} patches/s", flush=True)
        # Naive: the full-resolution level in memory first.
        try:
            s.read_region(0, 0, size, size, 0)
            full = {"refused": False}
        except InputError as exc:
            full = {"refused": True, "message": str(exc)}
    full["needs_gb"] = size * size * 3 / 1e9
    return {
        "size": size, "tile": TILE, "generate_s": gen_s, "open": opened,
        "patches": {
            "n_spots": n_spots, "patch_px": patch, "batch": batch,
            "grouped_s": grouped_s, "grouped_per_s": n_spots / grouped_s, "tiles_decoded": tiles,
            "tiles_level0": (-(-size // TILE)) ** 2, "peak_rss_mb": peak,
            "per_patch_n": naive_n, "per_patch_s": per_patch_s, "per_patch_per_s": naive_n / per_patch_s,
            "full_level": full,
        },
    }


def render(payload: dict) -> str:
    o, p = payload["open"], payload["patches"]
    full = p["full_level"]
    lines = [
        machine_line(payload["machine"]),
        f"Synthetic {payload['size']:,} x {payload['size']:,} px JPEG pyramidal tiled TIFF "
        f"({TILE} px tiles, {len(o['levels'])} levels, {o['file_gb']:.2f} GB), generated once in "
        "`$HISTOSGE_BENCH_DIR`. Targets: open under 1 s and 300 MB.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| open (metadata only) | {o['open_s']:.3f} s |",
        f"| first view (open + coarsest level + one 1920x1080 screen at full res) | {o['first_view_s']:.3f} s |",
        f"| resident memory growth for that | {o['rss_growth_mb']:.0f} MB |",
        f"| {p['n_spots']:,} random {p['patch_px']} px patches, tiles grouped (batches of {p['batch']}) "
        f"| {p['grouped_per_s']:,.0f} patches/s ({p['grouped_s']:.1f} s; {p['tiles_decoded']:,} tiles decoded "
        f"once each, of {p['tiles_level0']:,}; peak RSS {p['peak_rss_mb']:.0f} MB) |",
        f"| same, one `read_region` per patch ({p['per_patch_n']:,}-patch subsample) "
        f"| {p['per_patch_per_s']:,.0f} patches/s |",
        f"| naive: full-resolution level into memory first | "
        f"{'refused' if full['refused'] else 'ran'}: needs {full['needs_gb']:.0f} GB of RAM |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="slide edge in px")
    parser.add_argument("--spots", type=int, default=50_000)
    parser.add_argument("--per-patch", type=int, default=2000, help="subsample for the per-patch reads")
    parser.add_argument("--patch", type=int, default=224, help="patch edge in level-0 px")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    payload = {"machine": machine_info(), **run(args.size, args.spots, args.per_patch, args.patch, args.batch)}
    publish("slide_io", payload, render(payload), doc=not args.no_doc, show=False)
    return 0


if __name__ == "__main__":
    if "--generate-only" in sys.argv:
        size = int(sys.argv[sys.argv.index("--generate-only") + 1])
        t0 = time.perf_counter()
        p = make_big_slide(bench_dir() / f"synthetic_{size}px_jpeg_pyramid.tif", size)
        print(p, f"{p.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
        sys.exit(0)
    sys.exit(main())
