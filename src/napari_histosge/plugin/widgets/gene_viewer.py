"""The Gene viewer: type-ahead gene search that recolours spots and heatmaps at once.

Also: observed | predicted | difference side by side, a colorbar legend, and the
per-gene PCC where measurements exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, LineEdit, PushButton
from qtpy.QtCore import QStringListModel, Qt
from qtpy.QtWidgets import QCompleter

from .colorbar import ColorBar
from .compare import ROLE_COMPARE, comparison_layers, spot_averaged
from .layers import (
    HEATMAP_COLORMAP,
    ROLE_HEATMAP,
    ROLE_PRED_SPOTS,
    ROLE_SLIDE,
    ROLE_SPOTS,
    ROLE_UNCERTAINTY,
    SPOT_COLORMAP,
    histosge_meta,
    layers_with_role,
    measured_source,
    recolor_spots,
    update_heatmap,
    value_range,
)

if TYPE_CHECKING:
    import napari

UNITS = "log1p(counts per 1e4)"


def gene_pcc(pred, source, gene: str, *, log_source=None) -> float:
    """PCC over measured spots between ``gene``'s measurement and its spot-averaged prediction.

    NaN when the gene is missing from either side or correlation is undefined.
    """
    from ...evaluation.metrics import gene_metrics
    from .layers import gene_values

    if gene not in pred.var_names or gene not in source.var_names:
        return float("nan")
    predicted = spot_averaged(pred, source, gene)
    observed = gene_values(source, gene, log_adata=log_source)
    ok = np.isfinite(predicted)
    if ok.sum() < 2:
        return float("nan")
    metrics = gene_metrics(observed[ok, None], predicted[ok, None], [gene])
    return float(metrics.loc[gene, "pcc"])


class GeneViewerWidget(Container):
    """Search a gene; every spots layer and heatmap of the plugin follows."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.search = LineEdit(value="", tooltip="type a gene name; suggestions appear as you type")
        self.search.native.setPlaceholderText("gene (type to search)...")
        self.show_button = PushButton(text="Show gene")
        self.compare_button = PushButton(text="Observed | predicted | difference")
        self.info = Label(value="")
        self.info.native.setWordWrap(True)
        self.extend([self.search, self.show_button, self.compare_button, self.info])
        self.colorbar = ColorBar()
        self.native.layout().addWidget(self.colorbar)

        self._model = QStringListModel([])
        self.completer = QCompleter(self._model, self.native)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.completer.setMaxVisibleItems(12)
        self.search.native.setCompleter(self.completer)
        self.completer.activated[str].connect(self._show_completion)
        self.search.native.returnPressed.connect(lambda: self.show_gene(self.search.value))
        self.show_button.changed.connect(lambda *_: self.show_gene(self.search.value))
        self.compare_button.changed.connect(lambda *_: self.compare())

        self.gene: str | None = None
        self.pcc: dict[str, float] = {}
        viewer.layers.events.inserted.connect(self.refresh_genes)
        viewer.layers.events.removed.connect(self.refresh_genes)
        self.refresh_genes()

    # ------------------------------------------------------------------ gene list
    def genes(self) -> list[str]:
        """All genes of the plugin's layers (predicted genes first, then measured)."""
        seen: dict[str, None] = {}
        for roles in ((ROLE_HEATMAP, ROLE_PRED_SPOTS), (ROLE_SPOTS,)):
            for layer in layers_with_role(self.viewer.layers, *roles):
                for g in histosge_meta(layer)["adata"].var_names:
                    seen.setdefault(str(g), None)
        return list(seen)

    def refresh_genes(self, *_: Any) -> None:
        """Offer the genes of the layers open now in the gene box's completer."""
        names: list[str] = sorted(self.genes(), key=str.lower)
        self._model.setStringList(names)

    def _show_completion(self, text: str) -> None:
        self.show_gene(text)

    # ------------------------------------------------------------------ showing a gene
    def _resolve(self, text: str) -> str | None:
        text = text.strip()
        genes = self._model.stringList()
        if text in genes:
            return text
        lower = {g.lower(): g for g in genes}
        return lower.get(text.lower())

    def show_gene(self, text: str) -> bool:
        """Recolour every spots layer and heatmap by gene ``text``; False if unknown."""
        from napari.utils.notifications import show_warning

        gene = self._resolve(text)
        if gene is None:
            show_warning(f"gene '{text.strip()}' is not in any open layer")
            return False
        self.gene = gene
        self.search.value = gene
        shown = None
        for layer in layers_with_role(self.viewer.layers, ROLE_SPOTS, ROLE_PRED_SPOTS):
            if gene in histosge_meta(layer)["adata"].var_names:
                recolor_spots(layer, gene)
                shown = shown or (layer.face_contrast_limits, SPOT_COLORMAP)
        heatmaps = [lyr for lyr in layers_with_role(self.viewer.layers, ROLE_HEATMAP)
                    if gene in histosge_meta(lyr)["adata"].var_names]
        for layer in heatmaps:
            update_heatmap(layer, gene)
        for layer in layers_with_role(self.viewer.layers, ROLE_UNCERTAINTY):
            if gene in histosge_meta(layer)["adata"].var_names:
                update_heatmap(layer, gene)
        if heatmaps:
            shown = (heatmaps[0].contrast_limits, HEATMAP_COLORMAP)
        if shown is not None:
            (lo, hi), cmap = shown
            self.colorbar.set_range(gene, lo, hi, colormap=cmap, units=UNITS)
        self._update_pcc(gene, heatmaps)
        if layers_with_role(self.viewer.layers, ROLE_COMPARE):
            self.compare()
        return True

    def _update_pcc(self, gene: str, heatmaps: list) -> None:
        parts = []
        for layer in heatmaps:
            meta = histosge_meta(layer)
            source = measured_source(layer, self.viewer.layers)
            if source is None or gene not in source.var_names:
                continue
            r = gene_pcc(meta["adata"], source, gene, log_source=self._log_of(source))
            self.pcc[layer.name] = r
            parts.append(f"PCC {r:.3f}" if np.isfinite(r) else "PCC n/a (constant)")
        self.info.value = f"{gene}: " + ", ".join(parts) if parts else gene
        self.info.tooltip = ("PCC between the measured values and the predictions averaged over each spot, "
                             "on all spots (training spots included): a measure of fit, not a held-out score")

    def _log_of(self, adata):
        # Reuse the normalised copy a spots layer already made for this AnnData.
        for layer in layers_with_role(self.viewer.layers, ROLE_SPOTS):
            meta = histosge_meta(layer)
            if meta["adata"] is adata:
                if meta.get("log_adata") is None:
                    from ...io.preprocess import normalize_log1p

                    meta["log_adata"] = normalize_log1p(adata)
                return meta["log_adata"]
        return None

    # ------------------------------------------------------------------ comparison
    def compare(self) -> list:
        """Add (or refresh) observed | predicted | difference panels for the current gene."""
        import napari.layers
        from napari.utils.notifications import show_warning

        heatmaps = [lyr for lyr in layers_with_role(self.viewer.layers, ROLE_HEATMAP)
                    if measured_source(lyr, self.viewer.layers) is not None]
        gene = self.gene or self._resolve(self.search.value)
        if not heatmaps or gene is None:
            show_warning("Super-resolve (or open saved predictions and the spot data they came from) and pick "
                         "a gene; the comparison needs predictions and measurements.")
            return []
        meta = histosge_meta(heatmaps[-1])
        source = measured_source(heatmaps[-1], self.viewer.layers)
        if gene not in source.var_names or gene not in meta["adata"].var_names:
            show_warning(f"gene '{gene}' is not both measured and predicted")
            return []
        for layer in list(layers_with_role(self.viewer.layers, ROLE_COMPARE)):
            self.viewer.layers.remove(layer)
        slide = next((lyr for lyr in layers_with_role(self.viewer.layers, ROLE_SLIDE)
                      if histosge_meta(lyr).get("adata") is source), None)
        slide_tuple = None
        if slide is not None:
            slide_tuple = (list(slide.data) if slide.multiscale else slide.data, {
                "name": slide.name, "rgb": True, "multiscale": slide.multiscale, "scale": tuple(slide.scale),
                "translate": tuple(slide.translate), "contrast_limits": (0, 255)}, "image")
        added = []
        for data, kwargs, kind in comparison_layers(meta["adata"], source, gene, log_source=self._log_of(source),
                                                    slide=slide_tuple):
            cls = napari.layers.Image if kind == "image" else napari.layers.Points
            added.append(self.viewer.add_layer(cls(data, **kwargs)))
        self.viewer.reset_view()
        self.colorbar.set_range(gene, *value_range(np.asarray(added[0].contrast_limits)),
                                colormap=HEATMAP_COLORMAP, units=UNITS)
        return added
