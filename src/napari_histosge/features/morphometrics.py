"""Nucleus morphometrics as patch features: nuclei found in each patch, measured and summarised.

The ``nuclei`` extractor finds the nuclei of every patch with the built-in detector's tile
segmentation (:func:`~napari_histosge.cells.detect.segment_tile` on the haematoxylin of a
colour deconvolution), measures each nucleus (area, eccentricity, mean haematoxylin, chromatin
texture: the spread of haematoxylin inside it) and summarises them over the spot and over discs
of 25, 50 and 100 µm radius around the patch centre: density per mm², the share of the disc
covered by nuclei, quantiles of the per-nucleus measures, and the mean eosin of the disc outside
the nuclei (cytoplasm and stroma: inside a nucleus the deconvolution's eosin is about zero).

Every size is in micrometres, converted at the patch's own pixel size: the extraction code sets
:attr:`NucleusMorphometrics.patch_um` from the slide's pixel size, and the extractor refuses to
run without it. Nuclei are measured from label moments with :func:`numpy.bincount` over a whole
batch at once (the same second moments as :func:`skimage.measure.regionprops`), so the cost is
the segmentation's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb

from ..cells.detect import OTSU_SHARE, NucleusSettings, segment_tile
from ..errors import InputError
from .base import FeatureExtractor, register_extractor

#: Radii (µm) of the neighbourhoods summarised around the patch centre, beside the spot itself.
NEIGHBOURHOOD_UM = (25.0, 50.0, 100.0)
#: The least nuclear threshold (haematoxylin optical density): a patch of stroma alone has a low
#: Otsu threshold that would split its pale background into "nuclei".
MIN_THRESHOLD = 0.06
#: Per-nucleus measures, in the order of :func:`nucleus_measures`'s columns.
MEASURES = ("area_um2", "eccentricity", "hema", "texture")
#: Quantiles of each measure summarised per region.
_QUANTILES = {"area_um2": (0.1, 0.5, 0.9), "eccentricity": (0.5, 0.9), "hema": (0.5, 0.9), "texture": (0.5,)}


# rgb2hed's optical density of each 8-bit intensity, and its haematoxylin and eosin columns.
_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)
_HE_FROM_RGB = hed_from_rgb[:, :2].astype(np.float32)


def region_names(center_label: str = "spot") -> list[str]:
    """The summarised regions: the spot and the neighbourhoods (``"r25um"``, ...)."""
    return [center_label] + [f"r{r:g}um" for r in NEIGHBOURHOOD_UM]


def _feature_names() -> list[str]:
    names: list[str] = []
    for region in region_names():
        names += [f"{region}_density_per_mm2", f"{region}_nuclear_area_frac"]
        for measure, quantiles in _QUANTILES.items():
            names += [f"{region}_{measure}_q{int(q * 100)}" for q in quantiles]
        names.append(f"{region}_eosin_outside_nuclei")
    return names


FEATURE_NAMES = _feature_names()


def stain_densities(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin densities of uint8 RGB pixels ``(..., 3)``, float32, at least 0.

    The colour deconvolution of :func:`skimage.color.rgb2hed` (so of the nucleus detector's
    :func:`~napari_histosge.cells.detect.haematoxylin`: thresholds mean the same), with the
    logarithm of each of the 256 intensities looked up rather than computed per pixel.
    """
    hed = _OD_LUT[np.asarray(rgb, np.uint8)[..., :3]] @ _HE_FROM_RGB
    np.maximum(hed, 0, out=hed)
    return hed[..., 0], hed[..., 1]


