"""The image trend: a closed-form distillation of histology into expression principal scores.

A ridge regression from a few image summaries (mean RGB and the top principal components
of the image features) to the expression's principal scores on the training spots. Few
inputs and few outputs keep it from fitting noise on the few spots of a small section;
the principal scores carry what many genes share, so a noisy gene borrows its trend from
all of them. The conditioned model's kriging then interpolates only what the image does
not explain (kriging with an external drift, :mod:`.kriging`), for the genes where
cross-validation says that helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Principal components of the image features used (besides mean RGB): more fit noise on
#: small sections.
TREND_PCS = 4
#: Ridge penalty per spot on standardised inputs.
RIDGE = 1.0


@dataclass
class ImageTrend:
    """A linear map from the model's z-scored image inputs to expression principal scores."""

    weight: np.ndarray  # (in_dim, r)
    bias: np.ndarray  # (r,)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(n, r)`` predicted scores of ``(n, in_dim)`` image inputs."""
        return (np.asarray(image, np.float64) @ self.weight + self.bias).astype(np.float32)


def fit_image_trend(image: np.ndarray, scores: np.ndarray, n_features: int, *, n_pcs: int = TREND_PCS,
                    ridge: float = RIDGE) -> ImageTrend | None:
    """Fit the image -> principal-score regression on the training spots.

    Parameters
    ----------
    image
        ``(n, in_dim)`` z-scored image inputs: ``n_features`` feature columns, then mean RGB.
    scores
        ``(n, r)`` expression principal scores of the same spots.
    n_features
        Feature columns at the start of ``image``.
    n_pcs
        Principal components of the feature columns used as inputs.
    ridge
        Penalty per spot on the standardised inputs.

    Returns
    -------
    ImageTrend or None
        ``None`` when the image inputs are constant (no image) or there is nothing to predict.
    """
    x = np.asarray(image, np.float64)
    s = np.asarray(scores, np.float64)
    n, in_dim = x.shape
    if n < 3 or s.shape[1] == 0:
        return None
    # The design as a linear map of the image inputs: mean RGB columns, then feature PCs.
    proj = np.eye(in_dim)[:, n_features:]
    if n_features and n_pcs:
        _, _, vt = np.linalg.svd(x[:, :n_features] - x[:, :n_features].mean(0), full_matrices=False)
        pcs = np.zeros((in_dim, min(n_pcs, len(vt))))
        pcs[:n_features] = vt[:n_pcs].T
        proj = np.concatenate([proj, pcs], axis=1)
    design = x @ proj
    centre, spread = design.mean(0), design.std(0)
    keep = spread > 1e-6
    if not keep.any():
        return None
    proj, centre, spread = proj[:, keep], centre[keep], spread[keep]
    xs = (design[:, keep] - centre) / spread
    target_mean = s.mean(0)
    coef = np.linalg.solve(xs.T @ xs + ridge * n * np.eye(xs.shape[1]), xs.T @ (s - target_mean))
    weight = (proj / spread) @ coef
    return ImageTrend(weight=weight, bias=target_mean - (centre / spread) @ coef)
