"""One-file checkpoints, written atomically and read back safely.

A checkpoint is a ``torch.save`` dict holding the weights, the optimiser state (for
resuming) and a JSON document with everything else (config, genes, metadata, epoch).
Keeping the non-tensor part as JSON lets :func:`load_checkpoint` use
``torch.load(weights_only=True)``, which never runs code from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..errors import InputError

FORMAT = "napari-histosge-checkpoint"
VERSION = 1


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths from callers' metadata.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def save_checkpoint(
    path: str | os.PathLike, *, state_dict: dict, info: dict[str, Any], optimizer: dict | None = None
) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then ``os.replace``.

    A crash or error mid-write leaves any previous file at ``path`` untouched.

    Parameters
    ----------
    path
        Destination file.
    state_dict
        Model weights.
    info
        JSON-serialisable description (config, genes, meta, epoch...).
    optimizer
        Optimiser ``state_dict`` for resuming, or ``None``.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise InputError("the checkpoint path is a folder; give a file name", path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError("the folder for the checkpoint does not exist", folder)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "info": json.dumps(info, default=_json_default),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "optimizer": optimizer,
    }
    with _atomic_file(path) as fh:
        torch.save(payload, fh)


@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` (``os.replace``) only once written and synced.

    On any error the temporary file goes and a previous file at ``path`` stays untouched.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with _atomic_file(Path(path)) as fh:
        fh.write(data)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> tuple[dict, dict[str, Any], dict | None]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    tuple
        ``(state_dict, info, optimizer_state_or_None)``.

    Raises
    ------
    InputError
        If the file is missing, unreadable, corrupt or not a napari-histosge checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint file not found", path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt/truncated/foreign pickle: all the user's input
        raise InputError(f"not a readable napari-histosge checkpoint ({type(exc).__name__}: {exc})", path) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError("not a napari-histosge checkpoint (no format marker)", path)
    if int(payload.get("version", 0)) > VERSION:
        raise InputError(
            f"checkpoint version {payload.get('version')} is newer than this napari-histosge supports ({VERSION})",
            path,
        )
    try:
        info = json.loads(payload["info"])
        state_dict = dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the checkpoint is incomplete or corrupt ({exc})", path) from exc
    return state_dict, info, payload.get("optimizer")
