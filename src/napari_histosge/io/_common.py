"""Helpers shared by the readers: checks, image header sizes, the AnnData contract."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import InputError

FLAT_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ndpi", ".scn")
IMAGE_SUFFIXES = FLAT_IMAGE_SUFFIXES + TIFF_SUFFIXES


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise an InputError saying ``what`` is missing."""
    if not path.is_file():
        raise InputError(f"missing {what} (expected {path.name})", path)
    return path


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Width and height of an image, read from its header only.

    Parameters
    ----------
    path
        A JPEG/PNG (read with PIL) or a TIFF-like slide (``.tif``, ``.tiff``, ``.btf``,
        ``.svs``, ``.ndpi``; read with tifffile: the first, full-resolution page).

    Returns
    -------
    tuple of int
        ``(width, height)`` in pixels.

    Raises
    ------
    InputError
        If the file is missing, of an unknown kind, or its header cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("image file does not exist", path)
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                width, height = int(page.imagewidth), int(page.imagelength)
        else:
            from PIL import Image

            # Opening parses the header only; lift the decompression-bomb guard
            # for this call because slides are legitimately huge.
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as img:
                    width, height = img.size
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except InputError:
        raise
    except Exception as exc:  # any parser failure means an unreadable image
        raise InputError(f"cannot read the image header ({type(exc).__name__}: {exc})", path) from exc
    if width <= 0 or height <= 0:
        raise InputError(f"image has an empty size {width} x {height}", path)
    return width, height


