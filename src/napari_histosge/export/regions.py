"""Regions of a section: which spots or grid cells lie in drawn polygons, and their expression tables.

A region is a named polygon (holes allowed) in full-resolution image pixels, the frame of
``obsm["spatial"]``: drawn in the plugin, or read from a GeoJSON file (QuPath exports its
annotations in that frame). :func:`assign_regions` places every position in at most one
region; :func:`region_tables` gives the selected positions' values and, per region and gene,
the mean inside against the mean of the rest of the section; :func:`write_region_outputs`
writes them as CSV files beside the regions' GeoJSON, so that a drawing can be replayed on
the command line (``histosge region``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.preprocess import normalize_log1p, resolve_gene
from ..outputs import write_csv, write_text
from ..slide.mask import geojson_polygons
from .raster import is_prediction

__all__ = [
    "OUTSIDE", "UNITS", "Region", "assign_regions", "expression_values", "read_regions", "region_tables",
    "regions_geojson", "resolve_genes", "summary_path", "write_region_outputs",
]

#: The ``region`` of a position inside no region.
OUTSIDE = ""
#: What the tables' values are.
UNITS = "log1p(counts per 1e4)"


@dataclass
class Region:
    """A named polygon in full-resolution pixels ``(x, y)``: its exterior, then any holes."""

    name: str
    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exterior = _ring(self.exterior, self.name)
        self.holes = [_ring(h, self.name) for h in self.holes]

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Whether each position ``(x, y)`` lies inside the exterior and outside every hole."""
        from skimage.measure import points_in_poly

        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        inside = points_in_poly(xy, self.exterior)
        for hole in self.holes:
            inside &= ~points_in_poly(xy, hole)
        return inside


def _ring(points: Any, name: str) -> np.ndarray:
    try:
        xy = np.asarray(points, dtype=np.float64)[:, :2]
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"region {name!r}: a ring is not a list of (x, y) points ({exc})") from exc
    if len(xy) < 3 or not np.all(np.isfinite(xy)):
        raise InputError(f"region {name!r}: a ring needs at least 3 finite points, got {len(xy)}")
    return xy


def _feature_name(feature: dict[str, Any], default: str) -> str:
    """A feature's name: ``properties.name``, else QuPath's classification name, else ``default``."""
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        return default
    name = props.get("name")
    classification = props.get("classification")
    if not name and isinstance(classification, dict):
        name = classification.get("name")
    return str(name).strip() if name and str(name).strip() else default


def read_regions(path: str | os.PathLike) -> list[Region]:
    """The named polygons of a GeoJSON file, in full-resolution pixels of the section.

    Each Feature is one region, named by its ``properties["name"]`` (or QuPath's
    ``classification.name``), else ``region 1``, ``region 2``, ... in file order; a
    MultiPolygon feature is one region of several parts (``name``, ``name #2``, ...).

    Raises
    ------
    InputError
        When the file is not JSON or holds no polygon, or a ring is not a polygon.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the regions' GeoJSON file: {exc}", path) from exc
    features = data.get("features") if isinstance(data, dict) and data.get("type") == "FeatureCollection" else [data]
    regions: list[Region] = []
    for feature in features or []:
        if not isinstance(feature, dict):
            continue
        name = _feature_name(feature, f"region {len(regions) + 1}")
        for k, rings in enumerate(p for p in geojson_polygons(feature) if p):
            if not isinstance(rings, list):  # e.g. "coordinates": 5
                raise InputError(f"region {name!r}: a polygon's coordinates are not a list of rings", path)
            try:
                regions.append(Region(name if k == 0 else f"{name} #{k + 1}", rings[0], list(rings[1:])))
            except InputError as exc:
                raise InputError(str(exc), path) from None
    if not regions:
        raise InputError("the GeoJSON holds no Polygon or MultiPolygon geometry", path)
    return regions


def regions_geojson(regions: Sequence[Region]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of ``regions`` (closed rings, names in ``properties``)."""
    def ring(xy: np.ndarray) -> list[list[float]]:
        points = [[float(x), float(y)] for x, y in xy]
        return points + points[:1] if points[0] != points[-1] else points

    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": r.name, "objectType": "annotation"},
         "geometry": {"type": "Polygon", "coordinates": [ring(r.exterior)] + [ring(h) for h in r.holes]}}
        for r in regions]}


