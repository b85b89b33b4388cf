"""The trained sub-spot model: expression of grid cells from the measured prior and the cells' image features.

A cell's rate (counts per 1e4) is the prior at its centre times ``exp`` of the image
modulation. The map is then made consistent with the measurement
(:mod:`napari_histosge.pipeline.map_modes`): by a smooth correction field that agrees with
the footprints in expectation (:meth:`SubspotModel.smooth_corrected`, the default), or by
scaling the cells under each footprint so that their mean reproduces its measured rate, or
its counting-noise estimate (:meth:`SubspotModel.make_consistent`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...errors import InputError
from ...slide.cell_grid import Footprints
from ...training.trained_model import TrainedModel
from .config import SubspotConfig
from .consistency import consistent_rates, counting_targets, field_factor, smooth_field
from .geometry import footprint_cells
from .meta import SubspotMeta
from .prior import prior_rates, prior_weights, smoothed_rates

#: The smooth correction reads each footprint's mean from cells of at most its size over this.
FIELD_CELLS_ACROSS = 8


class SubspotModel(TrainedModel):
    """A fitted ``subspot`` model (network: :class:`.network.SubspotNetwork`)."""

    #: It reads the measured footprints it stores, which lie on its own section only.
    config: SubspotConfig
    meta: SubspotMeta
    meta_class = SubspotMeta
    predicts_other_sections = False
    #: It predicts grid cells or segmented cells from the slide; spots are means of their cells.
    products = ("grid", "cells")
    spots_from = "cells"

    @property
    def uses_image(self) -> bool:
        """Whether the cells' image features change its prediction (image modulation kept)."""
        return float(self.meta.modulation_share) > 0

    @property
    def cell_px(self) -> float:
        """Side of the grid cells it was fitted on, full-res px."""
        return float(self.meta.cell_px or 0.0)

    def footprints(self) -> Footprints:
        """The measured footprints it stores (the training spots or bins)."""
        shape = self.meta.footprint or {}
        return Footprints(self.model.footprint_xy.cpu().numpy(), shape["shape"], shape["size_px"],
                          shape.get("angle", 0.0))

    def cell_rates(self, cell_xy: np.ndarray, cell_features: np.ndarray) -> np.ndarray:
        """``(n, G)`` float32 rates (counts per 1e4) of cells centred at ``cell_xy``, before consistency."""
        cell_xy = np.asarray(cell_xy, np.float64)
        if cell_features.shape != (len(cell_xy), int(self.meta.n_features or 0)):
            raise InputError(f"cell features have shape {cell_features.shape}, expected "
                             f"({len(cell_xy)}, {int(self.meta.n_features or 0)})")
        bandwidth = float(self.meta.prior_bandwidth_px or 0.0)
        weights = prior_weights(cell_xy, self.model.footprint_xy.cpu().numpy(), bandwidth)
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

    def smooth_corrected(self, cell_xy: np.ndarray, rates: np.ndarray, *, counting: bool = False) -> np.ndarray:
        """``rates`` times a smooth correction field that brings the footprints' means to their measurements.

        The field is read from the prior alone on the model's own cells under the
        footprints (:func:`.consistency.smooth_field`), so it is the same whichever cells
        are asked for, and spread with the prior's kernel: no step at a footprint's edge.
        With ``counting`` the field aims at each measurement read through its counting
        noise (:func:`.consistency.counting_targets`) instead of the measurement itself.
        """
        return self.smooth_corrector(counting=counting)(cell_xy, rates)

    def smooth_corrector(self, *, counting: bool = False) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """:meth:`smooth_corrected` as a function of ``(cell_xy, rates)``, its field computed once.

        The field does not depend on the cells asked for, so a map of many blocks of cells
        (a cell map of a million nuclei) computes it once and applies it to each block.
        """
        net = self.model
        footprint_xy = net.footprint_xy.cpu().numpy()
        measured = net.footprint_rate.cpu().numpy().astype(np.float64)
        bandwidth = float(self.meta.prior_bandwidth_px or 0.0)
        footprints = self.footprints()
        # Each footprint's mean needs a few dozen cells, not thousands (a large bin at 14 µm).
        grid, weights = footprint_cells(footprints, max(self.cell_px, footprints.size_px / FIELD_CELLS_ACROSS))
        under = grid.centres()
        prior = prior_rates(under, footprint_xy, measured, bandwidth)
        if counting:
            measured = counting_targets(np.asarray(weights @ prior), measured, net.footprint_depth.cpu().numpy(),
                                        net.dispersion.cpu().numpy().astype(np.float64))
        means = smooth_field(weights, prior, prior_weights(under, footprint_xy, bandwidth), measured)

        def corrected(cell_xy: np.ndarray, rates: np.ndarray) -> np.ndarray:
            kernel = prior_weights(np.asarray(cell_xy, np.float64), footprint_xy, bandwidth)
            return (np.maximum(np.asarray(rates, np.float64), 0.0) * field_factor(kernel, measured, means)
                    ).astype(np.float32)

        return corrected

    def predict(self, features, mean_rgb, positions, *, frame=None, batch_size: int | None = None) -> np.ndarray:
        """Not available: the sub-spot model reads the slide's cells, not per-spot features."""
        raise InputError("the subspot model predicts from the slide's cells, not from spot features: use "
                         "napari_histosge.predict_spots or napari_histosge.superresolve")

    def training_summary(self) -> str:
        """How the fit went, for people."""
        meta = self.meta
        size = f"{meta.cell_um:.3g} µm" if meta.cell_um else f"{self.cell_px:.3g} px"
        image = ("image modulation off" if not self.config.image_modulation
                 else f"image modulation kept: {float(meta.modulation_share):g}")
        text = f"fitted on {int(meta.n_train_spots)} measured footprints, cells of {size}; {image}"
        prior = meta.histology_prior
        if prior:  # the histology prior (subspot --prior) in place of the image modulation
            text = text.replace("image modulation off", f"histology prior {prior['path']}: its pattern kept for "
                                f"{prior['genes_kept']} of {prior['shared_genes']} shared genes (mean weight "
                                f"{prior['mean_weight']:.2f}, chosen on {prior['squares']} pooled squares)")
            if not prior["shared_genes"]:
                text += "; the prior predicts none of the selected genes, so every weight is 0"
        calibration = meta.calibration
        if calibration:
            text += (f"\none scale up ({calibration['calibration_squares']} pooled squares predicting the "
                     f"footprints): PCC {calibration['calibration_pcc']:.4f} with it, "
                     f"{calibration['calibration_pcc_without_image']:.4f} without the image; detail kept "
                     f"within a footprint (mean over genes) {calibration.get('mean_detail', 1.0):.2f}")
        return text
