"""The interface of a model that predicts square grid cells from the slide (a cell model, e.g. ``subspot``).

A grid map (:mod:`napari_histosge.pipeline.grid_maps`) and the spots such a model predicts (the
mean of the cells under each disc) call these methods; :func:`as_cell_model` checks a model has
them, so the pipeline reaches them typed, without asking for a model by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from ..slide.cell_grid import Footprints
    from .model_meta import ModelMeta


@runtime_checkable
class CellModel(Protocol):
    """A trained model that predicts grid cells: their rates, made consistent with its measured footprints."""

    genes: list[str]
    meta: ModelMeta
    config: Any

    @property
    def uses_image(self) -> bool:
        """Whether the cells' image features change its prediction (else none are read)."""

    @property
    def cell_px(self) -> float:
        """Side of the grid cells it was fitted on, full-res px."""

    def footprints(self) -> Footprints:
        """The measured footprints it stores."""

    def cell_rates(self, cell_xy: np.ndarray, cell_features: np.ndarray) -> np.ndarray:
        """``(n, G)`` rates (counts per 1e4) of cells centred at ``cell_xy``, before consistency."""

    def make_consistent(self, cell_xy: np.ndarray, rates: np.ndarray, *, exact: bool = False) -> np.ndarray:
        """``rates`` scaled so the mean over each footprint's cells is its (counting-noise) measurement."""

    def smooth_corrected(self, cell_xy: np.ndarray, rates: np.ndarray, *, counting: bool = False) -> np.ndarray:
        """``rates`` times a smooth field that brings the footprints' means to their measurements."""

    def smooth_corrector(self, *, counting: bool = False) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """:meth:`smooth_corrected` as a function of ``(cell_xy, rates)``, its field computed once."""


def as_cell_model(model: Any) -> CellModel:
    """``model`` as a :class:`CellModel`, or a one-line :class:`InputError` saying it predicts whole spots."""
    if not isinstance(model, CellModel):
        made = ", ".join(getattr(model, "products", ()))
        raise InputError(f"the {model.config.model!r} model predicts whole spots, not grid cells"
                         + (f" (it makes: {made})" if made else ""))
    return model
