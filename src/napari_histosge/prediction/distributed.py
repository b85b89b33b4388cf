"""Feature extraction and prediction (and any map over position chunks) on dask.distributed.

The same call scales from a laptop to a cluster: with no scheduler address a
:class:`distributed.LocalCluster` is started for the call; with an address
(``tcp://host:8786``) the work goes to that cluster's workers, which must see
the slide at the same path (shared file system) and have napari-histosge
installed. Patches are split into chunks in the same spatial order, and chunk
sizes are whole batches, so every batch is the one the single-process path runs:
the features are identical to :func:`~napari_histosge.features.extract_features_at`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np

from ..errors import InputError
from ..features.extract import (
    FeatureConfig,
    SpotFeatures,
    compute_features,
    make_extractor,
    patch_um_of,
    slide_normaliser,
    spatial_order,
    with_cache,
)
from ..features.stain import StainNormaliser
from ..progress import CancelToken, Progress, ProgressGenerator, run_to_end
from .pieces import DEFAULT_CHUNK, assemble, plan_pieces, run_piece

#: Seconds to wait for a scheduler given by address before giving up.
CONNECT_TIMEOUT_S = 5.0
DEFAULT_CHUNK_SIZE = 2048


@contextmanager
def dask_client(
    scheduler: Any = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    timeout: float | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler
        ``None`` (start a LocalCluster, closed afterwards), a scheduler address
        such as ``"tcp://10.0.0.5:8786"``, or an existing ``Client`` (used, not closed).
    n_workers
        Workers of the LocalCluster; default: one per CPU core.
    threads_per_worker
        Threads per LocalCluster worker.
    processes
        LocalCluster workers as processes (True) or threads of this process.
    timeout
        Seconds to wait for a scheduler given by address (default :data:`CONNECT_TIMEOUT_S`).

    Raises
    ------
    InputError
        If dask.distributed is not installed or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError(
            "dask.distributed is not installed; `pip install 'napari-histosge[distributed]'`"
        ) from exc
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is None:
        n = n_workers or max(1, (os.cpu_count() or 1) // max(threads_per_worker, 1))
        with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    address = str(scheduler).strip()
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        client = Client(address, timeout=f"{timeout}s")
    except Exception as exc:  # OSError/TimeoutError for no scheduler, ValueError for a bad address
        raise InputError(
            f"cannot connect to the dask scheduler at {address!r} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); start one with `dask scheduler` and workers with "
            "`dask worker <address>`, or give no scheduler to use a local cluster"
        ) from exc
    with client:
        yield client


def position_chunks(order: np.ndarray, chunk_size: int, multiple: int = 1) -> list[np.ndarray]:
    """Split visiting ``order`` into consecutive chunks of ``chunk_size`` rounded up to ``multiple``."""
    size = max(1, -(-max(1, int(chunk_size)) // multiple) * multiple)
    return [order[i : i + size] for i in range(0, len(order), size)]


def map_chunks(
    fn: Callable[..., Any],
    chunks: Sequence[Any],
    *args: Any,
    scheduler: Any = None,
    n_workers: int | None = None,
    weights: Sequence[int] | None = None,
    stage: str = "map",
    cancel: CancelToken | None = None,
    processes: bool = True,
) -> ProgressGenerator[list[Any]]:
    """Run ``fn(chunk, *args)`` for every chunk on dask.distributed; results in chunk order.

    Parameters
    ----------
    fn
        A module-level (picklable) function.
    chunks
        One item per task, e.g. arrays of positions.
    *args
        Passed to every call (sent once per task; keep small).
    scheduler, n_workers, processes
        See :func:`dask_client`.
    weights
        Progress units per chunk (default 1 each), e.g. positions per chunk.
    stage
        Progress stage name.
    cancel
        Checked as chunks finish; cancels the remaining tasks.

    Yields
    ------
    Progress
        One per finished chunk.
    """
    from distributed import as_completed

    weights = list(weights) if weights is not None else [1] * len(chunks)
    total = int(sum(weights))
    results: list[Any] = [None] * len(chunks)
    yield Progress(stage, 0, total, "starting dask workers")
    if not chunks:
        return results
    with dask_client(scheduler, n_workers=n_workers, processes=processes) as client:
        futures = [client.submit(fn, c, *args, pure=False) for c in chunks]
        index = {f.key: i for i, f in enumerate(futures)}
        done = 0
        try:
            for future in as_completed(futures):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                i = index[future.key]
                results[i] = future.result()  # re-raises the worker's exception (InputError included)
                done += weights[i]
                yield Progress(stage, done, total, f"{sum(r is not None for r in results)}/{len(chunks)} chunks")
        finally:
            client.cancel([f for f in futures if not f.done()])
    return results


_EXTRACTORS: dict[str, Any] = {}


def _features_chunk(
    centers: np.ndarray, path: str, scale: float, size: float, config: dict, fraction: float,
    stains: dict | None = None,
    patch_um: float | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Worker task: features of one chunk of patches in the given order (no cache).

    ``stains``: the slide's stain normaliser (:meth:`StainNormaliser.to_dict`), estimated once by the client;
    ``patch_um``: the patch edge in µm, where known.
    """
    key = repr((sorted(config.items()), fraction, patch_um))
    if key not in _EXTRACTORS:  # build a (possibly large) network once per worker process
        _EXTRACTORS.clear()
        _EXTRACTORS[key] = make_extractor(FeatureConfig(**config), fraction, patch_um)
    extractor, amp_dtype = _EXTRACTORS[key]
    normalise = None if stains is None else StainNormaliser.from_dict(stains)
    out = run_to_end(compute_features(path, scale, centers, size, extractor, config["batch_size"], fraction,
                                      amp_dtype=amp_dtype, normalise=normalise))
    return out.features, out.mean_rgb, out.identity


