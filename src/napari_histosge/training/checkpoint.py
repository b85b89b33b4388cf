"""One-file checkpoints, written atomically and read back safely.

A checkpoint is a ``torch.save`` dict holding the weights, the optimiser state (for
resuming) and a JSON document with everything else (config, genes, metadata, epoch).
Keeping the non-tensor part as JSON lets :func:`load_checkpoint` use
``torch.load(weights_only=True)``, which never runs code from the file. ``torch.save``
writes a zip archive whose every record carries a CRC-32 checksum; :func:`load_checkpoint`
verifies them all first, so a file damaged after it was written (a bad copy, a failing
disk) is refused instead of loading weights that are silently wrong.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..features.timm_backbones import load_error_reason
from ..outputs import atomic_path, write_bytes

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

    A crash or error mid-write leaves any previous file at ``path`` untouched; an ``OSError``
    (full disk, read-only folder) becomes one :class:`InputError` naming ``path``.

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
    # Serialised in memory first: torch's own writer turns a failed write (full disk) into a
    # RuntimeError without its cause, Python's write keeps the errno for the message.
    buffer = io.BytesIO()
    with atomic_path(path, what="checkpoint") as tmp:
        torch.save(payload, buffer)
        tmp.write_bytes(buffer.getbuffer())


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    write_bytes(path, data, what="checkpoint")


def verify_checksums(path: str | os.PathLike) -> None:
    """Check the CRC-32 of every record of the zip archive ``torch.save`` wrote at ``path``.

    Raises
    ------
    InputError
        If the archive is damaged or a record does not match its checksum.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise InputError("not a readable napari-histosge checkpoint: no intact zip archive as torch.save "
                         "writes (another kind of file, or a damaged or truncated one); copy it again or "
                         "train again", path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, NotImplementedError...: all damage
        raise InputError(f"the checkpoint is damaged ({load_error_reason(exc)}); copy it again or train again",
                         path) from None
    if bad is not None:
        raise InputError(f"the checkpoint is damaged: record {bad!r} does not match its checksum (the file "
                         "changed after it was written, e.g. a bad copy or disk); copy it again or train again",
                         path)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> tuple[dict, dict[str, Any], dict | None]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    tuple
        ``(state_dict, info, optimizer_state_or_None)``.

    Raises
    ------
    InputError
        If the file is missing, unreadable, damaged (see :func:`verify_checksums`) or not a
        napari-histosge checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint file not found", path)
    try:
        verify_checksums(path)
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except InputError:
        raise
    except Exception as exc:  # corrupt/truncated/foreign pickle: all the user's input
        raise InputError(f"not a readable napari-histosge checkpoint ({load_error_reason(exc)})", path) from None
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
