"""Writing outputs safely: atomic files and folders, one clear error on a write failure, output locks.

Every file napari-histosge writes for a user (checkpoints, ``.h5ad``, CSV, JSON, zarr) goes
through :func:`atomic_path`: the writer fills a temporary file (or folder) in the destination
folder, which replaces the destination with ``os.replace`` only once complete. A crash, a
full disk or a read-only folder therefore never leaves a half-written file, and an earlier
output at that path stays as it was. An ``OSError`` becomes one :class:`~.errors.InputError`
naming the path and the reason.

:func:`output_lock` guards an output that a long job writes several times (a training
checkpoint): a second process writing the same path is refused, naming the lock file and the
process that holds it.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError

#: What a user can do about the ``errno`` values a write meets most.
_REASONS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "permission denied: write into a folder you may write to",
    errno.EPERM: "permission denied: write into a folder you may write to",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder; give a file name",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "the file is larger than this process may write (see ulimit -f)",
}


def write_reason(exc: OSError) -> str:
    """Why a write failed, in words a user can act on."""
    return _REASONS.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__


def write_error(path: str | os.PathLike, exc: OSError, what: str = "output") -> InputError:
    """The one-line :class:`InputError` for ``exc`` met while writing ``path``."""
    return InputError(f"cannot write the {what}: {write_reason(exc)}; nothing was written there", path)


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _remove(path: Path) -> None:
    """Remove a file or a folder tree; quietly when it is already gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` onto ``path``; a folder replaces an existing folder (old one moved aside first)."""
    if tmp.is_dir() and path.is_dir():
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=_folder_of(path)))
        os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(aside / path.name, path)  # put the earlier output back
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike, *, what: str = "output", folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` once the block ends.

    Parameters
    ----------
    path
        The destination (a file, or a folder such as a zarr store with ``folder=True``).
    what
        What the output is, for the error message (e.g. ``"predictions file"``).
    folder
        The writer makes a folder (zarr) at the temporary path instead of a file.

    Yields
    ------
    pathlib.Path
        Where to write; it keeps the suffix of ``path`` (some writers check it).

    Raises
    ------
    InputError
        Naming ``path``, on any ``OSError`` (read-only folder, full disk, ...). The
        temporary file is removed and an earlier file at ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise InputError(f"the {what} is a folder; give a file name", path)
    try:
        if folder:  # writers such as zarr fill an existing empty folder
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=_folder_of(path)))
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=_folder_of(path))
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output gets the usual permissions
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    try:
        yield tmp
        _fsync_file(tmp)
        _replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path, exc, what) from None
    except BaseException:
        _remove(tmp)
        raise


def write_with(path: str | os.PathLike, write: Callable[[Path], Any], *, what: str = "output",
               folder: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path and move the result onto ``path`` atomically.

    See :func:`atomic_path`; returns ``path``.
    """
    with atomic_path(path, what=what, folder=folder) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    return write_with(path, lambda tmp: tmp.write_bytes(data), what=what)


def write_text(path: str | os.PathLike, text: str, *, what: str = "output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), what=what)


def write_json(path: str | os.PathLike, obj: Any, *, what: str = "output", default: Callable | None = float) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (``default`` turns numpy scalars into floats)."""
    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n", what=what)


def write_csv(path: str | os.PathLike, frame: Any, *, what: str = "output", **to_csv: Any) -> Path:
    """Write a pandas DataFrame to ``path`` atomically (keywords go to ``DataFrame.to_csv``)."""
    return write_with(path, lambda tmp: frame.to_csv(tmp, **to_csv), what=what)


def write_h5ad(path: str | os.PathLike, adata: Any, *, what: str = "output") -> Path:
    """Write an AnnData to ``path`` atomically, as ``AnnData.write_h5ad`` does.

    HDF5 writes through a Python file object here: given a path, HDF5 keeps a file whose
    write failed (a full disk) open until the process ends and may crash the process then;
    through a file object the failure is an ``OSError`` like any other.
    """
    def write(tmp: Path) -> None:
        import anndata
        import h5py

        adata.strings_to_categoricals()  # what write_h5ad does first
        if adata.raw is not None:
            adata.strings_to_categoricals(adata.raw.var)
        try:
            with open(tmp, "w+b") as fh, h5py.File(fh, "w") as store:
                anndata.io.write_elem(store, "/", adata)
        except OSError:
            raise
        except Exception as exc:
            # h5py wraps the file object's OSError (full disk) in its own error.
            code = _errno_in(exc)
            if code is None:
                raise
            raise OSError(code, os.strerror(code)) from exc

    return write_with(path, write, what=what)


def _errno_in(exc: BaseException | None) -> int | None:
    """The errno of the first ``OSError`` in ``exc``'s chain of causes, or one its text names."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        found = re.search(r"errno = (\d+)", str(exc))
        if found:
            return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


# ----------------------------------------------------------------------------- output locks
def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _holder(lock: Path) -> tuple[int | None, str]:
    """``(pid, host)`` written in ``lock``; ``pid`` is ``None`` when the file is empty or garbled."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").split()
    except FileNotFoundError:
        return None, ""
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid, text[1] if len(text) > 1 else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(lock: Path) -> bool:
    """Whether ``lock`` was left by a process of this machine that no longer runs."""
    pid, host = _holder(lock)
    if pid is None:
        return False  # being written right now, or not ours to judge
    return host == socket.gethostname() and not _alive(pid)


def _create_lock(lock: Path) -> None:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()} {socket.gethostname()}\n")


def acquire_lock(path: str | os.PathLike, *, what: str = "output") -> Path:
    """Create the lock of output ``path`` for this process; returns the lock file.

    A lock left by a process of this machine that no longer runs is taken over.

    Raises
    ------
    InputError
        If another live process holds the lock (naming the lock file and its pid), or the
        lock cannot be created.
    """
    lock = lock_path(path)
    for _attempt in range(2):
        try:
            _create_lock(lock)
            return lock
        except FileExistsError:
            if not _is_stale(lock):
                break
            # Move the stale lock aside (atomic) so that two takers cannot both remove a fresh one.
            try:
                os.replace(lock, lock.with_name(f"{lock.name}.stale.{os.getpid()}"))
                os.unlink(lock.with_name(f"{lock.name}.stale.{os.getpid()}"))
            except FileNotFoundError:
                pass
        except OSError as exc:
            raise write_error(lock, exc, f"lock file of the {what}") from None
    pid, host = _holder(lock)
    who = "another process" if pid is None else f"process {pid}"
    if host and host != socket.gethostname():
        who += f" on {host}"
    raise InputError(f"the {what} is being written by {who} (lock file {lock}); wait for it to finish or "
                     "choose another output; if no such process runs, delete the lock file", path)


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process still holds it."""
    pid, _ = _holder(lock)
    if pid == os.getpid():
        try:
            lock.unlink()
        except FileNotFoundError:
            pass


def remove_orphan_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left beside it; returns them.

    Call it only while holding the lock of ``path``: no other writer's file is then in flight.
    """
    path = Path(path)
    orphans = sorted(_folder_of(path).glob(f".{glob.escape(path.name)}.*.tmp*"))
    for orphan in orphans:
        _remove(orphan)
    return orphans


@contextmanager
def output_lock(path: str | os.PathLike, *, what: str = "output") -> Iterator[Path]:
    """Hold the lock of output ``path`` for the block (see :func:`acquire_lock`).

    Temporary files of an earlier writer that was killed (``kill -9``) go first.
    """
    lock = acquire_lock(path, what=what)
    remove_orphan_temporaries(path)
    try:
        yield lock
    finally:
        release_lock(lock)
