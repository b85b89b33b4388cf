"""Split spots into groups of neighbours (the sets of tokens that attend to each other), and their spacing."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

GROUPING_MODES = ("spatial", "file_order")


def group_spots(
    positions_xy: np.ndarray,
    group_size: int,
    *,
    mode: str = "spatial",
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Partition spot indices into groups of at most ``group_size``.

    Parameters
    ----------
    positions_xy
        ``(n, 2)`` spot positions.
    group_size
        Largest group.
    mode
        ``"spatial"``: contiguous neighbourhoods from recursive balanced splits along the
        longer axis (a k-d tree whose leaves hold ``group_size/2 .. group_size`` spots);
        ``"file_order"``: consecutive chunks in input order, as the reference code.
    rng
        When given (spatial mode), the points are rotated by a random angle first, so the
        neighbourhoods change from epoch to epoch (augmentation). ``None`` is deterministic.

    Returns
    -------
    list of numpy.ndarray
        Index arrays; every spot is in exactly one group.
    """
    pos = np.asarray(positions_xy, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise InputError(f"positions must have shape (n, 2), got {pos.shape}")
    if int(group_size) < 1:
        raise InputError(f"group_size must be at least 1, got {group_size}")
    if mode not in GROUPING_MODES:
        raise InputError(f"unknown grouping {mode!r}; choose one of {', '.join(GROUPING_MODES)}")
    n, size = len(pos), int(group_size)
    if n == 0:
        return []
    n_groups = -(-n // size)
    if mode == "file_order":
        return [np.asarray(a, dtype=np.int64) for a in np.array_split(np.arange(n), n_groups)]
    if rng is not None:
        theta = rng.uniform(0.0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        pos = pos @ np.array([[c, -s], [s, c]])
    groups: list[np.ndarray] = []
    # Stack of (indices, groups they must become); one loop turn per tree node, not per spot.
    stack = [(np.arange(n, dtype=np.int64), n_groups)]
    while stack:
        idx, k = stack.pop()
        if k <= 1:
            groups.append(np.sort(idx))
            continue
        pts = pos[idx]
        axis = int(np.argmax(np.ptp(pts, axis=0)))
        # Ties broken by the other axis, so groups do not depend on the input order.
        order = np.lexsort((pts[:, 1 - axis], pts[:, axis]))
        k_left = k // 2
        cut = int(round(len(idx) * k_left / k))
        stack.append((idx[order[cut:]], k - k_left))
        stack.append((idx[order[:cut]], k_left))
    return groups


def pack_batches(groups: list[np.ndarray], batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pack groups into padded batches of at most ``batch_size`` spots (at least one group each).

    Parameters
    ----------
    groups
        Index arrays from :func:`group_spots`, in the order to use.
    batch_size
        Spots per batch; a group larger than this gets a batch of its own.

    Returns
    -------
    list of (index, mask)
        ``index`` is ``(B, S)`` int64 spot indices (padding points at spot 0) and ``mask``
        is ``(B, S)`` bool, ``True`` at padding, where ``S`` is the largest group in the batch.
    """
    batches: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    count = 0
    for g in groups:
        if current and count + len(g) > batch_size:
            batches.append(current)
            current, count = [], 0
        current.append(g)
        count += len(g)
    if current:
        batches.append(current)
    out = []
    for batch in batches:
        width = max(len(g) for g in batch)
        index = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.ones((len(batch), width), dtype=bool)
        for row, g in enumerate(batch):  # one turn per group, not per spot
            index[row, : len(g)] = g
            mask[row, : len(g)] = False
        out.append((index, mask))
    return out


def median_spacing(positions: np.ndarray, *, undefined: float = 1.0) -> float:
    """Median distance from a spot to its nearest other spot; ``undefined`` for one spot or a zero median."""
    pos = np.asarray(positions, np.float64)
    if len(pos) < 2:
        return float(undefined)
    from scipy.spatial import cKDTree  # here: the models' settings (and the CLI's parser) import this module

    dist, _ = cKDTree(pos).query(pos, k=2)
    value = float(np.median(dist[:, 1]))
    return value if value > 0 else float(undefined)
