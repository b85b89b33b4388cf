"""Faults a user or an unlucky machine meets get one clear error and lose nothing (issue 23).

Damaged checkpoints, a patch too large to decode, a diverged model, a full or read-only disk,
two trainings on one output, an image edited in place: each case injects the fault.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from napari_histosge import outputs
from napari_histosge.cli.main import EXIT_INPUT_ERROR, main
from napari_histosge.cli.options import write_h5ad as cli_write_h5ad
from napari_histosge.errors import InputError
from napari_histosge.features import FeatureConfig
from napari_histosge.features.extract import extract_features_at
from napari_histosge.models import load_model, train, train_config
from napari_histosge.progress import run_to_end
from napari_histosge.slide.open import open_slide
from napari_histosge.training.inputs import TrainingData
from test_io import make_st_v1

SMALL = dict(dim=32, heads=2, head_hidden=64, n_pos_bins=16, group_size=16, batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained HisToSGE checkpoint."""
    rng = np.random.default_rng(0)
    n, side = 64, 8
    ys, xs = np.divmod(np.arange(n), side)
    data = TrainingData(rng.normal(size=(n, 6)).astype(np.float32), rng.uniform(100, 200, (n, 3)),
                        np.c_[xs, ys] * 150.0 + 500, rng.gamma(2, 1, (n, 5)).astype(np.float32),
                        [f"s{i}" for i in range(n)], [f"G{i}" for i in range(5)])
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    run_to_end(train(data, train_config(epochs=2, **SMALL), checkpoint_path=path))
    return path


def _xor_bytes(data: bytes, offsets: np.ndarray) -> bytes:
    damaged = bytearray(data)
    for i in offsets:
        damaged[int(i)] ^= 0xFF
    return bytes(damaged)


