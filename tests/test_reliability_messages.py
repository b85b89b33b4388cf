"""Errors blame the right thing, in one line, before any work (issue 23, items 8-11).

A cache that cannot be written or is damaged is the cache's problem, not the slide's;
displaced spots are the selection file's; torch's unpickling advice and huggingface_hub's
retries never reach a user; library warnings stay off the command line; option checks
come before any data are read; a killed writer's temporary file is cleaned; a model used
on another platform says so.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from napari_histosge.cli.main import EXIT_INPUT_ERROR, cli_warnings, main
from napari_histosge.errors import InputError
from napari_histosge.io import read_spots
from napari_histosge.slide import flat_pyramid
from napari_histosge.slide.open import open_slide
from napari_histosge.training.model_meta import ModelMeta
from test_io import make_st_v1


def _png(path: Path, height: int = 1300, width: int = 1500) -> tuple[Path, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path, pixels


def _pyramid_folder(cache: Path) -> Path:
    (target,) = [p for p in (cache / "pyramids").iterdir() if not p.name.startswith(".")]
    return target


def _chunks(target: Path) -> list[Path]:
    return sorted(f for f in target.rglob("*") if f.is_file() and f.name != "zarr.json")


# ---------------------------------------------------------------- 8. the cache is blamed, not the slide
def test_unwritable_pyramid_cache_reads_the_slide_from_memory(tmp_path: Path) -> None:
    png, pixels = _png(tmp_path / "he.png")
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.warns(UserWarning, match=r"cache/pyramids: the image cache cannot be written \(a part of the path "
                                         r"is a file, not a folder\); the pyramid of he\.png is built in memory"):
        slide = open_slide(png, cache_dir=not_a_folder)
    np.testing.assert_array_equal(slide.read_region(1400, 1200, 100, 100), pixels[1200:1300, 1400:1500])
    assert len(slide.levels) == 2


def test_full_pyramid_cache_leaves_no_temporary_and_reads_the_slide(tmp_path: Path, monkeypatch) -> None:
    png, pixels = _png(tmp_path / "he.png")
    real = flat_pyramid._write_levels

    def full_disk(group, src, *args) -> None:
        real(group, src, *args)
        if "Memory" not in type(group.store).__name__:  # the disk fills; memory does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(flat_pyramid, "_write_levels", full_disk)
    with pytest.warns(UserWarning, match=r"the image cache cannot be written \(the disk is full"):
        slide = open_slide(png, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(slide.read_region(0, 0, 64, 64), pixels[:64, :64])
    assert list((tmp_path / "cache" / "pyramids").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated chunk", "missing chunk", "garbled metadata"])
def test_damaged_pyramid_cache_is_rebuilt_with_a_warning(tmp_path: Path, damage: str) -> None:
    png, pixels = _png(tmp_path / "he.png")
    cache = tmp_path / "cache"
    open_slide(png, cache_dir=cache).close()
    target = _pyramid_folder(cache)
    chunk = _chunks(target)[0]
    if damage == "truncated chunk":
        chunk.write_bytes(chunk.read_bytes()[:-10])
    elif damage == "missing chunk":
        chunk.unlink()
    else:
        (target / "zarr.json").write_text("{not json")
    with pytest.warns(UserWarning, match=rf"{target.name}: the cached pyramid of he\.png is damaged .*; it is "
                                         "rebuilt from the image"):
        slide = open_slide(png, cache_dir=cache)
    np.testing.assert_array_equal(slide.read_region(0, 0, 600, 600), pixels[:600, :600])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt whole: the next open is silent
        open_slide(png, cache_dir=cache).close()


def test_a_flipped_byte_in_the_pyramid_cache_names_the_cache(tmp_path: Path) -> None:
    """Same size, other content: found by the chunk's checksum when read, and the cache folder is named."""
    png, _ = _png(tmp_path / "he.png")
    cache = tmp_path / "cache"
    open_slide(png, cache_dir=cache).close()
    target = _pyramid_folder(cache)
    chunk = _chunks(target)[0]  # level 0, tile (0, 0)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    slide = open_slide(png, cache_dir=cache)
    with pytest.raises(InputError, match=r"the cached pyramid of he\.png is damaged \(level 0, tile row 0, column 0"
                                         r".*\); remove this folder \(it is rebuilt") as info:
        slide.read_region(0, 0, 32, 32)
    assert info.value.path == str(target) and "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_with_an_unwritable_cache_trains_and_warns_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("HISTOSGE_CACHE", str(not_a_folder))
    out = tmp_path / "m.pt"
    assert main(["train", str(folder), "--out", str(out), "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert out.is_file() and err and all(line.startswith("histosge: warning: ") for line in err), err
    assert any("the image cache cannot be written" in line for line in err)
    assert any("the feature cache cannot be written" in line for line in err)
    assert not any("corrupt" in line for line in err)


def _displace(folder: Path, rows: list[int], by: float = 50_000.0) -> list[str]:
    path = folder / "S1_selection.tsv"
    table = pd.read_csv(path, sep="\t")
    table.loc[rows, ["pixel_x", "pixel_y"]] += by
    table.to_csv(path, sep="\t", index=False)
    return [f"{x}x{y}" for x, y in table.loc[rows, ["x", "y"]].to_numpy()]


@pytest.mark.parametrize("by", [50_000.0, 1_000.0], ids=["far", "just outside"])
def test_three_displaced_spots_blame_the_selection_file(tmp_path: Path, by: float) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    moved = _displace(folder, [5, 6, 7], by)
    with pytest.raises(InputError, match=r"S1_selection\.tsv: 3 of \d+ spots fall outside the image he\.png "
                                         r"\(1500 x 1300 px\), e\.g\. ") as info:
        read_spots(folder)
    assert all(spot in str(info.value) for spot in moved) and "set selected to 0" in str(info.value)


def test_spots_that_miss_the_image_entirely_still_ask_about_the_image(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    table = pd.read_csv(folder / "S1_selection.tsv", sep="\t")
    _displace(folder, list(range(len(table))))
    with pytest.raises(InputError, match=r"he\.png: spot positions do not match this image"):
        read_spots(folder)


# ---------------------------------------------------------------- 9. one line, nothing unsafe, no retries
class _Foreign:
    """An object weights-only loading refuses to build."""


def test_foreign_pickle_as_extractor_weights_is_one_line(tmp_path: Path) -> None:
    from napari_histosge.features.timm_backbones import TimmExtractor

    path = tmp_path / "weights.pth"
    torch.save({"state_dict": _Foreign()}, path)
    extractor = TimmExtractor("test_vit", checkpoint=str(path))
    expected = r"weights\.pth: cannot read checkpoint \(it holds objects other than tensors and plain values, such as "
    with pytest.raises(InputError, match=expected + r"test_reliability_messages\._Foreign") as info:
        extractor.model  # noqa: B018 - the network is built (and the weights read) on first use
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no network"])
def test_uni_offline_fails_at_once_naming_weights(how: str, empty_hub_cache: Path, monkeypatch) -> None:
    import socket

    from huggingface_hub import constants

    from napari_histosge.features.timm_backbones import UniExtractor

    if how == "HF_HUB_OFFLINE":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        def unreachable(*args, **kwargs):
            raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

        monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"the UNI weights are not on this machine and the Hugging Face hub cannot "
                                         r"be reached .*--weights FILE") as info:
        UniExtractor().model  # noqa: B018
    assert time.perf_counter() - start < 2.0 and "\n" not in str(info.value)


def test_uni_weights_in_the_hub_cache_are_read_without_network(empty_hub_cache: Path, monkeypatch) -> None:
    from napari_histosge.features import timm_backbones

    snapshot = empty_hub_cache / "models--MahmoodLab--uni" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "pytorch_model.bin").write_bytes(b"weights")
    (empty_hub_cache / "models--MahmoodLab--uni" / "refs").mkdir()
    (empty_hub_cache / "models--MahmoodLab--uni" / "refs" / "main").write_text("abc123")

    def no_probe(*args, **kwargs):
        raise AssertionError("the network was probed although the weights are cached")

    monkeypatch.setattr(timm_backbones, "hub_reachable", no_probe)
    assert timm_backbones.uni_weights_source() == str(snapshot / "pytorch_model.bin")


def test_cli_uni_offline_is_refused_before_reading_data(tmp_path: Path, empty_hub_cache: Path, monkeypatch,
                                                         capsys) -> None:
    from huggingface_hub import constants

    import napari_histosge.io

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(napari_histosge.io, "read_spots", _must_not_run)
    section = _section_by_its_names(tmp_path / "sec")
    argv = ["train", str(section), "--out", str(tmp_path / "m.pt"), "--extractor", "uni", "--quiet"]
    assert main(argv) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weights FILE" in err and "Retrying" not in err


def test_cli_hides_harmless_library_warnings_and_keeps_ours(monkeypatch, capsys) -> None:
    from napari_histosge.cli import demo

    def noisy(args) -> int:
        warnings.warn("The specified parameters ('n_top_genes',) are no longer positional", FutureWarning,
                      stacklevel=1)
        warnings.warn("Transforming to str index.", UserWarning, stacklevel=1)  # anndata's ImplicitModification
        logging.getLogger("tifffile").warning("<tifffile.TiffFile 'x.svs'> OME series is BigTIFF")
        warnings.warn("he.png: the image has only 4 px across a spot,\n  so image features carry little",
                      UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(demo, "cmd_demo", noisy)
    monkeypatch.setattr(sys, "warnoptions", [])
    assert main(["demo"]) == 0
    assert capsys.readouterr().err == ("histosge: warning: he.png: the image has only 4 px across a spot, so image "
                                       "features carry little\n")


def test_cli_warnings_leave_the_caller_filters_as_they_were() -> None:
    before = list(warnings.filters)
    with cli_warnings():
        pass
    assert warnings.filters == before


# ---------------------------------------------------------------- 10. checks before any work, in < 2 s
def _must_not_run(*_args, **_kwargs):
    raise AssertionError("work started before the options were checked")


def _section_by_its_names(folder: Path) -> Path:
    """An ST v1 section as the checks see it (its file names, its counts' header); nothing else is read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "S_selection.tsv").write_text("x\ty\tpixel_x\tpixel_y\tselected\n")
    (folder / "S.tsv").write_text("\tERBB2\tGRB7\n")
    return folder


def _bad_invocations(tmp: Path) -> dict[str, list[str]]:
    data, model = tmp / "data", tmp / "m.pt"
    _section_by_its_names(data)
    model.write_bytes(b"")
    (tmp / "p.h5ad").write_bytes(b"")
    gone = tmp / "gone"
    cases = {}
    for command, out, suffix in (("train", "m2", ".pt"), ("recover", "o", ".h5ad"), ("predict", "o", ".h5ad"),
                                 ("superresolve", "o", ".h5ad")):
        head = [command, str(model), str(data)] if command in ("predict", "superresolve") else [command, str(data)]
        cases[f"{command} --out in a missing folder"] = [*head, "--out", str(gone / f"{out}{suffix}")]
        cases[f"{command} --out with the wrong suffix"] = [*head, "--out", str(tmp / f"{out}.txt")]
    cases["superresolve --fold 1"] = ["superresolve", str(model), str(data), "--out", str(tmp / "o.h5ad"),
                                      "--fold", "1"]
    cases["recover --holdout 1.5"] = ["recover", str(data), "--out", str(tmp / "o.h5ad"), "--holdout", "1.5"]
    cases["train --patch-um -5"] = ["train", str(data), "--out", str(tmp / "m2.pt"), "--patch-um", "-5"]
    cases["evaluate --metrics in a missing folder"] = ["evaluate", str(tmp / "p.h5ad"), str(data), "--metrics",
                                                       str(gone / "m.csv")]
    cases["evaluate --metrics with the wrong suffix"] = ["evaluate", str(tmp / "p.h5ad"), str(data), "--metrics",
                                                         str(tmp / "m.txt")]
    cases["demo --out in a missing folder"] = ["demo", "--out", str(gone / "demo")]
    cases["demo --out a file"] = ["demo", "--out", str(model)]
    return cases


def test_every_command_refuses_bad_outputs_and_ranges_before_reading_anything(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    import anndata

    import napari_histosge.demo
    import napari_histosge.io
    import napari_histosge.models

    for module, name in ((napari_histosge.io, "read_spots"), (napari_histosge.models, "load_model"),
                         (napari_histosge.demo, "run_demo"), (anndata, "read_h5ad")):
        monkeypatch.setattr(module, name, _must_not_run)
    slow = {}
    for label, argv in _bad_invocations(tmp_path).items():
        start = time.perf_counter()
        status = main(argv)
        seconds = time.perf_counter() - start
        err = capsys.readouterr().err
        assert status == EXIT_INPUT_ERROR and err.startswith("histosge: error: ") and err.count("\n") == 1, label
        if label.endswith("-5"):
            assert "--patch-um must be a positive number, got -5.0" in err
        if seconds >= 2.0:
            slow[label] = round(seconds, 2)
    assert not slow, slow


#: Modules a refusal must not need: loading them is the work (seconds) the checks come before.
#: (``napari_histosge.io`` itself and its detection and counts-header modules are light: the checks use them;
#: so is ``napari_histosge.pipeline.map_modes``, the consistency choices the parser offers.)
HEAVY = ("torch", "anndata", "dask", "timm", "pandas", "napari_histosge.io._common", "napari_histosge.io.preprocess",
         "napari_histosge.features.extract", "napari_histosge.features.registry", "napari_histosge.pipeline.steps",
         "napari_histosge.pipeline.grid_maps", "napari_histosge.pipeline.section_features",
         "napari_histosge.pipeline.placement", "napari_histosge.models.histosge")


def test_refusals_import_nothing_heavy_in_a_fresh_process(tmp_path: Path) -> None:
    """What the in-process timing cannot see: an import of the torch-heavy core before a check."""
    import json

    script = ("import json, sys\nfrom napari_histosge.cli.main import main\n"
              "statuses = [main(argv) for argv in json.loads(sys.argv[1])]\n"
              f"print(json.dumps([statuses, [m for m in {HEAVY!r} if m in sys.modules]]))")
    cases = _bad_invocations(tmp_path)
    run = subprocess.run([sys.executable, "-c", script, json.dumps(list(cases.values()))], capture_output=True,
                         text=True, timeout=300)
    statuses, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert statuses == [EXIT_INPUT_ERROR] * len(cases), run.stderr
    assert loaded == [], f"imported before a refusal: {loaded}"


# ---------------------------------------------------------------- 11. killed writers, other platforms
def test_temporary_checkpoint_of_a_killed_writer_is_removed_by_the_next_training(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    out = tmp_path / "m.pt"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from napari_histosge.outputs import atomic_path\n"
         "with atomic_path(sys.argv[1], what='checkpoint') as tmp:\n"
         "    tmp.write_bytes(b'half a checkpoint' * 1000); print(tmp, flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        orphan = Path(writer.stdout.readline().strip())
    finally:
        writer.kill()  # SIGKILL: no finally block of the writer runs
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert orphan.is_file() and orphan.parent == tmp_path and not out.exists()
    assert main(["train", str(folder), "--out", str(out), "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S1", "m.pt"]


class _Section:
    def __init__(self, platform: str, spot_px: float, mpp: float) -> None:
        self.uns = {"histosge": {"platform": platform, "spot_diameter_px": spot_px, "mpp": mpp, "source": "sec"}}


ST_V1 = {"platform": "st_v1", "spot_diameter_px": 137.0, "mpp": 0.73}  # 100 µm spots


def test_a_model_used_on_another_platform_warns() -> None:
    from napari_histosge.pipeline.section_features import warn_if_other_platform

    with pytest.warns(UserWarning, match=r"sec: the model was trained on ST v1 spots of 100 µm but this section "
                                         r"is Visium with spots of 55 µm"):
        warn_if_other_platform(ModelMeta.from_dict(ST_V1), _Section("visium", 212.0, 55 / 212))
    several = ModelMeta.from_dict({**ST_V1, "sections": [ST_V1, {**ST_V1, "spot_diameter_px": 140.0}]})
    with pytest.warns(UserWarning, match="trained on ST v1 spots of 100 or 102 µm but this section is Visium"):
        warn_if_other_platform(several, _Section("visium", 212.0, 55 / 212))
    with pytest.warns(UserWarning, match="trained on Visium spots of 55 µm but this section is ST v1"):
        warn_if_other_platform(ModelMeta(platform="visium", spot_diameter_px=212.0, mpp=55 / 212),
                               _Section("st_v1", 137.0, 0.73))


def test_same_platform_or_unknown_is_silent() -> None:
    from napari_histosge.pipeline.section_features import warn_if_other_platform

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained = ModelMeta.from_dict(ST_V1)
        warn_if_other_platform(trained, _Section("st_v1", 150.0, 0.70))  # another section of the same platform
        warn_if_other_platform(trained, _Section("unknown", 150.0, None))  # a bare .h5ad: nothing to compare
        warn_if_other_platform(ModelMeta(platform="unknown"), _Section("visium", 212.0, 55 / 212))


@pytest.mark.slow
def test_platform_and_spot_size_are_in_a_trained_models_meta(tmp_path: Path) -> None:
    folder = make_st_v1(tmp_path)["folder"]
    out = tmp_path / "m.pt"
    assert main(["train", str(folder), "--out", str(out), "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    from napari_histosge.models import load_model

    meta = load_model(out).meta
    assert meta.platform == "st_v1"
    assert meta.spot_diameter_px * meta.mpp == pytest.approx(100.0)  # the ST v1 spot
