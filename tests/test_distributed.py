"""dask.distributed feature extraction: same results as one process, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("distributed")

from napari_histosge.errors import CancelledError, InputError  # noqa: E402
from napari_histosge.features import FeatureConfig, extract_features_at  # noqa: E402
from napari_histosge.prediction.distributed import (  # noqa: E402
    dask_client,
    extract_features_distributed,
    map_chunks,
    position_chunks,
)
from napari_histosge.progress import CancelToken, Progress, run_collecting, run_to_end  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # One small thread-based LocalCluster shared by the tests (process startup is slow on 2 cores).
    with dask_client(None, n_workers=2, threads_per_worker=1, processes=False) as c:
        yield c


def _slide(tmp_path: Path) -> Path:
    img = np.random.default_rng(0).integers(0, 256, (700, 600, 3), dtype=np.uint8)
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", compression="jpeg")
    return path


def _square(chunk: np.ndarray, offset: float) -> np.ndarray:
    return chunk**2 + offset


@pytest.mark.slow
def test_features_identical_to_single_process(tmp_path: Path, client) -> None:
    path = _slide(tmp_path)
    xy = np.random.default_rng(1).uniform(-20, 620, (100, 2))
    cfg = FeatureConfig(device="cpu", cache=False, batch_size=16)
    single = run_to_end(extract_features_at(path, 1.0, xy, 60.0, cfg))
    dist, events = run_collecting(
        extract_features_distributed(path, 1.0, xy, 60.0, cfg, scheduler=client, chunk_size=20))
    np.testing.assert_array_equal(dist.features, single.features)
    np.testing.assert_array_equal(dist.mean_rgb, single.mean_rgb)
    assert dist.identity == single.identity
    # Chunks of 20 are rounded up to whole batches of 16 (32): 4 tasks, progress in patches.
    assert [e.step for e in events if isinstance(e, Progress)][-1] == 100
    assert len(events) == 1 + 4 and all(e.stage == "features" for e in events)


def test_cache_shared_with_single_process(tmp_path: Path, client) -> None:
    path = _slide(tmp_path)
    xy = np.random.default_rng(2).uniform(0, 600, (20, 2))
    cfg = FeatureConfig(device="cpu", batch_size=8)
    first = run_to_end(extract_features_distributed(path, 1.0, xy, 50.0, cfg, scheduler=client))
    gen = extract_features_at(path, 1.0, xy, 50.0, cfg)
    assert next(gen).message == "loaded from cache"
    np.testing.assert_array_equal(run_to_end(gen).features, first.features)


def test_map_chunks_order_and_cancel(client) -> None:
    chunks = position_chunks(np.arange(10), 3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [len(c) for c in position_chunks(np.arange(10), 3, multiple=4)] == [4, 4, 2]
    out = run_to_end(map_chunks(_square, chunks, 1.0, scheduler=client, weights=[len(c) for c in chunks]))
    np.testing.assert_array_equal(np.concatenate(out), np.arange(10) ** 2 + 1.0)
    token = CancelToken()
    gen = map_chunks(_square, chunks, 0.0, scheduler=client, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(CancelledError):
        run_to_end(gen)


def test_bad_inputs(tmp_path: Path, client, monkeypatch: pytest.MonkeyPatch) -> None:
    import napari_histosge.prediction.distributed as dist_mod

    monkeypatch.setattr(dist_mod, "CONNECT_TIMEOUT_S", 1.0)
    path = _slide(tmp_path)
    cfg = FeatureConfig(device="cpu", cache=False)
    with pytest.raises(InputError, match=r"cannot connect to the dask scheduler at 'tcp://127\.0\.0\.1:9' within 1 s"):
        run_to_end(extract_features_distributed(path, 1.0, np.zeros((2, 2)), 50.0, cfg,
                                                scheduler="tcp://127.0.0.1:9"))
    with pytest.raises(InputError, match=r"gone\.tif.*not found"):
        run_to_end(extract_features_distributed(tmp_path / "gone.tif", 1.0, np.zeros((2, 2)), 50.0, cfg,
                                                scheduler=client))
    with pytest.raises(InputError, match="NaN"):
        run_to_end(extract_features_distributed(path, 1.0, np.full((2, 2), np.nan), 50.0, cfg, scheduler=client))
    # An error inside a worker (a corrupt tile) reaches the caller as the same InputError.
    with tifffile.TiffFile(path) as tf:
        off, cnt = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[off : off + cnt] = b"\x00" * cnt
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"small\.tif.*tile \(level 0, tile row 0, column 0"):
        run_to_end(extract_features_distributed(path, 1.0, np.array([[30.0, 30.0]]), 20.0, cfg, scheduler=client))


def _trained_model():
    from napari_histosge.models import train, train_config
    from napari_histosge.training.inputs import TrainingData

    rng = np.random.default_rng(1)
    n, d, g = 300, 6, 5
    pos = rng.uniform(0, 3000, (n, 2))
    feats = rng.normal(size=(n, d)).astype(np.float32)
    rgb = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    y = np.abs(feats[:, :g] + np.sin(pos[:, :1] / 500)).astype(np.float32)
    data = TrainingData(feats, rgb, pos, y, [f"s{i}" for i in range(n)], [f"G{i}" for i in range(g)])
    config = train_config(epochs=2, dim=16, heads=2, head_hidden=32, n_pos_bins=8, group_size=20,
                         batch_size=64, device="cpu", genes=data.genes)
    return run_to_end(train(data, config))


def test_prediction_identical_to_single_process(client) -> None:
    from napari_histosge.prediction.distributed import predict_distributed
    from napari_histosge.prediction.pieces import plan_chunks

    model = _trained_model()
    rng = np.random.default_rng(2)
    pos = rng.uniform(-100, 3100, (1000, 2))
    feats = rng.normal(size=(1000, 6)).astype(np.float32)
    rgb = rng.uniform(0, 255, (1000, 3)).astype(np.float32)
    expected = model.predict(feats, rgb, pos)
    (pred, std), events = run_collecting(
        predict_distributed(model, feats, rgb, pos, scheduler=client, chunk_size=150))
    assert std is None
    np.testing.assert_array_equal(pred, expected)  # the very same forward passes, so bit-identical
    assert len(plan_chunks(model.plan_batches(pos), 150)) > 3  # really split over several tasks
    assert events[-1].stage == "predict" and events[-1].step == events[-1].total == 1000


def test_prediction_plan_chunks_cover_every_pass_once() -> None:
    from napari_histosge.prediction.pieces import plan_chunks

    mask = np.zeros((1, 10), bool)
    plan = [(np.arange(10)[None], mask)] * 7
    runs = plan_chunks(plan, 25)
    assert runs == [(0, 3), (3, 6), (6, 7)]


def test_prediction_bad_chunk_size(client) -> None:
    from napari_histosge.prediction.distributed import predict_distributed

    model = _trained_model()
    with pytest.raises(InputError, match="chunk_size"):
        run_to_end(predict_distributed(model, np.zeros((3, 6)), np.zeros((3, 3)), np.zeros((3, 2)),
                                       scheduler=client, chunk_size=0))
    with pytest.raises(InputError, match="features has shape"):
        run_to_end(predict_distributed(model, np.zeros((3, 4)), np.zeros((3, 3)), np.zeros((3, 2)),
                                       scheduler=client))


@pytest.mark.slow
def test_pipeline_superresolve_on_dask_matches_in_process(demo_dir: Path, client) -> None:
    """CLI/plugin path: features AND prediction on the cluster give the in-process AnnData."""
    from napari_histosge.io import read_spots
    from napari_histosge.models import train_config
    from napari_histosge.pipeline.steps import fit, superresolve

    adata = read_spots(demo_dir)
    model = run_to_end(fit(adata, train_config=train_config(
        epochs=1, dim=16, heads=2, head_hidden=32, n_top_genes=20, device="cpu")))
    local = run_to_end(superresolve(model, adata, 4))
    remote = run_to_end(superresolve(model, adata, 4, scheduler=client))
    np.testing.assert_array_equal(remote.X, local.X)
    np.testing.assert_array_equal(remote.obsm["spatial"], local.obsm["spatial"])


def test_nuclei_features_get_the_pixel_size_on_workers(tmp_path: Path, client) -> None:
    # The extractor that measures in µm gets the patch's size in µm on the workers as in this process.
    path = _slide(tmp_path)
    xy = np.random.default_rng(3).uniform(100, 500, (6, 2))
    cfg = FeatureConfig(device="cpu", cache=False, batch_size=4, extractor="nuclei")
    single = run_to_end(extract_features_at(path, 1.0, xy, 150.0, cfg, mpp=0.5))
    dist = run_to_end(extract_features_distributed(path, 1.0, xy, 150.0, cfg, scheduler=client, chunk_size=4,
                                                   mpp=0.5))
    np.testing.assert_array_equal(dist.features, single.features)
    with pytest.raises(InputError, match="pixel size"):
        run_to_end(extract_features_distributed(path, 1.0, xy, 150.0, cfg, scheduler=client))
