"""Tests for the spot lattice and N-fold super-resolution positions."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from napari_histosge.errors import InputError
from napari_histosge.prediction.grid import SuperResolutionGrid, snap_to_lattice, superresolution_positions
from napari_histosge.prediction.lattice import Lattice, classify_basis, estimate_lattice, reduce_basis

SQRT3 = np.sqrt(3.0)


def _rot(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def visium_like(rows: int = 20, cols: int = 40, spacing: float = 137.0, deg: float = 3.0) -> ad.AnnData:
    """A hexagonal Visium-style section: array_col steps by 2 in a row, rows offset by 1."""
    idx = np.array([(c, r) for r in range(rows) for c in range(cols) if (c + r) % 2 == 0], float)
    A = _rot(deg) @ np.diag([spacing / 2, spacing * SQRT3 / 2])
    xy = idx @ A.T + np.array([1500.0, 2500.0])
    return _adata(idx, xy, "hexagonal")


def st_like(n: int = 15, spacing: float = 290.0, deg: float = -1.0) -> ad.AnnData:
    """A square ST v1-style section (array_col = x, array_row = y)."""
    idx = np.array([(x, y) for y in range(1, n + 1) for x in range(1, n + 1)], float)
    xy = idx @ (_rot(deg) * spacing).T + np.array([-300.0, -250.0])
    return _adata(idx, xy, "square")


def _adata(idx: np.ndarray, xy: np.ndarray, lattice: str | None) -> ad.AnnData:
    obs = pd.DataFrame(
        {"array_col": idx[:, 0].astype(int), "array_row": idx[:, 1].astype(int)},
        index=[f"s{i}" for i in range(len(idx))],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.asarray(xy, float)
    adata.uns["histosge"] = {"platform": "unknown", "lattice": lattice, "source": "synthetic"}
    return adata


def _is_lattice_point(lattice: Lattice, pts: np.ndarray, tol: float = 1e-6) -> bool:
    coef = np.linalg.solve(lattice.basis, (np.atleast_2d(pts) - lattice.origin).T)
    return bool(np.all(np.abs(coef - np.rint(coef)) < tol))


# ----------------------------------------------------------------------------- Lattice basics


def test_reduce_basis_and_spacing() -> None:
    b = np.column_stack([[10.0, 0.0], [37.0, 3.0]])  # same lattice as (10,0),(-3,3) -> shortest 3*sqrt2
    red = reduce_basis(b)
    assert np.isclose(abs(np.linalg.det(red)), abs(np.linalg.det(b)))
    assert np.isclose(np.linalg.norm(red[:, 0]), 3 * np.sqrt(2))
    assert np.allclose(np.linalg.solve(b, red), np.rint(np.linalg.solve(b, red)))
    assert Lattice(b, [0, 0], "other").spacing == pytest.approx(3 * np.sqrt(2))


def test_classify_basis() -> None:
    assert classify_basis(np.column_stack([[1, 0], [0.5, SQRT3 / 2]])) == "hexagonal"
    assert classify_basis(np.column_stack([[1, 0], [0, 1]])) == "square"
    assert classify_basis(np.column_stack([[1, 0], [0, 1.5]])) == "other"


def test_to_dict_roundtrip_and_bad_dicts() -> None:
    lat = Lattice(np.array([[2.0, 1.0], [0.0, 1.5]]), np.array([3.0, 4.0]), "other")
    back = Lattice.from_dict(lat.to_dict())
    assert np.array_equal(back.basis, lat.basis) and np.array_equal(back.origin, lat.origin)
    assert back.kind == "other"
    with pytest.raises(InputError, match="malformed lattice"):
        Lattice.from_dict({"basis": [[1, 0], [0, 1]]})
    with pytest.raises(InputError, match="unknown lattice kind"):
        Lattice.from_dict({"basis": [[1, 0], [0, 1]], "origin": [0, 0], "kind": "triangle"})
    with pytest.raises(InputError, match="non-degenerate"):
        Lattice(np.array([[1.0, 2.0], [1.0, 2.0]]), np.zeros(2), "other")


# ----------------------------------------------------------------------------- estimation


def test_estimate_from_visium_indices_robust_to_outliers() -> None:
    adata = visium_like()
    bad = [5, 100, 200]
    adata.obsm["spatial"][bad] += np.array([45.0, -30.0])  # a few mis-placed spots
    lat = estimate_lattice(adata)
    assert lat.kind == "hexagonal"
    assert lat.spacing == pytest.approx(137.0, rel=1e-9)
    good = np.setdiff1d(np.arange(adata.n_obs), bad)
    assert _is_lattice_point(lat, adata.obsm["spatial"][good])


def test_estimate_from_st_indices() -> None:
    lat = estimate_lattice(st_like())
    assert lat.kind == "square"
    assert lat.spacing == pytest.approx(290.0, rel=1e-9)
    assert lat.cell_area == pytest.approx(290.0**2, rel=1e-9)


@pytest.mark.parametrize("make,kind,spacing", [(visium_like, "hexagonal", 137.0), (st_like, "square", 290.0)])
def test_estimate_from_positions_only(make, kind, spacing) -> None:
    adata = make()
    rng = np.random.default_rng(0)
    xy = adata.obsm["spatial"] + rng.normal(scale=0.01 * spacing, size=adata.obsm["spatial"].shape)
    lat = estimate_lattice(xy)  # a bare array: no indices, positions only
    assert lat.kind == kind
    assert lat.spacing == pytest.approx(spacing, rel=0.01)
    # unknown lattice in uns -> also estimated from positions
    adata.uns["histosge"]["lattice"] = None
    assert estimate_lattice(adata).spacing == pytest.approx(spacing, rel=1e-6)


def test_estimate_other_lattice_and_sparse_sampling() -> None:
    idx = np.array([(i, j) for i in range(12) for j in range(9)], float)
    basis = np.column_stack([[40.0, 0.0], [10.0, 70.0]])
    xy = idx @ basis.T
    keep = np.random.default_rng(1).random(len(xy)) > 0.3  # tissue with holes
    lat = estimate_lattice(xy[keep])
    assert lat.kind == "other"
    assert lat.cell_area == pytest.approx(abs(np.linalg.det(basis)), rel=1e-9)
    assert _is_lattice_point(lat, xy)


def test_hexagonal_declared_but_indices_not_visium_falls_back() -> None:
    adata = st_like()  # square indices with both parities
    adata.uns["histosge"]["lattice"] = "hexagonal"
    with pytest.warns(UserWarning, match="not on a hexagonal"):
        lat = estimate_lattice(adata)
    assert lat.kind == "square"


@pytest.mark.parametrize(
    "positions,match",
    [
        (np.zeros((2, 2)), "at least 3 spots"),
        (np.column_stack([np.arange(10.0), 2 * np.arange(10.0)]), "single line"),
        (np.array([[0.0, 0.0], [1.0, np.nan], [2.0, 0.0]]), "NaN"),
        (np.zeros((5, 3)), r"\(n, 2\)"),
        (np.ones((5, 2)), "identical"),
    ],
)
def test_estimate_bad_positions(positions, match) -> None:
    with pytest.raises(InputError, match=match):
        estimate_lattice(positions)


def test_estimate_without_spatial() -> None:
    adata = visium_like()
    del adata.obsm["spatial"]
    with pytest.raises(InputError, match="synthetic.*no obsm"):
        estimate_lattice(adata)


# ----------------------------------------------------------------------------- super-resolution


def _check_tiling(adata: ad.AnnData, fold: int) -> SuperResolutionGrid:
    coarse = estimate_lattice(adata)
    grid = superresolution_positions(adata, fold)
    xy = adata.obsm["spatial"]
    fine = grid.lattice
    assert grid.fold == fold
    assert grid.positions.shape == (fold * adata.n_obs, 2)
    assert np.array_equal(grid.parent, np.repeat(np.arange(adata.n_obs), fold))
    assert np.allclose(grid.positions[::fold], xy)  # each spot's own centre comes first
    assert fine.cell_area == pytest.approx(coarse.cell_area / fold, rel=1e-9)  # N-fold density
    assert _is_lattice_point(fine, grid.positions)
    assert _is_lattice_point(coarse, np.array([0.0, 0.0]) + fine.origin)
    # no duplicates: nearest neighbour never closer than the fine spacing
    dist, _ = cKDTree(grid.positions).query(grid.positions, k=2)
    assert dist[:, 1].min() >= fine.spacing * (1 - 1e-9)
    # each spot's positions lie in its Voronoi cell (nearest measured spot, up to ties)
    d_parent = np.linalg.norm(grid.positions - xy[grid.parent], axis=1)
    d_nearest, _ = cKDTree(xy).query(grid.positions)
    assert np.all(d_parent <= d_nearest + 1e-6 * coarse.spacing)
    # no gaps: every fine lattice point well inside the tissue is produced
    lo, hi = xy.min(axis=0) + 2 * coarse.spacing, xy.max(axis=0) - 2 * coarse.spacing
    ij = np.array(np.meshgrid(np.arange(-200, 201), np.arange(-200, 201))).reshape(2, -1).T
    pts = fine.origin + ij @ fine.basis.T
    inner = pts[np.all((pts > lo) & (pts < hi), axis=1)]
    assert len(inner) > 0
    gap, _ = cKDTree(grid.positions).query(inner)
    assert gap.max() < 1e-6 * coarse.spacing
    return grid


@pytest.mark.parametrize("fold", range(2, 17))
def test_superresolution_tiles_hexagonal(fold: int) -> None:
    _check_tiling(visium_like(rows=14, cols=28), fold)


@pytest.mark.parametrize("fold", range(2, 17))
def test_superresolution_tiles_square(fold: int) -> None:
    _check_tiling(st_like(n=11), fold)


@pytest.mark.parametrize(
    "make,fold,kind,ratio",
    [
        (visium_like, 4, "hexagonal", 1 / 2),  # halve both vectors
        (visium_like, 3, "hexagonal", 1 / SQRT3),  # rotated hexagonal
        (visium_like, 9, "hexagonal", 1 / 3),
        (st_like, 4, "square", 1 / 2),  # 2 x 2
        (st_like, 2, "square", 1 / np.sqrt(2)),  # checkerboard
        (st_like, 5, "square", 1 / np.sqrt(5)),
    ],
)
def test_superlattice_shapes(make, fold, kind, ratio) -> None:
    adata = make()
    grid = superresolution_positions(adata, fold)
    assert grid.lattice.kind == kind
    assert grid.lattice.spacing == pytest.approx(estimate_lattice(adata).spacing * ratio, rel=1e-9)


def test_superresolution_from_array_and_given_lattice() -> None:
    adata = st_like(n=6)
    lat = estimate_lattice(adata)
    a = superresolution_positions(adata.obsm["spatial"], 4)
    b = superresolution_positions(adata.obsm["spatial"][:1], 4, lattice=lat)  # one spot is enough
    assert a.positions.shape == (144, 2) and b.positions.shape == (4, 2)
    assert np.allclose(np.sort(np.linalg.norm(b.positions - b.positions[0], axis=1)), [0, 145, 145, 145 * np.sqrt(2)])


def test_superresolution_anchor_lattice_snaps_jittered_spots() -> None:
    adata = st_like()
    lat = estimate_lattice(adata)
    jitter = np.random.default_rng(3).uniform(-0.2, 0.2, size=adata.obsm["spatial"].shape) * 290
    adata.obsm["spatial"] = adata.obsm["spatial"] + jitter
    grid = superresolution_positions(adata, 4, lattice=lat, anchor="lattice")
    assert _is_lattice_point(grid.lattice, grid.positions)
    assert np.allclose(grid.positions[::4], snap_to_lattice(adata.obsm["spatial"], lat))
    dist, _ = cKDTree(grid.positions).query(grid.positions, k=2)
    assert dist[:, 1].min() == pytest.approx(145.0)


@pytest.mark.parametrize("fold", [0, 1, 17, 2.5, True, "4"])
def test_superresolution_bad_fold(fold) -> None:
    with pytest.raises(InputError, match="fold must be an integer from 2 to 16"):
        superresolution_positions(st_like(n=4), fold)


def test_superresolution_bad_anchor() -> None:
    with pytest.raises(InputError, match="anchor must be"):
        superresolution_positions(st_like(n=4), 4, anchor="centre")


# ----------------------------------------------------------------------------- real data


def _load_her2st(section: Path) -> ad.AnnData:
    sel = pd.read_csv(section / f"{section.name}_selection.tsv", sep="\t")
    adata = _adata(sel[["x", "y"]].to_numpy(float), sel[["pixel_x", "pixel_y"]].to_numpy(float), "square")
    adata.obs_names = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"], strict=True)]
    return adata


def _load_visium_positions(section: Path) -> ad.AnnData:
    pos = pd.read_csv(
        section / "spatial" / "tissue_positions_list.csv",
        header=None,
        names=["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"],
    )
    pos = pos[pos["in_tissue"] == 1]
    adata = _adata(pos[["array_col", "array_row"]].to_numpy(float), pos[["pxl_col", "pxl_row"]].to_numpy(float),
                   "hexagonal")
    adata.obs_names = pos["barcode"].to_numpy()
    return adata


def test_real_her2st_b4_square_lattice(her2st_b4: Path) -> None:
    adata = _load_her2st(her2st_b4)
    lat = estimate_lattice(adata)
    assert lat.kind == "square"
    assert 250 < lat.spacing < 320  # ~290 px per array step on this slide
    free = estimate_lattice(adata.obsm["spatial"])  # positions only agree with the index fit
    assert free.kind == "square" and free.spacing == pytest.approx(lat.spacing, rel=0.01)
    grid = superresolution_positions(adata, 4)
    assert grid.lattice.kind == "square" and grid.lattice.spacing == pytest.approx(lat.spacing / 2, rel=0.02)
    assert len(grid.positions) == 4 * adata.n_obs
    snapped = superresolution_positions(adata, 4, anchor="lattice")
    dist, _ = cKDTree(snapped.positions).query(snapped.positions, k=2)
    assert dist[:, 1].min() > 0.95 * grid.lattice.spacing


def test_real_dlpfc_151675_hexagonal_lattice(dlpfc_151675: Path) -> None:
    adata = _load_visium_positions(dlpfc_151675)
    lat = estimate_lattice(adata)
    assert lat.kind == "hexagonal"
    assert 130 < lat.spacing < 145  # ~138 px; spots are 96 px wide, so they don't touch
    free = estimate_lattice(adata.obsm["spatial"])
    assert free.kind == "hexagonal" and free.spacing == pytest.approx(lat.spacing, rel=0.005)
    grid = superresolution_positions(adata, 4)
    assert grid.lattice.kind == "hexagonal"
    dist, _ = cKDTree(grid.positions).query(grid.positions, k=2)
    # Visium centres are exact to pixel rounding, so the fine lattice is nearly perfect
    assert 0.95 * grid.lattice.spacing < dist[:, 1].min()
    assert dist[:, 1].max() < 1.05 * grid.lattice.spacing
