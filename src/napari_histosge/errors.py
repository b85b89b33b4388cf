"""Errors that reach users: one clear message naming the file and the problem."""

from __future__ import annotations

from os import PathLike


class HistosgeError(Exception):
    """Base class for every error napari-histosge raises on purpose."""


class InputError(HistosgeError, ValueError):
    """Bad user input: a wrong path, a corrupt file, inconsistent data.

    Parameters
    ----------
    problem
        What is wrong, in words a user understands.
    path
        The file or folder the problem is in, if any; it is named in the message.
    """

    def __init__(self, problem: str, path: str | PathLike | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        message = problem if self.path is None else f"{self.path}: {problem}"
        super().__init__(message)


class CancelledError(HistosgeError):
    """Raised inside a long operation when its cancel flag is set."""
