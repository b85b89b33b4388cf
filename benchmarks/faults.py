"""Fault injection through the ``histosge`` command line: one row per fault of issue 23 (items 1-11).

Each case runs ``histosge`` in a subprocess on real data (``$HISTOSGE_DATA``, default
``../shared/data``) or a doctored copy of it in a temporary folder, injects one fault and
checks the promise of docs/cli.md: exit status 2 with one line naming the file, no
traceback, and no output destroyed or half written; or, for a fault the run survives (an
unwritable or damaged cache, a model used on another platform), exit status 0 with one
warning line and no other line on stderr. Memory and file-size faults are made with
resource limits (``RLIMIT_AS``, ``RLIMIT_FSIZE``), never by exhausting the machine; a
read-only cache is a folder under ``/sys``, which even root cannot write.

Usage::

    python benchmarks/faults.py            # about ten minutes on two busy cores
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HISTOSGE_DATA", REPO.parent / "shared" / "data"))
B4, DLPFC = DATA / "her2st" / "B4", DATA / "dlpfc" / "151675"
QUICK = ["--epochs", "3", "--n-genes", "50", "--quiet", "--device", "cpu"]


def histosge(*args: str | Path, memory: int | None = None, file_size: int | None = None,
             env: dict | None = None) -> tuple[int, str]:
    """Run ``histosge ARGS`` under optional limits; ``(status, last stderr line)``."""
    def limits() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    run = subprocess.run([sys.executable, "-m", "napari_histosge.cli.main", *map(str, args)], capture_output=True,
                         text=True, preexec_fn=limits, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    if "Traceback" in run.stderr:
        return run.returncode, "TRACEBACK: " + (lines[-1] if lines else "")
    return run.returncode, lines[-1] if lines else run.stdout.strip().splitlines()[-1:]


def copy_section(src: Path, dst: Path) -> Path:
    """``src`` in ``dst``: images and count matrices linked, the small files copied to be doctored."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        elif path.suffix.lower() in (".jpg", ".png", ".h5"):
            target.symlink_to(path)
        else:
            shutil.copyfile(path, target)
    return dst


def damaged(good: Path, out: Path, seed: int = 1) -> Path:
    data = bytearray(good.read_bytes())
    for i in np.random.default_rng(seed).choice(len(data), 50, replace=False):
        data[int(i)] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def nan_weights(good: Path, out: Path) -> Path:
    import torch

    payload = torch.load(good, weights_only=False)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] * float("nan")
    torch.save(payload, out)
    return out


