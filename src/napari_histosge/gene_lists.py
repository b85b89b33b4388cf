"""Gene names from a text or a text file: the gene lists of the command line and the Train widget.

No heavy imports: the command line's parser uses it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

__all__ = ["GENE_LIST_SUFFIXES", "ensembl_hint", "names_genes_by_ensembl_id", "parse_gene_names",
           "unknown_genes_message"]


#: File name endings taken for a file of gene names rather than a gene name.
GENE_LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".list")


def parse_gene_names(text: str) -> list[str]:
    """Gene names from a comma, semicolon, space or newline separated text, or from a text file of them.

    ``text`` that names an existing file (or ends like one, see :data:`GENE_LIST_SUFFIXES`)
    is read as such a list; lines starting with ``#`` are comments there. Duplicates are kept
    (gene selection drops them).

    Raises
    ------
    InputError
        If ``text`` looks like a file name but no such file exists.
    """
    text = str(text).strip()
    path = _expand_user(text)
    if text and (_is_file(path) or (_could_be_path(text) and text.lower().endswith(GENE_LIST_SUFFIXES))):
        if not _is_file(path):
            raise InputError("the gene list file does not exist", text)
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise InputError(f"the gene list file cannot be read ({exc.strerror or exc})", text) from exc
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return [g for g in re.split(r"[,;\s]+", text) if g]


def _expand_user(text: str) -> Path:
    """``text`` as a path with ``~`` expanded; a ``~name`` of no user (a gene named so) stays as it is."""
    try:
        return Path(text).expanduser()
    except (RuntimeError, ValueError):  # "Could not determine home directory" for "~0"
        return Path(text)


def _could_be_path(text: str) -> bool:
    """Whether ``text`` may name one file: a list's separators (comma, semicolon, newline) say it is a list."""
    return not re.search(r"[,;\n]", text)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, false where the text cannot be a path at all.

    A long gene list is a name too long for the file system (``OSError``: File name too long),
    and a text with a NUL character is no path (``ValueError``): both are gene names, not files.
    """
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def unknown_genes_message(unknown: Sequence[str], names: Sequence[str]) -> str:
    """The one line that refuses genes ``unknown`` among a section's gene ``names``, with close names as hints."""
    hints = []
    for gene in unknown[:5]:
        close = difflib.get_close_matches(gene, names, n=3)
        hints.append(f"{gene!r} (did you mean {', '.join(map(repr, close))}?)" if close else repr(gene))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    hint = ensembl_hint(unknown, names)
    return f"{len(unknown)} requested gene(s) are not in the data: {', '.join(hints)}{more}{hint}"


#: An Ensembl gene id: ENSG (human), ENSMUSG (mouse), ... followed by digits and an optional version.
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def names_genes_by_ensembl_id(names: Sequence[str]) -> bool:
    """Whether a section names its genes by Ensembl id rather than by symbol (most of a sample of its names)."""
    sample = list(names[:200])
    return bool(sample) and sum(bool(_ENSEMBL_ID.match(str(n))) for n in sample) > len(sample) / 2


def ensembl_hint(requested: Sequence[str], names: Sequence[str]) -> str:
    """A hint to append when symbols were asked of data that names genes by Ensembl id ("" otherwise)."""
    if not names_genes_by_ensembl_id(names) or all(_ENSEMBL_ID.match(str(g)) for g in requested):
        return ""
    example = next(str(n) for n in names if _ENSEMBL_ID.match(str(n)))
    return (f"; this data names its genes by Ensembl id (e.g. {example}), not by symbol: "
            "give the genes' Ensembl ids")
