"""Reader for a Spatial Transcriptomics v1 section folder (e.g. the HER2ST data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import (
    IMAGE_SUFFIXES,
    build_adata,
    check_finite_positions,
    check_positions_in_images,
    image_entry,
    image_size,
    median_nn_distance,
    no_spots_error,
    require_integer_counts,
    to_counts_csr,
)
from .detect import counts_files, selection_files

ST_GRID_UM = 200.0  # centre-to-centre spacing of ST v1 spots
ST_SPOT_UM = 100.0  # ST v1 spot diameter
SELECTION_COLUMNS = ("x", "y", "pixel_x", "pixel_y", "selected")


def _pick(candidates: list[Path], stem: str, what: str, folder: Path) -> Path:
    """One file among candidates, preferring the one named after the section."""
    if len(candidates) == 1:
        return candidates[0]
    named = [p for p in candidates if p.name.split(".")[0] == stem]
    if len(named) == 1:
        return named[0]
    names = ", ".join(p.name for p in candidates)
    raise InputError(f"several {what} files ({names}); keep one per section folder", folder)


def _read_counts(path: Path) -> tuple[pd.DataFrame, pd.Index]:
    try:
        table = pd.read_csv(path, sep="\t", index_col=0)
    except Exception as exc:  # gzip, unicode and parser errors
        raise InputError(f"cannot read the counts table ({type(exc).__name__}: {exc})", path) from exc
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise InputError("counts table is empty", path)
    non_numeric = [c for c, dt in table.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
    if non_numeric:
        raise InputError(f"counts table has non-numeric columns, e.g. {non_numeric[:3]}", path)
    ids = pd.Index(table.index.astype(str))
    if ids.duplicated().any():
        raise InputError(f"spot id {ids[ids.duplicated()][0]!r} appears more than once", path)
    return table, ids


def _read_selection(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise InputError(f"cannot read the spot selection file ({type(exc).__name__}: {exc})", path) from exc
    missing = [c for c in SELECTION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"spot selection file lacks columns {missing} (needs {list(SELECTION_COLUMNS)})", path)
    for col in SELECTION_COLUMNS:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise InputError(f"column {col!r} of the spot selection file is not numeric", path)
    table.index = pd.Index(table["x"].astype(int).astype(str) + "x" + table["y"].astype(int).astype(str))
    return table[~table.index.duplicated()]


def lattice_spacing(array_xy: np.ndarray, pixel_xy: np.ndarray) -> float | None:
    """Pixel distance between neighbouring lattice points, from an affine fit.

    Fits ``pixel = A @ array + b`` by least squares; the spacing is the mean length
    of the two columns of ``A``. ``None`` when the array positions do not span 2-D.
    """
    design = np.column_stack([array_xy, np.ones(len(array_xy))])
    if len(array_xy) < 3 or np.linalg.matrix_rank(design) < 3:
        return None
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    spacing = float(np.mean(np.linalg.norm(coef[:2], axis=1)))
    return spacing if np.isfinite(spacing) and spacing > 0 else None


def read_st_v1(folder: str | os.PathLike, *, image: str | os.PathLike | None = None):
    """Read an ST v1 section folder into the spot AnnData.

    Parameters
    ----------
    folder
        Holds ``<S>.tsv.gz`` (spots x genes raw counts, index ``"<x>x<y>"``),
        ``<S>_selection.tsv`` and the full-resolution H&E image (jpg/png/tif).
    image
        Optional full-resolution image; overrides the one found in the folder.

    Returns
    -------
    anndata.AnnData
        Selected spots present in the counts, following docs/architecture.md.
    """
    folder = Path(folder)
    selections = selection_files(folder)
    if not selections:
        raise InputError("missing spot selection file (*_selection.tsv)", folder)
    sel_path = _pick(selections, selections[0].name[: -len("_selection.tsv")], "*_selection.tsv", folder)
    stem = sel_path.name[: -len("_selection.tsv")]
    tables = counts_files(folder)
    if not tables:
        raise InputError("missing counts table (<section>.tsv.gz)", folder)
    counts_path = _pick(tables, stem, "counts (*.tsv.gz)", folder)

    table, ids = _read_counts(counts_path)
    selection = _read_selection(sel_path)
    if not ids.isin(selection.index).any() and table.columns.astype(str).isin(selection.index).any():
        # Some exports store genes x spots; turn them around.
        table = table.T
        ids = pd.Index(table.index.astype(str))
    common = ids[ids.isin(selection.index)]
    if len(common) == 0:
        raise InputError(
            f"no spot id of the counts ({counts_path.name}, e.g. {ids[0]}) matches a position "
            f"in the selection file (e.g. {selection.index[0] if len(selection) else 'none'})",
            sel_path,
        )
    selected = selection.loc[common, "selected"].to_numpy() == 1
    keep = common[selected]
    if len(keep) == 0:
        raise no_spots_error(sel_path, f"none of the {len(common)} spots with counts has selected == 1")
    sel = selection.loc[keep]
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    check_finite_positions(xy, keep, sel_path)
    rows = ids.get_indexer(keep)
    counts = to_counts_csr(table.to_numpy()[rows], counts_path)
    require_integer_counts(counts, counts_path, "the counts table")

    # Spacing from all selected spots with positions (more points, better fit).
    spacing = lattice_spacing(sel[["x", "y"]].to_numpy(dtype=float), xy) or median_nn_distance(xy)
    mpp = ST_GRID_UM / spacing if spacing else None
    spot_diameter = ST_SPOT_UM / mpp if mpp else 0.0

    images = {}
    if image is not None:
        images["fullres"] = image_entry(image, 1.0)
    else:
        found = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if found:
            images["fullres"] = image_entry(max(found, key=lambda p: p.stat().st_size), 1.0)
    _check_displaced_spots(xy, keep, images, sel_path, spot_diameter)
    check_positions_in_images(xy, keep, images, positions_path=sel_path, spot_diameter_px=spot_diameter)

    var = pd.DataFrame(index=_unique(table.columns))
    return build_adata(
        counts,
        keep,
        var,
        array_row=sel["y"].to_numpy(dtype=np.int64),
        array_col=sel["x"].to_numpy(dtype=np.int64),
        xy=xy,
        platform="st_v1",
        lattice="square",
        spot_diameter_px=spot_diameter,
        mpp=mpp,
        images=images,
        source=folder,
        library_id=stem or folder.resolve().name,
    )


def _check_displaced_spots(xy: np.ndarray, ids: pd.Index, images: dict, sel_path: Path, spot_diameter: float) -> None:
    """Refuse a few spots outside the image, blaming the selection file that places them.

    When most spots fit the image and a minority lie outside (however far), the image is the
    right one and those rows of ``pixel_x``/``pixel_y`` are wrong; when most lie outside,
    :func:`~._common.check_positions_in_images` asks whether it is the right image.
    """
    if "fullres" not in images or len(xy) == 0:
        return
    path = Path(images["fullres"]["path"])
    width, height = image_size(path)
    tol = max(1.0, 0.5 * spot_diameter)
    outside = (xy[:, 0] < -tol) | (xy[:, 0] > width + tol) | (xy[:, 1] < -tol) | (xy[:, 1] > height + tol)
    n_out = int(outside.sum())
    if 0 < n_out <= len(xy) // 2:
        spots = ", ".join(f"{ids[i]} at ({xy[i, 0]:.0f}, {xy[i, 1]:.0f})" for i in np.flatnonzero(outside)[:5])
        more = f" and {n_out - 5} more" if n_out > 5 else ""
        raise InputError(f"{n_out} of {len(xy)} spots fall outside the image {path.name} ({width} x {height} px), "
                         f"e.g. {spots}{more} (pixel_x, pixel_y); correct their positions or set selected to 0 "
                         "for them in this file", sel_path)


def _unique(names: pd.Index) -> pd.Index:
    import anndata as ad

    return ad.utils.make_index_unique(pd.Index(names.astype(str)))
