"""The pooled super-resolution protocol: spots summed into square bins, models trained on them, scored at the spots.

The bins are squares of side ``sqrt(factor)`` spot spacings in the frame of the spot
lattice (its first basis vector is the x axis of the bins), so each holds about
``factor`` spots. A bin's counts are its spots' sums and its position their mean; its
footprint is the square. A model trained on the bins alone and predicting every real
spot is scored against the real spots; copying each bin's value to its spots is the
baseline of no super-resolution at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..models.subspot.geometry import FOOTPRINT_KEY
from ..prediction.lattice import estimate_lattice


@dataclass
class PooledSection:
    """Bins of a section and which bin each spot went into.

    Attributes
    ----------
    bins
        Spot AnnData of the bins: summed raw counts, ``obsm["spatial"]`` the members' mean,
        ``obsm["footprint_xy"]`` the centre of the square and ``uns["histosge"]["footprint"]``
        its shape (``shape``, ``size_px``, ``angle``).
    spot_bin
        ``(n_spots,)`` row of ``bins`` each spot of the section is in.
    side_px
        Side of a bin, full-res px.
    """

    bins: Any  # anndata.AnnData (not imported here: the pipeline loads it where it reads)
    spot_bin: np.ndarray
    side_px: float

    def bin_sizes(self) -> np.ndarray:
        """Spots per bin."""
        return np.bincount(self.spot_bin, minlength=self.bins.n_obs)


def pool_spots(adata, factor: float) -> PooledSection:
    """Sum ``adata``'s spots into square bins of about ``factor`` spots each.

    Raises
    ------
    InputError
        If ``factor`` is below 2 or the section has too few spots for its lattice.
    """
    import anndata as ad

    if not (np.isfinite(factor) and factor >= 2):
        raise InputError(f"a pooling factor must be at least 2 spots per bin, got {factor!r}")
    lattice = estimate_lattice(adata)
    spacing = lattice.spacing
    first = lattice.basis[:, 0]
    angle = float(np.arctan2(first[1], first[0]))
    to_frame = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    xy = np.asarray(adata.obsm["spatial"], np.float64)
    side = float(np.sqrt(factor) * spacing)
    # Bin edges half a spacing before a lattice point: a 2 x 2 bin holds 4 points of a square lattice.
    local = (xy - lattice.origin) @ to_frame.T + spacing / 2
    keys, spot_bin = np.unique(np.floor(local / side).astype(np.int64), axis=0, return_inverse=True)
    spot_bin = np.asarray(spot_bin).ravel()
    members = sp.csr_matrix((np.ones(len(xy)), (spot_bin, np.arange(len(xy)))), shape=(len(keys), len(xy)))
    counts = sp.csr_matrix(members @ sp.csr_matrix(adata.X, dtype=np.float64), dtype=np.float32)
    centres = (members @ xy) / np.asarray(members.sum(axis=1))
    bins = ad.AnnData(X=counts, obs=pd.DataFrame(index=pd.Index([f"bin_{i}_{j}" for i, j in keys])),
                      var=adata.var.copy())
    bins.obsm["spatial"] = centres
    # The square itself is centred on its cell of the bin grid, not on its members' mean.
    bins.obsm[FOOTPRINT_KEY] = ((keys + 0.5) * side - spacing / 2) @ to_frame + lattice.origin
    info = dict(adata.uns.get("histosge", {}))
    info.update(footprint={"shape": "square", "size_px": side, "angle": angle}, spot_diameter_px=side,
                pooled={"factor": float(factor), "spots": int(adata.n_obs)})
    bins.uns["histosge"] = info
    return PooledSection(bins, spot_bin, side)


def own_bin_copy(pooled: PooledSection, bin_values: np.ndarray) -> np.ndarray:
    """Each spot gets its bin's value: the no-super-resolution baseline, ``(n_spots, G)``."""
    return np.asarray(bin_values)[pooled.spot_bin]
