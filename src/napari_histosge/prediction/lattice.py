"""The spot lattice of a section, measured from the spot positions.

Spots of Visium (hexagonal) and ST v1 (square) sit on a 2-D lattice. We measure that
lattice in full-resolution pixels (basis, origin, kind); :mod:`.superres_grid` builds the
N-fold denser positions from it. Nothing is hard-coded in pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

KINDS = ("hexagonal", "square", "other")

# Lattice bases in (array_col, array_row) index space; columns are basis vectors.
# Visium: array_col steps by 2 within a row and rows are offset by 1, so spots are the
# sublattice {(col, row): col + row even}.
_INDEX_BASIS = {
    "hexagonal": np.array([[2.0, 1.0], [0.0, 1.0]]),
    "square": np.eye(2),
}
# Relative tolerances for calling a reduced basis hexagonal or square.
_LEN_TOL, _ANGLE_TOL_DEG = 0.06, 6.0


@dataclass
class Lattice:
    """A 2-D point lattice in full-resolution pixels.

    Attributes
    ----------
    basis
        ``(2, 2)`` float array whose *columns* are two primitive lattice vectors
        ``(x, y)`` in full-resolution pixels (kept Lagrange-reduced: the first column is
        a shortest lattice vector).
    origin
        ``(2,)`` a lattice point in full-resolution pixels.
    kind
        ``"hexagonal"``, ``"square"`` or ``"other"``.
    """

    basis: np.ndarray
    origin: np.ndarray
    kind: str

    def __post_init__(self) -> None:
        self.basis = np.asarray(self.basis, dtype=float).reshape(2, 2)
        self.origin = np.asarray(self.origin, dtype=float).reshape(2)
        if self.kind not in KINDS:
            raise InputError(f"unknown lattice kind {self.kind!r}; expected one of {KINDS}")
        if not np.all(np.isfinite(self.basis)) or abs(np.linalg.det(self.basis)) < 1e-12:
            raise InputError(f"lattice basis must be finite and non-degenerate, got {self.basis.tolist()}")

    @property
    def spacing(self) -> float:
        """Centre-to-centre distance of nearest spots (length of a shortest lattice vector)."""
        return float(np.linalg.norm(reduce_basis(self.basis)[:, 0]))

    @property
    def cell_area(self) -> float:
        """Area of one lattice cell in full-res px² (one spot per cell)."""
        return float(abs(np.linalg.det(self.basis)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for ``uns`` and checkpoints)."""
        return {"basis": self.basis.tolist(), "origin": self.origin.tolist(), "kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lattice:
        """Inverse of :meth:`to_dict`; raises :class:`InputError` on a malformed dict."""
        try:
            return cls(basis=np.asarray(data["basis"], float), origin=np.asarray(data["origin"], float),
                       kind=str(data["kind"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"malformed lattice description {data!r}: {exc}") from None


# ----------------------------------------------------------------------------- basics


def reduce_basis(basis: np.ndarray) -> np.ndarray:
    """Lagrange-Gauss reduce a 2-D lattice basis (columns); the first column is shortest.

    Parameters
    ----------
    basis
        ``(2, 2)`` array whose columns generate the lattice.

    Returns
    -------
    numpy.ndarray
        A basis of the same lattice with ``|b1| <= |b2|`` and ``|b1·b2| <= |b1|²/2``.
    """
    b1, b2 = np.array(basis[:, 0], float), np.array(basis[:, 1], float)
    if b1 @ b1 > b2 @ b2:
        b1, b2 = b2, b1
    for _ in range(100):  # converges in a few steps; the cap guards against NaNs
        mu = round(float(b1 @ b2) / float(b1 @ b1))
        b2 = b2 - mu * b1
        if b2 @ b2 >= b1 @ b1 * (1 - 1e-12):
            break
        b1, b2 = b2, b1
    # Canonical signs (a lattice basis is only defined up to ±): point into x > 0.
    b1, b2 = (v if (v[0], v[1]) > (0.0, 0.0) else -v for v in (b1, b2))
    return np.column_stack([b1, b2])


def classify_basis(basis: np.ndarray) -> str:
    """Call a lattice ``"hexagonal"``, ``"square"`` or ``"other"`` from its basis."""
    b = reduce_basis(basis)
    l1, l2 = np.linalg.norm(b, axis=0)
    if l2 > l1 * (1 + _LEN_TOL):
        return "other"
    cos = abs(b[:, 0] @ b[:, 1]) / (l1 * l2)
    angle = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))  # in [0, 90]
    if abs(angle - 60.0) <= _ANGLE_TOL_DEG:
        return "hexagonal"
    if abs(angle - 90.0) <= _ANGLE_TOL_DEG:
        return "square"
    return "other"


def make_lattice(basis: np.ndarray, origin: np.ndarray, kind: str | None = None) -> Lattice:
    """A :class:`Lattice` from any basis: reduced, and classified unless ``kind`` is given."""
    reduced = reduce_basis(basis)
    return Lattice(basis=reduced, origin=origin, kind=kind or classify_basis(reduced))


def check_positions(positions: Any, what: str = "spot positions") -> np.ndarray:
    """``positions`` as a float ``(n, 2)`` array of finite ``(x, y)``; :class:`InputError` otherwise."""
    pts = np.asarray(positions, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"{what} must be an (n, 2) array of (x, y), got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{what} contain NaN or infinite values")
    return pts


def _robust_affine(index: np.ndarray, pts: np.ndarray,
                   spacing_hint: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``pts ≈ index @ A.T + t`` by least squares, dropping gross outliers.

    Returns ``(A, t, inlier_mask)``. Residuals above ``max(3 * robust sigma, 1% of the
    spacing)`` are outliers (mis-placed spots), refitted until the inlier set is stable.
    """
    design = np.column_stack([index, np.ones(len(index))])
    mask = np.ones(len(index), bool)
    A = t = None
    for _ in range(10):
        if mask.sum() < 3 or np.linalg.matrix_rank(design[mask]) < 3:
            raise InputError("too few spots off a single line to fit the spot lattice")
        coef, *_ = np.linalg.lstsq(design[mask], pts[mask], rcond=None)
        A, t = coef[:2].T, coef[2]
        resid = np.linalg.norm(design @ coef - pts, axis=1)
        spacing = spacing_hint or float(np.linalg.norm(reduce_basis(A)[:, 0]))
        sigma = 1.4826 * float(np.median(resid[mask]))
        new_mask = resid <= max(3.0 * sigma, 0.01 * spacing)
        if np.array_equal(new_mask, mask):
            break
        mask = new_mask
    assert A is not None and t is not None  # the loop above ran at least once
    return A, t, mask


def _medoid_index(pts: np.ndarray) -> int:
    """Index of the point nearest the median position (a central, real spot)."""
    return int(np.argmin(np.linalg.norm(pts - np.median(pts, axis=0), axis=1)))


# ----------------------------------------------------------------------------- estimation


def _lattice_from_indices(pts: np.ndarray, index: np.ndarray, kind: str) -> Lattice:
    A, t, mask = _robust_affine(index, pts)
    inliers = np.flatnonzero(mask)
    ref = inliers[_medoid_index(pts[inliers])]
    origin = A @ index[ref] + t  # a real spot's index keeps the origin on the sublattice
    return make_lattice(A @ _INDEX_BASIS[kind], origin, kind=kind)


def _direction_clusters(vecs: np.ndarray, min_support: int) -> list[np.ndarray]:
    """Group neighbour vectors by direction (``v`` and ``-v`` together), shortest first."""
    lengths = np.linalg.norm(vecs, axis=1)
    unassigned = np.ones(len(vecs), bool)
    means: list[np.ndarray] = []
    while unassigned.any():
        seed_at = np.flatnonzero(unassigned)[np.argmin(lengths[unassigned])]
        rep = vecs[seed_at]
        member = np.zeros(len(vecs), bool)
        # The shortest vector is often a jittered pair: re-centre the window on the
        # members' median until it settles on the true neighbour vector.
        for _ in range(20):
            flipped = np.where((vecs @ rep < 0)[:, None], -vecs, vecs)
            new = unassigned & (np.linalg.norm(flipped - rep, axis=1) <= 0.15 * np.linalg.norm(rep))
            new[seed_at] = True  # the seed always leaves the pool, so the loop terminates
            rep = np.median(flipped[new], axis=0)
            if np.array_equal(new, member):
                break
            member = new
        unassigned &= ~member
        if member.sum() >= min_support:
            means.append(rep)
    return sorted(means, key=lambda v: float(np.linalg.norm(v)))


def _lattice_from_positions(pts: np.ndarray) -> Lattice:
    n = len(pts)
    if n < 3:
        raise InputError(f"need at least 3 spots to estimate the spot lattice, got {n}")
    from scipy.spatial import cKDTree  # here: the command line's parser imports this module (--fold bounds)

    tree = cKDTree(pts)
    k = min(n, 13)
    dist, nbr = tree.query(pts, k=k)
    vecs = (pts[nbr[:, 1:]] - pts[:, None, :]).reshape(-1, 2)
    lengths = dist[:, 1:].ravel()
    positive = dist[:, 1:][dist[:, 1:] > 0]
    if positive.size == 0:
        raise InputError("all spot positions are identical; cannot estimate the spot lattice")
    nearest = np.where(dist[:, 1] > 0, dist[:, 1], np.nan)
    d0 = float(np.nanmedian(nearest)) if np.isfinite(nearest).any() else float(positive.min())
    keep = (lengths >= 0.5 * d0) & (lengths <= 4.0 * d0)
    clusters = _direction_clusters(vecs[keep], min_support=max(2, int(0.05 * n)))
    if not clusters:
        raise InputError("could not find a repeating spot spacing in the positions")
    v1 = clusters[0]
    v2 = next((v for v in clusters[1:]
               if abs(v1[0] * v[1] - v1[1] * v[0]) / (np.linalg.norm(v1) * np.linalg.norm(v)) > 0.2), None)
    if v2 is None:
        raise InputError("spots lie on a single line; cannot estimate a 2-D spot lattice")
    basis = reduce_basis(np.column_stack([v1, v2]))

    # Refine: index spots against the rough basis and fit an affine map, growing the
    # fitted region so small basis errors never mis-round far-away indices.
    ref = _medoid_index(pts)
    origin = pts[ref]
    spacing = float(np.linalg.norm(basis[:, 0]))
    far = float(np.linalg.norm(pts - origin, axis=1).max())
    radius = 8.0 * spacing
    while True:
        sel = np.linalg.norm(pts - origin, axis=1) <= radius
        index = np.rint(np.linalg.solve(basis, (pts[sel] - origin).T).T)
        try:
            A, t, _ = _robust_affine(index, pts[sel], spacing_hint=spacing)
        except InputError:
            if radius >= far:
                raise
        else:
            basis, origin = A, t
        if radius >= far:
            break
        radius *= 2.0
    return make_lattice(basis, origin)


def estimate_lattice(adata_or_positions: Any) -> Lattice:
    """Measure the spot lattice of a section in full-resolution pixels.

    Parameters
    ----------
    adata_or_positions
        A spot AnnData (see ``docs/architecture.md``) or an ``(n, 2)`` array of ``(x, y)``.
        When ``obs`` has ``array_row``/``array_col`` and ``uns["histosge"]["lattice"]`` is
        ``"hexagonal"`` (Visium) or ``"square"`` (ST v1), the pixel positions are fitted
        as an affine map of the array indices (robust to a few mis-placed spots) and the
        index-space basis is mapped through it. Otherwise the lattice is estimated from
        the positions alone (nearest-neighbour vectors, reduced to a primitive basis).

    Returns
    -------
    Lattice
        Reduced basis, an origin on a measured spot's lattice site, and the kind.

    Raises
    ------
    InputError
        Too few spots, spots on a single line, or NaN positions.
    """
    if isinstance(adata_or_positions, np.ndarray) or not hasattr(adata_or_positions, "obsm"):
        return _lattice_from_positions(check_positions(adata_or_positions))
    adata = adata_or_positions
    source = (adata.uns.get("histosge") or {}).get("source")
    if "spatial" not in adata.obsm:
        raise InputError('the spot table has no obsm["spatial"] positions', source)
    pts = check_positions(adata.obsm["spatial"])
    kind = (adata.uns.get("histosge") or {}).get("lattice")
    if kind in _INDEX_BASIS and {"array_row", "array_col"} <= set(adata.obs.columns):
        index = adata.obs[["array_col", "array_row"]].to_numpy(dtype=float)
        parity = (index.sum(axis=1) % 2).astype(int)
        if kind == "hexagonal" and min(np.mean(parity == 0), np.mean(parity == 1)) > 0.02:
            warnings.warn(
                f"{source or 'spots'}: array indices are not on a hexagonal (Visium) sublattice; "
                "estimating the lattice from positions instead",
                stacklevel=2,
            )
        elif len(pts) >= 3:
            return _lattice_from_indices(pts, index, kind)
    return _lattice_from_positions(pts)