def edit_keeping_size_and_mtime(tiff: Path) -> None:
    """Brighten a band of an uncompressed TIFF in place, then set its mtime back."""
    import tifffile

    stat = tiff.stat()
    pixels = tifffile.memmap(tiff, mode="r+")
    band = slice(pixels.shape[0] // 3, 2 * pixels.shape[0] // 3)
    pixels[band] = np.clip(pixels[band].astype(np.int16) + 40, 0, 255).astype(np.uint8)
    pixels.flush()
    del pixels
    os.utime(tiff, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def cases(tmp: Path, model: Path) -> list[tuple[str, Callable[[], tuple[int, str]], int]]:
    """``(name, run, expected status)`` of every fault."""
    def before_after(out: Path, run: Callable[[], tuple[int, str]]) -> tuple[int, str]:
        out.write_text("an earlier output")
        status, line = run()
        kept = out.read_text() == "an earlier output"
        leftovers = [p.name for p in out.parent.glob(".*tmp*")]
        return status, f"[earlier file kept: {kept}; temporary files left: {len(leftovers)}] {line}"

    def two_trainings() -> tuple[int, str]:
        first = subprocess.Popen([sys.executable, "-m", "napari_histosge.cli.main", "train", B4, "--out",
                                  tmp / "two.pt", "--epochs", "300", "--quiet"], stderr=subprocess.DEVNULL)
        while not (tmp / "two.pt.lock").exists() and first.poll() is None:
            time.sleep(0.2)
        result = histosge("train", B4, "--out", tmp / "two.pt", *QUICK)
        first.kill()
        first.wait()
        return result

    def stale_cache() -> tuple[int, str]:
        import anndata as ad
        import tifffile
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        tiff = tmp / "he.tif"
        tifffile.imwrite(tiff, np.asarray(Image.open(next(B4.glob("*.jpg"))).convert("RGB")), photometric="rgb")
        env = {"HISTOSGE_CACHE": str(tmp / "cache")}
        histosge("predict", model, B4, "--image", tiff, "--out", tmp / "before.h5ad", "--quiet", env=env)
        edit_keeping_size_and_mtime(tiff)
        status, line = histosge("predict", model, B4, "--image", tiff, "--out", tmp / "after.h5ad", "--quiet",
                                env=env)
        diff = np.abs(ad.read_h5ad(tmp / "before.h5ad").X - ad.read_h5ad(tmp / "after.h5ad").X)
        return status, f"spots whose predictions changed: {int((diff.max(axis=1) > 1e-6).sum())} of {len(diff)}"

    def doctored_st(name: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
        folder = copy_section(B4, tmp / name)
        table = pd.read_csv(folder / "B4.tsv.gz", sep="\t", index_col=0)
        edit(table).to_csv(folder / "B4.tsv.gz", sep="\t")
        return folder

    def doctored_visium(name: str, key: str, factor: float) -> Path:
        folder = copy_section(DLPFC, tmp / name)
        path = folder / "spatial" / "scalefactors_json.json"
        factors = json.loads(path.read_text())
        factors[key] *= factor
        path.write_text(json.dumps(factors))
        return folder

    def fractional(table: pd.DataFrame) -> pd.DataFrame:
        table = table.astype(float)
        table.iloc[:, :3] = table.iloc[:, :3] / 2 + 0.25
        return table

    pred = tmp / "pred.h5ad"
    return [
        ("1 predict on a checkpoint with 50 bytes flipped",
         lambda: histosge("predict", damaged(model, tmp / "bad.pt"), B4, "--out", pred, "--quiet"), 2),
        ("2 train --patch-um 1e6 (8 GiB address space)",
         lambda: histosge("train", B4, "--out", tmp / "huge.pt", "--patch-um", "1e6", *QUICK, memory=8 * 2**30), 2),
        ("3 train --lr 1e6", lambda: histosge("train", B4, "--out", tmp / "lr.pt", "--lr", "1e6", *QUICK), 2),
        ("3 predict with NaN weights",
         lambda: histosge("predict", nan_weights(model, tmp / "nan.pt"), B4, "--out", tmp / "nan.h5ad", "--quiet"),
         2),
        ("4 predict, output over the file-size limit",
         lambda: before_after(pred, lambda: histosge("predict", model, B4, "--out", pred, "--quiet",
                                                      file_size=50_000)), 2),
        ("4 recover, output over the file-size limit",
         lambda: before_after(tmp / "hidden.h5ad", lambda: histosge("recover", B4, "--out", tmp / "hidden.h5ad",
                                                                     *QUICK, file_size=50_000)), 2),
        ("4 train, checkpoint over the file-size limit",
         lambda: before_after(tmp / "t.pt", lambda: histosge("train", B4, "--out", tmp / "t.pt", *QUICK,
                                                              file_size=500_000)), 2),
        ("5 a second train on the same --out", two_trainings, 2),
        ("6 image edited in place, size and mtime kept", stale_cache, 0),
        ("7 ST v1 counts that are not integers",
         lambda: histosge("train", doctored_st("fractional", fractional), "--out", tmp / "x.pt", *QUICK), 2),
        ("7 a one-gene section",
         lambda: histosge("train", doctored_st("one", lambda t: t.iloc[:, :1]), "--out", tmp / "x.pt", *QUICK), 2),
        ("7 Visium spot_diameter_fullres x10",
         lambda: histosge("train", doctored_visium("wide", "spot_diameter_fullres", 10), "--out", tmp / "x.pt",
                          *QUICK), 2),
        ("7 Visium tissue_lowres_scalef /10",
         lambda: histosge("train", doctored_visium("small", "tissue_lowres_scalef", 0.1), "--out", tmp / "x.pt",
                          *QUICK), 2),
    ]


def warnings_shown(*args: str | Path, env: dict | None = None) -> tuple[int, str]:
    """Run ``histosge ARGS`` with Python's own warning settings; ``(status, summary of stderr)``.

    The summary counts the lines that are not ``histosge:`` lines (library noise) and quotes
    the last ``histosge:`` line.
    """
    run = subprocess.run([sys.executable, "-m", "napari_histosge.cli.main", *map(str, args)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONWARNINGS": "", **(env or {})})
    lines = [line for line in run.stderr.splitlines() if line.strip() and "found in sys.modules" not in line]
    ours = [line for line in lines if line.startswith("histosge:")]
    if "Traceback" in run.stderr:
        return run.returncode, "TRACEBACK: " + (lines[-1] if lines else "")
    return run.returncode, f"[other stderr lines: {len(lines) - len(ours)}] {ours[-1] if ours else '(none)'}"


def timed(run: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    start = time.perf_counter()
    status, line = run()
    return status, f"[{time.perf_counter() - start:.1f} s] {line}"


def message_cases(tmp: Path, model: Path) -> list[tuple[str, Callable[[], tuple[int, str]], int]]:
    """``(name, run, expected status)`` of items 8-11: who is blamed, in one line, before any work."""
    def damaged_pyramid() -> tuple[int, str]:
        env = {"HISTOSGE_CACHE": str(tmp / "pyramid-cache")}
        histosge("predict", model, B4, "--out", tmp / "p1.h5ad", "--quiet", env=env)
        chunks = sorted(p for p in (tmp / "pyramid-cache" / "pyramids").rglob("*") if p.is_file()
                        and p.name != "zarr.json")
        chunks[0].write_bytes(chunks[0].read_bytes()[:-100])  # a truncated chunk file
        shutil.rmtree(tmp / "pyramid-cache" / "features")  # cached features would skip the pyramid
        return warnings_shown("predict", model, B4, "--out", tmp / "p2.h5ad", "--quiet", env=env)

    def displaced_spots() -> Path:
        folder = copy_section(B4, tmp / "displaced")
        path = folder / "B4_selection.tsv"
        table = pd.read_csv(path, sep="\t")
        selected = np.flatnonzero(table["selected"].to_numpy() == 1)[:3]
        table.loc[selected, ["pixel_x", "pixel_y"]] += 20_000
        table.to_csv(path, sep="\t", index=False)
        return folder

    def orphan_checkpoint() -> tuple[int, str]:
        out = tmp / "orphan.pt"
        writer = subprocess.Popen([sys.executable, "-c", "import sys, time; from napari_histosge.outputs import "
                                   "atomic_path\nwith atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'x' * "
                                   "13_000_000); print(tmp, flush=True); time.sleep(60)", str(out)],
                                  stdout=subprocess.PIPE, text=True)
        orphan = Path(writer.stdout.readline().strip()) if writer.stdout else Path()
        writer.kill()
        writer.wait()
        left_before = orphan.is_file()
        status, line = histosge("train", B4, "--out", out, *QUICK)
        return status, f"[orphan after kill -9: {left_before}; after the next train: {orphan.exists()}] {line}"

    def foreign_weights() -> Path:
        import torch

        path = tmp / "foreign.pth"
        torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Path("x")}, path)  # PosixPath: not weights-only
        return path

    predictions = tmp / "earlier.h5ad"
    predictions.write_bytes(b"")  # only its name is checked before the refusal
    bad_before_work = {
        "train --out in a missing folder": ("train", B4, "--out", tmp / "gone" / "m.pt", *QUICK),
        "recover --out m.txt": ("recover", B4, "--out", tmp / "m.txt", *QUICK),
        "predict --out in a missing folder": ("predict", model, B4, "--out", tmp / "gone" / "p.h5ad"),
        "superresolve --fold 1": ("superresolve", model, B4, "--out", tmp / "s.h5ad", "--fold", "1"),
        "recover --holdout 1.5": ("recover", B4, "--out", tmp / "r.h5ad", "--holdout", "1.5", *QUICK),
        "evaluate --metrics in a missing folder": ("evaluate", predictions, B4, "--metrics", tmp / "gone" / "m.csv"),
        "demo --out in a missing folder": ("demo", "--out", tmp / "gone" / "demo"),
    }
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "no-hub-cache")}
    return [
        ("8 predict, $HISTOSGE_CACHE read-only (under /sys)",
         lambda: warnings_shown("predict", model, B4, "--out", tmp / "ro.h5ad", "--quiet",
                                env={"HISTOSGE_CACHE": "/sys/histosge-cache"}), 0),
        ("8 predict, a truncated chunk in the pyramid cache", damaged_pyramid, 0),
        ("8 three spots displaced in the selection file",
         lambda: histosge("train", displaced_spots(), "--out", tmp / "x.pt", *QUICK), 2),
        ("8 train --patch-um -5",
         lambda: timed(lambda: histosge("train", B4, "--out", tmp / "x.pt", "--patch-um", "-5", *QUICK)), 2),
        ("9 train --weights with a foreign pickle",
         lambda: histosge("train", B4, "--out", tmp / "x.pt", "--extractor", "timm:resnet18", "--weights",
                          foreign_weights(), *QUICK), 2),
        ("9 train --extractor uni offline",
         lambda: timed(lambda: warnings_shown("train", B4, "--out", tmp / "x.pt", "--extractor", "uni", *QUICK,
                                              env=offline)), 2),
        *[(f"10 {label}", lambda args=args: timed(lambda: histosge(*args)), 2)
          for label, args in bad_before_work.items()],
        ("11 kill -9 during a checkpoint write, then train", orphan_checkpoint, 0),
        ("9, 11 ST v1 model predicting on Visium",
         lambda: warnings_shown("predict", model, DLPFC, "--out", tmp / "v.h5ad", "--quiet"), 0),
    ]


def main() -> int:
    if not B4.is_dir() or not DLPFC.is_dir():
        print(f"real data not found at {DATA} (set HISTOSGE_DATA)")
        return 1
    failed = 0
    with tempfile.TemporaryDirectory(prefix="histosge-faults-") as name:
        tmp = Path(name)
        model = tmp / "b4.pt"
        status, line = histosge("train", B4, "--out", model, "--epochs", "20", "--n-genes", "50", "--quiet")
        if status != 0:
            print(f"could not train the model the cases use: {line}")
            return 1
        print(f"{'case':<50} {'want':>4} {'got':>4}  message")
        for label, run, expected in [*cases(tmp, model), *message_cases(tmp, model)]:
            status, line = run()
            failed += status != expected or "TRACEBACK" in str(line)
            print(f"{label:<50} {expected:>4} {status:>4}  {str(line)[:200]}", flush=True)
    print("all cases as documented" if not failed else f"{failed} case(s) not as documented")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