def to_counts_csr(matrix: Any, path: Path) -> sparse.csr_matrix:
    """Convert counts to float32 CSR and reject NaN, inf and negative values."""
    try:
        if sparse.issparse(matrix):
            csr = sparse.csr_matrix(matrix, dtype=np.float32)
        else:
            csr = sparse.csr_matrix(np.asarray(matrix, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise InputError(f"counts are not numeric ({exc})", path) from exc
    data = csr.data
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(f"counts contain {bad} NaN or infinite values", path)
    if data.size and data.min() < 0:
        bad = int(np.count_nonzero(data < 0))
        raise InputError(f"counts contain {bad} negative values", path)
    csr.eliminate_zeros()
    return csr


def require_integer_counts(counts: sparse.csr_matrix, path: Path, source: str = "the count matrix",
                           hint: str = "") -> None:
    """Reject counts that are not whole numbers (normalised or log data instead of raw counts).

    ``source`` names the table in the message and ``hint`` ends it (where raw counts belong).
    """
    data = counts.data
    fractional = data != np.round(data)
    if fractional.any():
        example = float(data[np.flatnonzero(fractional)[0]])
        raise InputError(
            f"{source} has {int(fractional.sum())} non-integer values (e.g. {example:g}): normalised or log "
            f"data? raw counts are needed{hint}",
            path,
        )


#: The widest plausible spot, in spacings between neighbouring spot centres: discs of
#: neighbouring spots would overlap by half a spot beyond it.
MAX_DIAMETER_SPACINGS = 1.5
#: The least share of an image's width or height the spot array may span in it (a Visium
#: image shows the capture area); below it the image's scale factor is taken to be wrong.
MIN_ARRAY_COVERAGE = 0.15


def check_spot_diameter(diameter_px: float, xy: np.ndarray, path: Path, key: str = "spot_diameter_fullres") -> None:
    """Reject a spot diameter wider than :data:`MAX_DIAMETER_SPACINGS` spacings of spots ``xy``.

    Parameters
    ----------
    diameter_px
        The spot diameter in full-resolution px.
    xy
        Spot centres in full-resolution px (the whole array where known: off-tissue spots too).
    path
        The file the diameter comes from (named in the error).
    key
        The name of the diameter in that file.
    """
    finite = xy[np.isfinite(xy).all(axis=1)]
    spacing = median_nn_distance(finite)
    if spacing is None or diameter_px <= MAX_DIAMETER_SPACINGS * spacing:
        return
    raise InputError(
        f"{key} is {diameter_px:.4g} px, but neighbouring spot centres are only {spacing:.4g} px apart: a "
        f"spot {diameter_px / spacing:.1f} times wider than the spacing cannot be right (at most "
        f"{MAX_DIAMETER_SPACINGS:g}); check that {key} is in full-resolution pixels and was not scaled",
        path,
    )


def check_array_coverage(
    xy: np.ndarray, images: dict[str, dict[str, Any]], scale_path: Path
) -> None:
    """Reject a scale factor that shrinks the spot array to a corner of its image.

    Spot centres scaled into an image must span at least :data:`MIN_ARRAY_COVERAGE` of its
    width or height; images at scale 1 (a full-resolution slide, which may show the whole
    glass) are not checked.

    Parameters
    ----------
    xy
        Spot centres in full-resolution px (the whole array where known: off-tissue spots too).
    images
        ``{name: {"path", "scale"}}`` as in ``uns["histosge"]["images"]``.
    scale_path
        The file the scale factors come from (named in the error).
    """
    finite = xy[np.isfinite(xy).all(axis=1)]
    if len(finite) < 2:
        return
    extent = finite.max(axis=0) - finite.min(axis=0)
    for name, info in images.items():
        scale = float(info["scale"])
        if scale == 1.0:
            continue
        width, height = image_size(info["path"])
        coverage = float(np.max(extent * scale / np.array([width, height])))
        if coverage < MIN_ARRAY_COVERAGE:
            raise InputError(
                f"at the {name} scale factor {scale:g} the spot array spans only {coverage:.1%} of "
                f"{Path(info['path']).name} ({width} x {height} px), but a Visium image shows the whole capture "
                f"area: the scale factor is probably too small; check tissue_{name}_scalef in this file",
                scale_path,
            )


def check_finite_positions(xy: np.ndarray, ids: pd.Index, path: Path) -> None:
    """Reject spot positions that are NaN or infinite."""
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        examples = ", ".join(map(str, ids[bad][:3]))
        raise InputError(f"{int(bad.sum())} spot positions are missing or not finite (e.g. {examples})", path)


def check_positions_in_images(
    xy: np.ndarray,
    ids: pd.Index,
    images: dict[str, dict[str, Any]],
    *,
    positions_path: Path,
    scale_path: Path | None = None,
    spot_diameter_px: float = 0.0,
) -> None:
    """Check that spot centres fall inside every image, once scaled to it.

    Parameters
    ----------
    xy
        Spot centres ``(x, y)`` in full-resolution pixels.
    ids
        Spot ids, for examples in messages.
    images
        ``{name: {"path", "scale"}}`` as in ``uns["histosge"]["images"]``.
    positions_path
        File the positions come from (blamed when only some spots are outside).
    scale_path
        File the scale factors of non-full-res images come from (blamed when the
        positions do not fit the image at all). ``None``: blame the image.
    spot_diameter_px
        Spot diameter in full-res px; a centre may lie up to half a spot past an edge.

    Raises
    ------
    InputError
        If positions lie outside an image.
    """
    if len(xy) == 0:
        return
    for name, info in images.items():
        img_path, scale = Path(info["path"]), float(info["scale"])
        width, height = image_size(img_path)
        scaled = xy * scale
        tol = max(1.0, 0.5 * spot_diameter_px * scale)
        outside = (
            (scaled[:, 0] < -tol)
            | (scaled[:, 0] > width + tol)
            | (scaled[:, 1] < -tol)
            | (scaled[:, 1] > height + tol)
        )
        n_out = int(outside.sum())
        if n_out == 0:
            continue
        far = scaled.max(axis=0) > 1.5 * np.array([width, height])
        mismatch = n_out == len(xy) or bool(far.any())
        extent = f"x up to {scaled[:, 0].max():.0f}, y up to {scaled[:, 1].max():.0f}"
        if mismatch and scale != 1.0 and scale_path is not None:
            raise InputError(
                f"scale factor for the {name} image ({scale:g}) does not match {img_path.name} "
                f"({width} x {height} px): scaled spot positions reach {extent}, "
                f"{n_out} of {len(xy)} spots outside the image",
                scale_path,
            )
        if mismatch:
            raise InputError(
                f"spot positions do not match this image ({width} x {height} px at scale {scale:g}): "
                f"{extent}, {n_out} of {len(xy)} spots outside; is it the right image?",
                img_path,
            )
        examples = ", ".join(
            f"{ids[i]} at ({xy[i, 0]:.0f}, {xy[i, 1]:.0f})" for i in np.flatnonzero(outside)[:3]
        )
        raise InputError(
            f"{n_out} of {len(xy)} spots fall outside the {name} image {img_path.name} "
            f"({width} x {height} px at scale {scale:g}), e.g. {examples} (full-res px)",
            positions_path,
        )


def image_entry(path: str | os.PathLike, scale: float) -> dict[str, Any]:
    """One ``uns["histosge"]["images"]`` entry (absolute path, float scale)."""
    return {"path": str(Path(path).resolve()), "scale": float(scale)}


def largest_image(images: dict[str, dict[str, Any]]) -> str | None:
    """Name of the image with the largest scale, or ``None`` when there is none."""
    if not images:
        return None
    return max(images, key=lambda name: float(images[name]["scale"]))


def build_adata(
    counts: sparse.csr_matrix,
    obs_names: pd.Index,
    var: pd.DataFrame,
    *,
    array_row: np.ndarray,
    array_col: np.ndarray,
    xy: np.ndarray,
    platform: str,
    lattice: str | None,
    spot_diameter_px: float,
    mpp: float | None,
    images: dict[str, dict[str, Any]],
    source: Path,
    library_id: str,
    scalefactors: dict[str, float] | None = None,
    obs_extra: pd.DataFrame | None = None,
) -> ad.AnnData:
    """Assemble a spot AnnData following docs/architecture.md.

    ``uns["spatial"][library_id]["scalefactors"]`` is filled for scanpy (no image arrays).
    """
    obs = pd.DataFrame(index=obs_names.astype(str).rename(None))
    if obs_extra is not None:
        for col in obs_extra.columns:
            if col not in ("array_row", "array_col", "in_tissue"):
                obs[col] = obs_extra[col].to_numpy()
    obs["array_row"] = np.asarray(array_row, dtype=np.int64)
    obs["array_col"] = np.asarray(array_col, dtype=np.int64)
    obs["in_tissue"] = np.ones(len(obs), dtype=np.int64)
    var = var.copy()
    var.index = var.index.astype(str).rename(None)  # h5ad needs str, unnamed
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    adata.uns["histosge"] = {
        "platform": platform,
        "lattice": lattice,
        "spot_diameter_px": float(spot_diameter_px),
        "mpp": None if mpp is None else float(mpp),
        "images": images,
        "image": largest_image(images),
        "source": str(Path(source).resolve()),
        "library_id": library_id,
    }
    sf = {"spot_diameter_fullres": float(spot_diameter_px)}
    for name, key in (("hires", "tissue_hires_scalef"), ("lowres", "tissue_lowres_scalef")):
        if name in images:
            sf[key] = float(images[name]["scale"])
    if scalefactors:
        sf.update({k: float(v) for k, v in scalefactors.items()})
    adata.uns["spatial"] = {library_id: {"scalefactors": sf, "metadata": {}}}
    return adata


def no_spots_error(path: Path, detail: str) -> InputError:
    """The error for a section with no spots left under tissue."""
    return InputError(f"no spots left under tissue ({detail})", path)


def median_nn_distance(xy: np.ndarray) -> float | None:
    """Median distance from each spot to its nearest neighbour, or ``None`` for < 2 spots."""
    if len(xy) < 2:
        return None
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xy).query(xy, k=2)
    d = dist[:, 1]
    d = d[d > 0]
    return float(np.median(d)) if d.size else None
