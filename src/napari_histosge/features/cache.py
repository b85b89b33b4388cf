"""On-disk cache of patch features: ``$HISTOSGE_CACHE/features/<sha>.npz``.

The key covers everything the features depend on: the slide's content
(:func:`~napari_histosge.slide.pyramid.file_fingerprint`: a hash of the whole file, or
of its header and sampled blocks for a large slide; not its path or times), the patch
centres (rounded to 0.01 px), patch size, scale, extractor input size and identity, and
:data:`CACHE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import write_reason
from ..slide.open import cache_root, file_fingerprint

#: Version 2: keyed on the slide's content instead of its path, size and mtime.
CACHE_VERSION = 2


def feature_cache_key(
    image_path: str | os.PathLike,
    scale: float,
    centers_xy: np.ndarray,
    patch_size_px: float,
    input_size: int,
    identity: str,
    center_fraction: float,
) -> str:
    """SHA-256 key of one feature extraction.

    Parameters
    ----------
    image_path
        The slide read.
    scale
        Slide level-0 px per full-res px.
    centers_xy
        ``(n, 2)`` patch centres in full-res px.
    patch_size_px
        Patch edge in full-res px.
    input_size
        Patch edge fed to the extractor.
    identity
        The extractor's identity string.
    center_fraction
        Share of the patch edge that is the spot itself.
    """
    centers = np.round(np.asarray(centers_xy, dtype=np.float64).reshape(-1, 2), 2) + 0.0  # no -0.0
    head = json.dumps(
        {
            "version": CACHE_VERSION,
            "image": file_fingerprint(image_path),
            "scale": round(float(scale), 9),
            "patch": round(float(patch_size_px), 2),
            "input": int(input_size),
            "identity": identity,
            "center_fraction": round(float(center_fraction), 4),
            "n": len(centers),
        },
        sort_keys=True,
    )
    h = hashlib.sha256(head.encode())
    h.update(np.ascontiguousarray(centers).tobytes())
    return h.hexdigest()


def cache_path(key: str) -> Path:
    """Where the features of ``key`` live."""
    return cache_root() / "features" / f"{key}.npz"


def load_cached(key: str) -> dict[str, np.ndarray] | None:
    """Arrays stored under ``key`` (``features``, ``mean_rgb``, ``identity``), or None."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError):
        # A damaged cache entry is recomputed, not fatal.
        return None


def save_cached(key: str, **arrays: np.ndarray) -> Path | None:
    """Write arrays under ``key`` atomically (temp file + ``os.replace``).

    A cache that cannot be written (read-only or full disk) costs only the reuse: a warning
    naming the cache folder, and ``None`` instead of the path.
    """
    path = cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    except OSError as exc:
        _warn_unwritable(path.parent, exc)
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            payload: dict[str, Any] = dict(arrays)  # numpy's stub would match a name to allow_pickle
            np.savez(f, **payload)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _warn_unwritable(path.parent, exc)
        return None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _warn_unwritable(folder: Path, exc: OSError) -> None:
    warnings.warn(f"{folder}: the feature cache cannot be written ({write_reason(exc)}); the features are "
                  "used but not kept for the next run (set $HISTOSGE_CACHE to a writable folder, or skip the "
                  "feature cache with --no-cache on the command line)", UserWarning, stacklevel=3)