def extract_features_distributed(
    image_path: str | os.PathLike,
    scale: float,
    centers_xy: np.ndarray,
    patch_size_px: float,
    config: FeatureConfig,
    *,
    scheduler: Any = None,
    n_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    center_fraction: float | None = None,
    cancel: CancelToken | None = None,
    processes: bool = True,
    mpp: float | None = None,
) -> ProgressGenerator[SpotFeatures]:
    """:func:`~napari_histosge.features.extract_features_at` on dask.distributed.

    Parameters
    ----------
    image_path, scale, centers_xy, patch_size_px, config, center_fraction, mpp
        As for :func:`~napari_histosge.features.extract_features_at`; the on-disk
        feature cache is read and written the same way (on this machine).
    scheduler
        ``None`` for a LocalCluster, a scheduler address, or a ``distributed.Client``.
    n_workers
        LocalCluster workers (default one per core).
    chunk_size
        Patches per task, rounded up to whole batches.
    cancel
        Checked as chunks finish.
    processes
        LocalCluster workers as processes (default) or threads.

    Yields
    ------
    Progress
        ``stage="features"`` as chunks finish.

    Returns
    -------
    SpotFeatures
        Identical to the single-process result.

    Raises
    ------
    InputError
        Bad inputs (as the single-process path), or an unreachable scheduler.
    """
    if image_path is None:
        raise InputError("no histology image given for feature extraction")
    path = str(image_path)
    centers = np.asarray(centers_xy, dtype=np.float64)
    size, scale = float(patch_size_px), float(scale)
    fraction = min(1.0, float(center_fraction if center_fraction is not None else 1.0 / config.patch_spot_fraction))
    patch_um = patch_um_of(size, mpp)

    def compute(extractor, _amp_dtype):
        n = len(centers)
        pieces = position_chunks(spatial_order(centers, size), chunk_size, max(1, int(config.batch_size)))
        normaliser = slide_normaliser(path, config)
        stains = None if normaliser is None else normaliser.to_dict()
        results = yield from map_chunks(
            _features_chunk, [centers[p] for p in pieces], path, scale, size, asdict(config), fraction, stains,
            patch_um,
            scheduler=scheduler, n_workers=n_workers, weights=[len(p) for p in pieces], stage="features",
            cancel=cancel, processes=processes,
        )
        dim = results[0][0].shape[1] if results else extractor.dim
        feats = np.zeros((n, dim), np.float32)
        rgbs = np.zeros((n, 3), np.float32)
        for p, (f, m, _) in zip(pieces, results, strict=True):
            feats[p], rgbs[p] = f, m
        return SpotFeatures(feats, rgbs, results[0][2] if results else extractor.identity)

    return (yield from with_cache(path, scale, centers, size, config, fraction, compute, patch_um))


def predict_distributed(
    model: Any,
    features: np.ndarray,
    mean_rgb: np.ndarray,
    positions: np.ndarray,
    *,
    frame: Any = None,
    scheduler: Any = None,
    n_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    cancel: CancelToken | None = None,
    processes: bool = True,
) -> ProgressGenerator[tuple[np.ndarray, np.ndarray | None]]:
    """A trained model's predictions at ``positions``, computed on dask.distributed.

    The model's forward-pass plan is cut into pieces of whole passes
    (:mod:`napari_histosge.prediction.pieces`), one dask task each, so every worker runs exactly
    the passes the single-process ``model.predict`` runs: the result is identical. The
    model is sent to every worker once, on the CPU.

    Parameters
    ----------
    model
        A :class:`~napari_histosge.training.trained_model.TrainedModel` (or subclass).
    features, mean_rgb, positions, frame
        As for the model's ``predict``.
    scheduler, n_workers, processes
        See :func:`dask_client`.
    chunk_size
        Positions per task (rounded to whole forward passes).
    cancel
        Checked as chunks finish.

    Yields
    ------
    Progress
        ``stage="predict"`` as chunks finish.

    Returns
    -------
    tuple
        ``(pred, std)``: ``(n, G)`` float32 predictions and the per-gene spread over samples
        (``None`` for models that do not sample).
    """
    pieces = plan_pieces(model, features, mean_rgb, positions, frame=frame, chunk_size=chunk_size)
    n, row_sets = len(np.asarray(positions)), [rows for rows, _ in pieces]
    if not pieces:
        return assemble(n, len(model.genes), [], [])
    with dask_client(scheduler, n_workers=n_workers, processes=processes) as client:
        [handle] = client.scatter([_on_cpu(model)], broadcast=True)  # sent once, not once per task
        results = yield from map_chunks(
            run_piece, [piece for _, piece in pieces], handle, scheduler=client,
            weights=[len(r) for r in row_sets], stage="predict", cancel=cancel,
        )
    return assemble(n, len(model.genes), row_sets, results)


def _on_cpu(model: Any) -> Any:
    """The model as workers get it: on the CPU (a worker may have no GPU), without optimiser state."""
    import copy

    clone = copy.copy(model)
    clone.optimizer_state = None  # twice the weights' size, and prediction does not need it
    if str(model.device) != "cpu":
        clone.model = copy.deepcopy(model.model).to("cpu")
    return clone