def nucleus_measures(labels: np.ndarray, hema: np.ndarray, um_per_px: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measures of every labelled nucleus of a stack of label images, computed from moments.

    Parameters
    ----------
    labels
        int ``(n, H, W)``: nuclei numbered 1.. across the whole stack (no id in two patches).
    hema
        float ``(n, H, W)`` haematoxylin optical density.
    um_per_px
        Pixel size of the patches.

    Returns
    -------
    patch : ndarray of int
        ``(m,)`` the patch of each nucleus.
    centroid : ndarray of float
        ``(m, 2)`` its centroid ``(row, col)`` in pixels of its patch.
    measures : ndarray of float
        ``(m, len(MEASURES))``: area (µm²), eccentricity (as regionprops defines it), mean
        haematoxylin, and the standard deviation of haematoxylin inside it.
    """
    n, h, w = labels.shape
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    ids = flat[inside]
    m = int(labels.max()) + 1
    count = np.bincount(ids, minlength=m).astype(np.float64)
    present = np.flatnonzero(count)
    present = present[present > 0]
    patch_idx, rem = np.divmod(inside, h * w)
    rows, cols = np.divmod(rem, w)

    def mean_of(values: np.ndarray) -> np.ndarray:
        return np.bincount(ids, weights=values, minlength=m)[present] / count[present]

    r_mean, c_mean = mean_of(rows.astype(np.float64)), mean_of(cols.astype(np.float64))
    # Central second moments (regionprops' inertia tensor); pixel centres, variance of a pixel's extent ignored
    # as regionprops ignores it.
    full_r = np.zeros(m)
    full_c = np.zeros(m)
    full_r[present], full_c[present] = r_mean, c_mean
    dr, dc = rows - full_r[ids], cols - full_c[ids]
    mu_rr, mu_cc, mu_rc = mean_of(dr * dr), mean_of(dc * dc), mean_of(dr * dc)
    half_trace, root = (mu_rr + mu_cc) / 2, np.sqrt(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2)
    major, minor = half_trace + root, np.maximum(half_trace - root, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(major > 0, np.sqrt(np.clip(1 - minor / major, 0, 1)), 0.0)
    h_values = hema.ravel()[inside].astype(np.float64)
    h_mean = mean_of(h_values)
    h_sq = mean_of(h_values * h_values)
    texture = np.sqrt(np.clip(h_sq - h_mean**2, 0, None))
    patch = np.bincount(ids, weights=patch_idx, minlength=m)[present] / count[present]
    measures = np.column_stack([count[present] * um_per_px**2, eccentricity, h_mean, texture])
    return np.rint(patch).astype(np.int64), np.column_stack([r_mean, c_mean]), measures


def _discs(radii_px: list[float], size: int) -> np.ndarray:
    """Boolean ``(len(radii_px), size, size)``: the pixels within each radius of the patch centre."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy - centre) ** 2 + (xx - centre) ** 2
    return np.stack([d2 <= r**2 for r in radii_px])


def summarise(patch: np.ndarray, centroid: np.ndarray, measures: np.ndarray, labels: np.ndarray,
              eosin: np.ndarray, radii_px: list[float], um_per_px: float) -> np.ndarray:
    """Per patch and region: density per mm², nuclear area share, measure quantiles, eosin outside nuclei.

    A nucleus belongs to a region when its centroid lies within the region's radius of the
    patch centre; densities divide by the part of the disc inside the patch. A region without
    nuclei has zeros but for its eosin.
    """
    n, size = labels.shape[0], labels.shape[1]
    discs = _discs(radii_px, size)
    disc_um2 = discs.sum(axis=(1, 2)) * um_per_px**2
    outside = labels == 0
    # Mean eosin of each disc's pixels outside the nuclei, for every patch at once.
    eosin_sum = np.einsum("nhw,rhw->nr", np.where(outside, eosin, 0).astype(np.float32), discs.astype(np.float32))
    eosin_px = np.einsum("nhw,rhw->nr", outside.astype(np.float32), discs.astype(np.float32))
    eosin_mean = eosin_sum / np.maximum(eosin_px, 1)
    centre = (size - 1) / 2
    dist = np.hypot(centroid[:, 0] - centre, centroid[:, 1] - centre)
    columns = {name: i for i, name in enumerate(MEASURES)}
    per_region = 3 + sum(len(q) for q in _QUANTILES.values())
    out = np.zeros((n, len(radii_px), per_region), np.float32)
    out[:, :, -1] = eosin_mean
    by_patch = np.argsort(patch, kind="stable")
    bounds = np.searchsorted(patch[by_patch], np.arange(n + 1))
    for j, radius in enumerate(radii_px):
        if disc_um2[j] <= 0:
            continue
        for i in range(n):
            rows = by_patch[bounds[i]:bounds[i + 1]]
            rows = rows[dist[rows] <= radius]
            if not len(rows):
                continue
            values = measures[rows]
            stats = [len(rows) / disc_um2[j] * 1e6, values[:, columns["area_um2"]].sum() / disc_um2[j]]
            for measure, quantiles in _QUANTILES.items():
                stats += list(np.quantile(values[:, columns[measure]], quantiles))
            out[i, j, :-1] = stats
    return out.reshape(n, -1)


@register_extractor("nuclei")
class NucleusMorphometrics(FeatureExtractor):
    """Nuclei of each patch, measured and summarised over the spot and 25/50/100 µm discs (no weights)."""

    dim = len(FEATURE_NAMES)
    input_size = 224
    feature_names = FEATURE_NAMES
    needs_pixel_size = True
    VERSION = 1

    def __init__(self, arg: str | None = None, *, checkpoint: str | None = None, device: Any = "cpu") -> None:
        super().__init__(arg, checkpoint=checkpoint, device=device)
        self.settings = NucleusSettings()

    @property
    def identity(self) -> str:
        """Names the version, patch size and centre fraction (part of cache keys)."""
        return f"nuclei-v{self.VERSION}-in{self.input_size}-cf{self.center_fraction:.4f}"

    def um_per_px(self, size: int) -> float:
        """Pixel size (µm) of a patch ``size`` pixels across; refused without the patch's edge in µm."""
        if not self.patch_um or not math.isfinite(self.patch_um) or self.patch_um <= 0:
            raise InputError("the 'nuclei' extractor measures in micrometres and needs the slide's pixel size, "
                             "which the data does not record; choose another extractor")
        return float(self.patch_um) / size

    def segment(self, hema: np.ndarray, um_per_px: float) -> np.ndarray:
        """Label stack ``(n, H, W)`` of a haematoxylin stack, ids unique across the stack."""
        radius = self.settings.nucleus_um / 2 / um_per_px
        min_area = self.settings.min_area_um2 / um_per_px**2
        labels = np.zeros(hema.shape, np.int32)
        next_id = 0
        for i, h in enumerate(hema):
            threshold = max(MIN_THRESHOLD, OTSU_SHARE * _otsu(ndi.gaussian_filter(h, max(0.5, radius / 4))))
            lab = segment_tile(h, threshold, radius, min_area)
            lab[lab > 0] += next_id
            labels[i] = lab
            next_id = max(next_id, int(lab.max()))
        return labels

    def extract(self, patches: Any) -> Any:
        """Morphometric summaries of a ``(n, H, W, 3)`` uint8 batch, float32 ``(n, dim)``."""
        import torch

        rgb = patches.cpu().numpy() if hasattr(patches, "cpu") else np.asarray(patches)
        n, size = rgb.shape[0], rgb.shape[1]
        if n == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        um = self.um_per_px(size)
        hema, eosin = stain_densities(rgb)
        labels = self.segment(hema, um)
        patch, centroid, measures = nucleus_measures(labels, hema, um)
        spot_radius = size * min(max(self.center_fraction, 0.0), 1.0) / 2
        radii = [spot_radius] + [r / um for r in NEIGHBOURHOOD_UM]
        feats = summarise(patch, centroid, measures, labels, eosin, radii, um)
        return torch.from_numpy(feats).to(self.device)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float("inf")