# ---------------------------------------------------------------- 1. damaged checkpoints
@pytest.mark.parametrize("where", ["random-0", "random-1", "random-2", "random-3", "start", "middle", "end"])
def test_damaged_checkpoint_is_refused(good_checkpoint: Path, tmp_path: Path, where: str) -> None:
    data = good_checkpoint.read_bytes()
    n = len(data)
    if where.startswith("random"):
        offsets = np.random.default_rng(int(where[-1])).choice(n, 50, replace=False)
    else:
        first = {"start": 0, "middle": n // 2, "end": n - 50}[where]
        offsets = np.arange(first, first + 50)
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(_xor_bytes(data, offsets))
    with pytest.raises(InputError, match=r"damaged\.pt: .*(damaged|not a readable)") as info:
        load_model(bad)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_one_flipped_weight_byte_fails_its_checksum(good_checkpoint: Path, tmp_path: Path) -> None:
    """The quiet case: a byte inside a weight record (torch alone would load it)."""
    import zipfile

    with zipfile.ZipFile(good_checkpoint) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)  # a weight tensor
    data = good_checkpoint.read_bytes()
    # The record's data follows its 30-byte local header, name and extra field.
    name_len = int.from_bytes(data[record.header_offset + 26: record.header_offset + 28], "little")
    extra_len = int.from_bytes(data[record.header_offset + 28: record.header_offset + 30], "little")
    start = record.header_offset + 30 + name_len + extra_len
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(_xor_bytes(data, np.array([start + record.file_size // 2])))
    torch.load(bad, weights_only=True)  # torch reads it without complaint...
    with pytest.raises(InputError, match=r"flipped\.pt: the checkpoint is damaged: record .* checksum"):
        load_model(bad)  # ...the checksums do not


def test_predict_on_damaged_checkpoint_exits_2(good_checkpoint: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "damaged.pt"
    data = good_checkpoint.read_bytes()
    bad.write_bytes(_xor_bytes(data, np.random.default_rng(7).choice(len(data), 50, replace=False)))
    out = tmp_path / "pred.h5ad"
    section = make_st_v1(tmp_path / "sec")["folder"]
    assert main(["predict", str(bad), str(section), "--out", str(out), "--quiet"]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged.pt" in err and not out.exists()


# ---------------------------------------------------------------- 3. a diverged model
def test_predict_refuses_a_model_with_nan_weights(good_checkpoint: Path, tmp_path: Path, capsys) -> None:
    payload = torch.load(good_checkpoint, weights_only=False)
    name = next(k for k, v in payload["state_dict"].items() if torch.is_floating_point(v))
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    nan_model = tmp_path / "nan.pt"
    torch.save(payload, nan_model)
    out = tmp_path / "pred.h5ad"
    section = make_st_v1(tmp_path / "sec")["folder"]
    assert main(["predict", str(nan_model), str(section), "--out", str(out), "--quiet"]) == EXIT_INPUT_ERROR
    assert "NaN or infinite" in capsys.readouterr().err and not out.exists()


def test_nan_predictions_are_never_written(tmp_path: Path) -> None:
    out = tmp_path / "pred.h5ad"
    out.write_bytes(b"an earlier output")
    predictions = ad.AnnData(X=np.full((4, 3), np.nan, np.float32))
    predictions.uns["histosge"] = {"model_path": str(tmp_path / "m.pt")}
    with pytest.raises(InputError, match=r"m\.pt: the model predicts NaN or infinite values at 4 of 4"):
        cli_write_h5ad(predictions, out)
    assert out.read_bytes() == b"an earlier output"


# ---------------------------------------------------------------- 2. patches over the decode limit
def _small_tiff(path: Path, size: int = 600) -> Path:
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (size, size, 3), dtype=np.uint8), photometric="rgb")
    return path


def test_patch_over_the_decode_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HISTOSGE_MAX_DECODE_PIXELS", str(150 * 150))
    with open_slide(_small_tiff(tmp_path / "s.tif")) as slide:
        assert slide.read_patches(np.array([[300.0, 300.0]]), 100, 32).shape == (1, 32, 32, 3)
        with pytest.raises(InputError, match=r"s\.tif: a patch of 200 full-resolution px, 203 x 203 px on "
                                             r"pyramid level 0 .* decode limit of 22,500 px"):
            slide.read_patches(np.array([[300.0, 300.0]]), 200, 32)


@pytest.mark.slow
def test_train_with_a_huge_patch_is_refused_before_allocating(tmp_path: Path) -> None:
    """``--patch-um 1e6`` (a patch of a kilometre) under a 6 GiB address-space limit: refused, not killed."""
    folder = make_st_v1(tmp_path)["folder"]
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30)); "
              "from napari_histosge.cli.main import main; sys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", script, "train", str(folder), "--out", str(tmp_path / "m.pt"),
                          "--patch-um", "1e6", "--epochs", "1", "--quiet"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == EXIT_INPUT_ERROR, run.stderr[-2000:]
    # 1e6 um at the folder's 200 um per 150 px: about 750,000 px across.
    assert re.search(r"he\.png: a patch of 7\d\d,\d{3} full-resolution px.* decode limit", run.stderr)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.lock").exists()


# ---------------------------------------------------------------- 4. write failures
def _full_disk_after(n_bytes: int):
    """A writer that writes ``n_bytes`` to its temporary path, then fails as a full disk does."""
    def write(tmp: Path) -> None:
        target = tmp / "part" if tmp.is_dir() else tmp
        target.write_bytes(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


@pytest.mark.parametrize("folder", [False, True], ids=["file", "zarr folder"])
def test_full_disk_keeps_the_earlier_output_and_no_temporary(tmp_path: Path, folder: bool) -> None:
    out = tmp_path / ("pred.zarr" if folder else "pred.h5ad")
    if folder:
        out.mkdir()
        (out / "zarr.json").write_text("earlier")
    else:
        out.write_text("earlier")
    with pytest.raises(InputError, match=r"pred\.(zarr|h5ad): cannot write the predictions: the disk is full"):
        outputs.write_with(out, _full_disk_after(1000), what="predictions", folder=folder)
    assert (out / "zarr.json" if folder else out).read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_atomic_writers_replace_whole_files(tmp_path: Path) -> None:
    frame = pd.DataFrame({"pcc": [0.5, 0.25]}, index=["G1", "G2"])
    outputs.write_csv(tmp_path / "m.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m.csv", index_col=0), frame)
    outputs.write_json(tmp_path / "s.json", {"pcc": np.float32(0.5)})
    assert (tmp_path / "s.json").read_text().strip() == '{\n  "pcc": 0.5\n}'
    outputs.write_with(tmp_path / "a.zarr", lambda tmp: (tmp / "new").write_text("1"), folder=True)
    outputs.write_with(tmp_path / "a.zarr", lambda tmp: (tmp / "newer").write_text("2"), folder=True)
    assert [p.name for p in (tmp_path / "a.zarr").iterdir()] == ["newer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "m.csv", "s.json"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "pred.h5ad").write_text("earlier")
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match=r"pred\.h5ad: cannot write the output: permission denied"):
            outputs.write_h5ad(folder / "pred.h5ad", ad.AnnData(X=np.zeros((2, 2), np.float32)))
        assert (folder / "pred.h5ad").read_text() == "earlier"
    finally:
        folder.chmod(0o755)


def test_read_only_file_system_is_one_error(tmp_path: Path, monkeypatch) -> None:
    """What root meets on a read-only mount (chmod does not stop root): the temporary file cannot be made."""
    import tempfile

    out = tmp_path / "pred.h5ad"
    out.write_text("earlier")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(InputError, match=r"pred\.h5ad: cannot write the output \(--out\): the file system is "
                                         r"read-only: write elsewhere; nothing was written there"):
        cli_write_h5ad(ad.AnnData(X=np.zeros((2, 2), np.float32)), out)
    assert out.read_text() == "earlier"


@pytest.mark.slow
def test_recover_on_a_full_disk_exits_2_and_keeps_the_earlier_file(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    out = tmp_path / "hidden.h5ad"
    out.write_text("earlier")

    def full_disk(store, key, elem, *args, **kwargs):
        store.create_dataset("partial", data=np.zeros(10_000))
        store.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ad.io, "write_elem", full_disk)
    argv = ["recover", str(folder), "--out", str(out), "--epochs", "2", "--quiet", "--device", "cpu"]
    assert main(argv) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full" in err and "Traceback" not in err
    assert out.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S1", "hidden.h5ad"]


# ---------------------------------------------------------------- 5. one writer per output
def test_second_training_on_the_same_out_is_refused(tmp_path: Path, capsys) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    out = tmp_path / "m.pt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from napari_histosge.outputs import "
                               "acquire_lock; acquire_lock(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["train", str(folder), "--out", str(out), "--epochs", "1", "--quiet"]) == EXIT_INPUT_ERROR
        err = capsys.readouterr().err
        assert f"being written by process {holder.pid} (lock file {out}.lock)" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    outputs.lock_path(out).write_text(f"{dead.pid} {socket.gethostname()}\n")
    with outputs.output_lock(out) as lock:
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(InputError, match=f"being written by process {os.getpid()}"):
            outputs.acquire_lock(out)
    assert not lock.exists()


def test_lock_holder_removes_temporaries_of_a_killed_writer(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    orphans = [tmp_path / ".m.pt.k1ll3d.tmp.pt", tmp_path / ".m.pt.0ld.tmp"]  # this version's and the last one's
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pt.x.tmp.pt").write_bytes(b"another output's")
    with outputs.output_lock(out):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.x.tmp.pt", "m.pt.lock"]


def test_training_releases_its_lock(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    out = tmp_path / "m.pt"
    assert main(["train", str(folder), "--out", str(out), "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    assert out.is_file() and not outputs.lock_path(out).exists()


# ---------------------------------------------------------------- 6. the feature cache follows the content
def test_image_edited_with_size_and_mtime_kept_gets_new_features(tmp_path: Path) -> None:
    image = _small_tiff(tmp_path / "he.tif", 400)
    centers = np.array([[100.0, 100.0], [300.0, 300.0], [200.0, 120.0]])
    config = FeatureConfig(device="cpu")
    first = run_to_end(extract_features_at(image, 1.0, centers, 64.0, config)).features
    again = run_to_end(extract_features_at(image, 1.0, centers, 64.0, config)).features
    np.testing.assert_array_equal(first, again)
    stat = image.stat()
    pixels = tifffile.imread(image)
    tifffile.imwrite(image, 255 - pixels, photometric="rgb")  # uncompressed: the same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    edited = run_to_end(extract_features_at(image, 1.0, centers, 64.0, config)).features
    fresh = run_to_end(extract_features_at(image, 1.0, centers, 64.0, FeatureConfig(device="cpu", cache=False)))
    assert not np.allclose(edited, first)
    np.testing.assert_allclose(edited, fresh.features, rtol=1e-6)


def test_large_file_fingerprint_reads_samples_and_sees_them(tmp_path: Path, monkeypatch) -> None:
    from napari_histosge.slide import pyramid

    monkeypatch.setattr(pyramid, "FULL_HASH_MAX_BYTES", 2**20)
    monkeypatch.setattr(pyramid, "EDGE_BYTES", 4096)
    big = tmp_path / "big.tif"
    big.write_bytes(np.random.default_rng(0).bytes(8 * 2**20))
    start = time.perf_counter()
    digest = pyramid.file_fingerprint(big)
    assert digest.startswith("sampled") and time.perf_counter() - start < 5
    data = bytearray(big.read_bytes())
    data[4096] ^= 0xFF  # the first sampled block
    stat = big.stat()
    big.write_bytes(bytes(data))
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert pyramid.file_fingerprint(big) != digest


class _Foreign:
    """An object weights-only loading refuses to build."""


def test_foreign_pickle_is_one_line_without_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"format": "napari-histosge-checkpoint", "payload": _Foreign()}, path)
    with pytest.raises(InputError, match=r"foreign\.pt: not a readable napari-histosge checkpoint \(it holds "
                                         r"objects other than tensors") as info:
        load_model(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_unwritable_feature_cache_costs_only_the_reuse(tmp_path: Path, monkeypatch) -> None:
    image = _small_tiff(tmp_path / "he.tif", 300)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.warns(UserWarning, match=r"features: the feature cache cannot be written \(the disk is full"):
        result = run_to_end(extract_features_at(image, 1.0, np.array([[150.0, 150.0]]), 64.0,
                                                FeatureConfig(device="cpu")))
    assert result.features.shape[0] == 1
    assert not [p for p in (Path(os.environ["HISTOSGE_CACHE"]) / "features").glob(".tmp-*")]
