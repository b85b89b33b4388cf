"""Cheap format detection: file and folder names (and a zarr group's metadata) only, never the counts.

Standard library only, so the command line can refuse a folder that is no section in a
fraction of a second, before numpy, pandas, anndata or torch are imported; the readers take
their file-name rules from here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

FORMATS = ("spaceranger", "visium_hd", "st_v1", "h5ad", "spatialdata")

SUPPORTED = (
    "supported inputs are: a Space Ranger output folder (spatial/tissue_positions*.csv, "
    "spatial/scalefactors_json.json, filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/), "
    "a Visium HD output folder (binned_outputs/square_008um, square_016um) or one of its bin folders, "
    "a Spatial Transcriptomics v1 folder (<S>.tsv.gz counts, <S>_selection.tsv, an H&E image), "
    "a SpatialData .zarr store (a table over shapes or points, and an image) "
    "or an .h5ad file with obsm['spatial']"
)

#: A Visium HD bin folder, ``square_008um``; the group is the bin size in µm.
BIN_FOLDER = re.compile(r"^square_(\d{3})um$")
#: The element folders of a SpatialData store.
ELEMENT_FOLDERS = ("images", "labels", "points", "shapes", "tables")


def detect_format(path: str | os.PathLike) -> str | None:
    """Guess the format of a spots input from names only.

    napari calls this on every drop, so it lists at most one folder and reads
    no file contents.

    Parameters
    ----------
    path
        A folder or file.

    Returns
    -------
    str or None
        ``"spaceranger"``, ``"visium_hd"``, ``"st_v1"``, ``"h5ad"``, ``"spatialdata"`` (a zarr
        store), or ``None`` when unsupported (or missing).
    """
    try:
        path = Path(path)
        if path.is_file():
            return "h5ad" if path.suffix.lower() == ".h5ad" else None
        if path.is_dir():
            if looks_like_spatialdata(path):
                return "spatialdata"
            # before Space Ranger: an HD output's own spatial/ looks like a Visium folder
            if looks_like_visium_hd(path):
                return "visium_hd"
            if looks_like_spaceranger(path):
                return "spaceranger"
            if looks_like_st_v1(path):
                return "st_v1"
    except (OSError, ValueError):  # unreadable folder, broken link, a name no file system takes: not ours
        return None
    return None


# ----------------------------------------------------------------------------- Space Ranger
def positions_file(folder: Path) -> Path | None:
    """The positions file of a Space Ranger folder (v2 name first), or ``None``."""
    for name in ("tissue_positions.csv", "tissue_positions_list.csv"):
        candidate = folder / "spatial" / name
        if candidate.is_file():
            return candidate
    return None


def looks_like_spaceranger(folder: Path) -> bool:
    """Cheap check by file names only."""
    return (
        positions_file(folder) is not None
        or (folder / "spatial" / "scalefactors_json.json").is_file()
        or (folder / "filtered_feature_bc_matrix.h5").is_file()
        or (folder / "filtered_feature_bc_matrix").is_dir()
    )


# ----------------------------------------------------------------------------- ST v1
def selection_files(folder: Path) -> list[Path]:
    """The ``*_selection.tsv`` spot files of an ST v1 folder."""
    return sorted(p for p in folder.glob("*_selection.tsv") if p.is_file())


def counts_files(folder: Path) -> list[Path]:
    """The counts tables (``.tsv.gz`` or ``.tsv``, not a selection file) of an ST v1 folder."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith((".tsv.gz", ".tsv")) and not p.name.endswith("_selection.tsv")
    )


def looks_like_st_v1(folder: Path) -> bool:
    """Cheap check by file names only: a ``*_selection.tsv`` beside a counts table."""
    return bool(selection_files(folder)) and bool(counts_files(folder))


# ----------------------------------------------------------------------------- Visium HD
def looks_like_visium_hd(folder: Path) -> bool:
    """Cheap check by names only: a folder with ``binned_outputs/``, that folder, or a ``square_XXXum`` folder."""
    if BIN_FOLDER.match(folder.name):
        return (folder / "spatial").is_dir() or (folder / "filtered_feature_bc_matrix.h5").is_file()
    return folder.name == "binned_outputs" or (folder / "binned_outputs").is_dir()


# ----------------------------------------------------------------------------- zarr stores
def looks_like_spatialdata(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a SpatialData zarr store, from names only (a zarr group with element folders)."""
    p = Path(path)
    try:
        if not p.is_dir() or not ((p / "zarr.json").is_file() or (p / ".zgroup").is_file()):
            return False
        return any((p / name).is_dir() for name in ELEMENT_FOLDERS) and not is_ome_zarr_image(p)
    except OSError:
        return False


def is_ome_zarr_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr multiscale image folder (zarr v2 or v3 metadata, NGFF 0.4 or 0.5)."""
    return ome_multiscales(Path(path)) is not None


def ome_multiscales(path: Path) -> dict[str, Any] | None:
    """The first ``multiscales`` entry of an OME-Zarr image folder, read from its metadata file only."""
    for name in ("zarr.json", ".zattrs"):
        meta = path / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if not isinstance(attrs, dict):
                return None
            attrs = attrs.get("attributes", attrs) if name == "zarr.json" else attrs
            if not isinstance(attrs, dict):
                return None
            ome = attrs.get("ome")  # OME-Zarr 0.5 nests its metadata; 0.4 keeps it at the top
            found = (ome if isinstance(ome, dict) else attrs).get("multiscales")
            return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None
    return None