def assign_regions(xy: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
    """The region name of each position ``(x, y)``, :data:`OUTSIDE` for none.

    Where regions overlap, a position belongs to the first of them that holds it.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    names = np.full(len(xy), OUTSIDE, dtype=object)
    free = np.ones(len(xy), dtype=bool)
    for region in regions:
        hit = free & region.contains(xy)
        names[hit] = region.name
        free &= ~hit
    return names


def resolve_genes(adata, genes: Sequence[str] | None) -> list[str]:
    """The gene names ``genes`` (names or gene ids) stand for, in order; every gene when ``None``.

    Raises
    ------
    InputError
        When a gene is not in ``adata`` (naming it).
    """
    if genes is None:
        return list(map(str, adata.var_names))
    source = (adata.uns.get("histosge", {}) or {}).get("source")
    wanted = []
    for name in genes:
        gene = resolve_gene(adata, name)
        if gene is None:
            raise InputError(f"gene {name!r} is not in the data ({adata.n_vars} genes)", source)
        wanted.append(gene)
    return list(dict.fromkeys(wanted))


def expression_values(adata, genes: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-position values of ``genes`` (all when ``None``) on the :data:`UNITS` scale.

    Predictions are on that scale already; measured counts are normalised over all their
    genes first (a spot's depth is its total over every gene), as the plugin shows them.

    Raises
    ------
    InputError
        When a gene is not in ``adata`` (naming it).
    """
    wanted = resolve_genes(adata, genes)
    scaled = adata if is_prediction(adata) else normalize_log1p(adata)
    matrix = scaled[:, wanted].X
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    return pd.DataFrame(np.asarray(matrix, dtype=np.float64), index=np.asarray(adata.obs_names, dtype=str),
                        columns=wanted)


def region_tables(adata, regions: Sequence[Region], genes: Sequence[str] | None = None,
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The selected positions' values, and per region and gene the mean inside and outside.

    Parameters
    ----------
    adata
        A section (raw counts) or predictions, with ``obsm["spatial"]`` in full-res pixels.
    regions
        The regions, in the same frame.
    genes
        The genes to report (names or gene ids); every gene when ``None``.

    Returns
    -------
    positions
        One row per position inside a region (index ``id``): ``region``, ``x``, ``y``, then
        one column per gene.
    summary
        One row per region and gene: ``region``, ``gene``, ``n_positions``, ``mean``,
        ``mean_outside`` (every position in no region) and ``difference``; genes ordered by
        ``difference``, highest first, within each region.

    Raises
    ------
    InputError
        When no position lies inside any region (the coordinates are likely in another frame).
    """
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    names = assign_regions(xy, regions)
    selected = names != OUTSIDE
    if not selected.any():
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        raise InputError(f"no position lies inside the {len(regions)} region(s); the regions must be in "
                         f"full-resolution pixels of the data, whose positions span x {lo[0]:.0f}-{hi[0]:.0f}, "
                         f"y {lo[1]:.0f}-{hi[1]:.0f}")
    values = expression_values(adata, genes)
    positions = pd.DataFrame({"region": names[selected], "x": xy[selected, 0], "y": xy[selected, 1]},
                             index=pd.Index(values.index[selected], name="id"))
    positions = pd.concat([positions, values[selected]], axis=1).rename_axis("id")
    outside = values[~selected].mean(axis=0) if (~selected).any() else pd.Series(np.nan, index=values.columns)
    rows = []
    for region in dict.fromkeys(names[selected]):
        inside = values[names == region]
        table = pd.DataFrame({"region": region, "gene": values.columns, "n_positions": len(inside),
                              "mean": inside.mean(axis=0).to_numpy(), "mean_outside": outside.to_numpy()})
        table["difference"] = table["mean"] - table["mean_outside"]
        rows.append(table.sort_values("difference", ascending=False, kind="stable"))
    return positions, pd.concat(rows, ignore_index=True)


def summary_path(out: str | os.PathLike) -> Path:
    """Where the summary goes beside the positions table ``out``: ``<stem>_summary.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_summary.csv")


def write_region_outputs(out: str | os.PathLike, positions: pd.DataFrame, summary: pd.DataFrame, *,
                         regions: Sequence[Region] | None = None, summary_out: str | os.PathLike | None = None,
                         ) -> list[Path]:
    """Write the positions table to ``out``, the summary beside it, and the regions as GeoJSON.

    Each file is written atomically (an earlier file stays whole if a write fails). The
    GeoJSON (``out`` with the ``.geojson`` suffix) holds the regions the tables came from,
    in full-resolution pixels, ready for ``histosge region DATA --regions``.
    """
    out = Path(out)
    written = [write_csv(out, positions, what="region table", float_format="%.6g"),
               write_csv(summary_path(out) if summary_out is None else summary_out, summary, index=False,
                         float_format="%.6g", what="region summary")]
    if regions is not None:
        written.append(write_text(out.with_suffix(".geojson"), json.dumps(regions_geojson(regions)),
                                  what="regions (GeoJSON)"))
    return written
