"""The trained sub-spot model: expression of grid cells from the measured prior and the cells' image features.

A cell's rate (counts per 1e4) is the prior at its centre times ``exp`` of the image
modulation. With consistency (the default when predicting) the cells under each measured
footprint are then scaled, gene by gene, so that their mean reproduces that footprint's
measured rate: the map never contradicts the measurement, and only cells outside every
footprint keep the model's prediction alone.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...slide.cell_grid import Footprints
from ...training.trained_model import TrainedModel
from .config import SubspotConfig
from .consistency import consistent_rates
from .prior import prior_weights, smoothed_rates


class SubspotModel(TrainedModel):
    """A fitted ``subspot`` model (network: :class:`.network.SubspotNetwork`)."""

    #: It reads the measured footprints it stores, which lie on its own section only.
    config: SubspotConfig
    predicts_other_sections = False
    #: It predicts grid cells from the slide; spots are means of their cells.
    aggregates_cells = True

    @property
    def uses_image(self) -> bool:
        """Whether the cells' image features change its prediction (image modulation kept)."""
        return float(self.meta.get("modulation_share", 0.0)) > 0

    @property
    def cell_px(self) -> float:
        """Side of the grid cells it was fitted on, full-res px."""
        return float(self.meta["cell_px"])

    def footprints(self) -> Footprints:
        """The measured footprints it stores (the training spots or bins)."""
        shape = self.meta["footprint"]
        return Footprints(self.model.footprint_xy.cpu().numpy(), shape["shape"], shape["size_px"],
                          shape.get("angle", 0.0))

    def cell_rates(self, cell_xy: np.ndarray, cell_features: np.ndarray) -> np.ndarray:
        """``(n, G)`` float32 rates (counts per 1e4) of cells centred at ``cell_xy``, before consistency."""
        cell_xy = np.asarray(cell_xy, np.float64)
        if cell_features.shape != (len(cell_xy), int(self.meta["n_features"])):
            raise InputError(f"cell features have shape {cell_features.shape}, expected "
                             f"({len(cell_xy)}, {int(self.meta['n_features'])})")
        weights = prior_weights(cell_xy, self.model.footprint_xy.cpu().numpy(), float(self.meta["prior_bandwidth_px"]))
        prior = smoothed_rates(weights, self.model.footprint_rate.cpu().numpy())
        modulation = self.model.modulation(cell_features)
        level = self.model.footprint_level()
        if level is not None:  # only the deviation from the footprints' own level, smoothed like the prior
            modulation = modulation - np.asarray(weights @ level, np.float32)
        return (prior * np.exp(np.clip(modulation, -20, 20))).astype(np.float32)

    def make_consistent(self, cell_xy: np.ndarray, rates: np.ndarray, *, exact: bool = False) -> np.ndarray:
        """``rates`` scaled so the mean over each measured footprint's cells is its target rate.

        The target is the measured rate read through its counting noise, or with ``exact``
        the measured rate itself (:mod:`.consistency`). Each gene's pattern within a
        footprint is damped by its calibrated ``detail``; cells under no footprint, and
        footprints without a cell of ``cell_xy``, are left alone.
        """
        net = self.model
        weights = self.footprints().cell_weights(np.asarray(cell_xy, np.float64), nearest_if_empty=False)
        noise = {} if exact else {"depth": net.footprint_depth.cpu().numpy(),
                                  "dispersion": net.dispersion.cpu().numpy().astype(np.float64)}
        return consistent_rates(rates, weights, net.footprint_rate.cpu().numpy().astype(np.float64),
                                net.detail.cpu().numpy(), **noise)

    def predict(self, features, mean_rgb, positions, *, frame=None, batch_size: int | None = None) -> np.ndarray:
        """Not available: the sub-spot model reads the slide (:func:`napari_histosge.pipeline.steps.predict_spots`)."""
        raise InputError("the subspot model predicts from the slide's cells: use napari_histosge.predict_spots or "
                         "napari_histosge.superresolve_grid")

    def training_summary(self) -> str:
        """How the fit went, for people."""
        meta = self.meta
        size = f"{meta['cell_um']:.3g} µm" if meta.get("cell_um") else f"{self.cell_px:.3g} px"
        image = ("image modulation off" if not self.config.image_modulation
                 else f"image modulation kept: {float(meta.get('modulation_share', 0.0)):g}")
        text = f"fitted on {int(meta.get('n_train_spots', 0))} measured footprints, cells of {size}; {image}"
        prior = meta.get("histology_prior")
        if prior:  # the histology prior (subspot --prior) in place of the image modulation
            text = text.replace("image modulation off", f"histology prior {prior['path']}: its pattern kept for "
                                f"{prior['genes_kept']} of {prior['shared_genes']} shared genes (mean weight "
                                f"{prior['mean_weight']:.2f}, chosen on {prior['squares']} pooled squares)")
            if not prior["shared_genes"]:
                text += "; the prior predicts none of the selected genes, so every weight is 0"
        calibration = meta.get("calibration")
        if calibration:
            text += (f"\none scale up ({calibration['calibration_squares']} pooled squares predicting the "
                     f"footprints): PCC {calibration['calibration_pcc']:.4f} with it, "
                     f"{calibration['calibration_pcc_without_image']:.4f} without the image; detail kept "
                     f"within a footprint (mean over genes) {calibration.get('mean_detail', 1.0):.2f}")
        return text
