"""The Gene viewer: type-ahead gene search that recolours spots and heatmaps at once.

Also: observed | predicted | difference side by side, a colorbar legend bound to the layer
it describes, and the per-gene PCC where measurements exist. A gene switch updates the
existing layers in place (data, colours, limits): removing a napari layer costs a full
garbage collection, so layers are only removed when the user closes the comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import Container, FileEdit, LineEdit, PushButton
from qtpy.QtCore import QEvent, QObject, QStringListModel, Qt, QTimer
from qtpy.QtWidgets import QCompleter

from ...io.gene_names import gene_label
from .colorbar import ColorBar
from .compare import ROLE_COMPARE, ROLE_COMPARE_TITLES, can_compare, comparison_layers, panels_for, spot_averaged
from .gene_table import attach_to_layer, gene_symbols_of, load_gene_table
from .layers import (
    ROLE_HEATMAP,
    ROLE_PRED_SPOTS,
    ROLE_SLIDE,
    ROLE_SPOTS,
    ROLE_UNCERTAINTY,
    histosge_meta,
    layers_with_role,
    measured_source,
)
from .repaint import recolor_spots, rename_hidden, set_image_values, update_heatmap
from .state import note_viewed_gene
from .status import set_status, status_label, status_of

if TYPE_CHECKING:
    import napari

UNITS = "log1p(counts per 1e4)"
#: Roles of the layers that show one gene (the legend can describe them).
GENE_ROLES = (ROLE_HEATMAP, ROLE_UNCERTAINTY, ROLE_PRED_SPOTS, ROLE_SPOTS, ROLE_COMPARE)
#: What the PCC in the status line is (its tooltip).
PCC_NOTE = ("\n(PCC between the measured values and the predictions averaged over each spot, on all spots, "
            "training spots included: a measure of fit, not a held-out score)")
#: metadata flag: the Gene viewer hid this layer because it lacks the gene shown.
HIDDEN_FLAG = "hidden_lacking_gene"
#: metadata flag: the Gene viewer hid these measured spots under a prediction map of them.
UNDER_MAP_FLAG = "hidden_under_map"
#: The comparison panel with a legend of its own (a diverging scale).
DIFF_PANEL = "predicted - observed"


def gene_pcc(pred, source, gene: str, *, log_source=None) -> float:
    """PCC over measured spots between ``gene``'s measurement and its spot-averaged prediction.

    NaN when the gene is missing from either side, the positions have no parent spots
    (grid cells), or correlation is undefined.
    """
    from ...evaluation.metrics import gene_metrics
    from .layers import gene_values

    if gene not in pred.var_names or gene not in source.var_names or not can_compare(pred):
        return float("nan")
    predicted = spot_averaged(pred, source, gene)
    observed = gene_values(source, gene, log_adata=log_source)
    ok = np.isfinite(predicted)
    if ok.sum() < 2:
        return float("nan")
    metrics = gene_metrics(observed[ok, None], predicted[ok, None], [gene])
    return float(metrics.loc[gene, "pcc"])


def legend_of(layer) -> tuple[str, float, float, Any]:
    """``(title, min, max, colormap)`` that describe what ``layer`` shows now."""
    meta = histosge_meta(layer)
    gene = meta.get("gene") or ""
    if gene and (label := gene_label(meta.get("adata"), gene)) != gene:
        gene = f"{label} ({gene})"  # data named by id: the symbol first
    if hasattr(layer, "contrast_limits") and not hasattr(layer, "face_contrast_limits"):
        lo, hi = layer.contrast_limits
        cmap = layer.colormap
    else:  # spots: colours set directly from the limits the plugin chose (repaint.recolor_spots)
        lo, hi = meta.get("limits") or layer.face_contrast_limits
        cmap = layer.face_colormap
    return f"{gene} - {layer.name}" if gene and gene not in layer.name else layer.name, float(lo), float(hi), cmap


class _PopupEnter(QObject):
    """Enter in the open suggestion list with no suggestion picked shows the typed gene at once.

    Qt's completer only closes its list on such an Enter (the line edit never sees it), so the
    user had to press Enter twice; with a suggestion picked, the completer's ``activated`` shows it.
    """

    def __init__(self, show_typed) -> None:
        super().__init__()
        self._show_typed = show_typed

    def eventFilter(self, popup, event) -> bool:  # noqa: N802 - Qt override
        if (event.type() == QEvent.Type.KeyPress and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and not popup.currentIndex().isValid()):
            QTimer.singleShot(0, self._show_typed)  # after the completer closed its list
        return False


class GeneViewerWidget(Container):
    """Search a gene; every spots layer and heatmap of the plugin follows."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.search = LineEdit(value="", tooltip="type a gene name; suggestions appear as you type")
        self.search.native.setPlaceholderText("gene (type to search)...")
        self.show_button = PushButton(text="Show gene", tooltip="colour every spots layer and map by the gene in "
                                                                "the box (Enter does the same)")
        self.compare_button = PushButton(text="Observed | predicted | difference",
                                         tooltip="side by side: the measured spots, the prediction averaged over "
                                                 "each spot, and their difference for this gene (needs predictions "
                                                 "and the spots they came from)")
        self.close_compare_button = PushButton(text="Close comparison", visible=False)
        self.export_button = PushButton(text="Export figure…", tooltip="save the canvas as shown with this legend "
                                        "and a scale bar (PNG, SVG or PDF)")
        self.gene_table = FileEdit(label="gene names", mode=FileDialogMode.EXISTING_FILE, value=None,
                                   filter="*.tsv *.csv *.txt *.gz",
                                   tooltip="optional: a table of Ensembl ids and gene symbols (two columns), so "
                                           "symbols such as MBP find genes of data named by id and legends show "
                                           "them (histosge --gene-names)")
        self.info = status_label()
        self.extend([self.search, self.show_button, self.compare_button, self.close_compare_button,
                     self.export_button, self.gene_table, self.info])
        self.colorbar = ColorBar()
        self.observed_colorbar = ColorBar()  # the comparison's observed panel: a scale of its own
        self.diff_colorbar = ColorBar()  # the difference panel's diverging scale
        for bar in (self.observed_colorbar, self.diff_colorbar):
            bar.setVisible(False)
        self.native.layout().addWidget(self.observed_colorbar)
        self.native.layout().addWidget(self.colorbar)
        self.native.layout().addWidget(self.diff_colorbar)

        self._model = QStringListModel([])
        self.completer = QCompleter(self._model, self.native)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.completer.setMaxVisibleItems(12)
        self.search.native.setCompleter(self.completer)
        self.completer.activated[str].connect(self._show_completion)
        self._enter_filter = _PopupEnter(self._show_typed)
        popup = self.completer.popup()
        if popup is not None:  # QCompleter always has one; the stubs allow None
            popup.installEventFilter(self._enter_filter)
        self.search.native.returnPressed.connect(self._return_pressed)
        self.show_button.changed.connect(lambda *_: self.ask_for_gene(self.search.value))
        self.compare_button.changed.connect(lambda *_: self.compare())
        self.close_compare_button.changed.connect(lambda *_: self.close_comparison())
        self.export_button.changed.connect(lambda *_: self.export_figure(background=True))
        self.figure_worker: Any = None
        self.gene_table.changed.connect(lambda *_: self.load_gene_names(self.gene_table.value))
        self.names_table: dict[str, str] | None = None  # a table of ids and symbols the user gave

        self.gene: str | None = None
        self._switching = False  # inside show_gene: layers it shows or hides do not switch genes again
        self.pcc: dict[str, float] = {}
        self.legend_layer = None
        viewer.layers.events.inserted.connect(self._layer_inserted)
        viewer.layers.events.removed.connect(self._layer_removed)
        viewer.layers.events.moved.connect(lambda *_: self._bind_legend(self._best_legend_layer()))
        viewer.layers.selection.events.active.connect(self._active_changed)
        for layer in layers_with_role(viewer.layers, *GENE_ROLES[:4]):
            layer.events.visible.connect(self._visibility_changed)
        self.refresh_genes()
        best = self._best_legend_layer()
        if best is None or not self.show_gene(histosge_meta(best)["gene"]):  # the box names what is shown
            self._bind_legend(best)

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
        ids = {str(i) for layer in layers_with_role(self.viewer.layers, ROLE_SPOTS)
               if "gene_ids" in (var := histosge_meta(layer)["adata"].var) for i in var["gene_ids"]}
        ids |= gene_symbols_of(self.viewer, GENE_ROLES[:4])  # symbols of data named by id
        self._model.setStringList(names + sorted(ids - set(names)))  # gene ids are searchable too

    def _show_completion(self, text: str) -> None:
        self.ask_for_gene(text)

    def _return_pressed(self) -> None:
        # The line edit's own Enter (no suggestion list open): shown after the event is done,
        # even when it names the gene shown now (a layer may have been repainted since).
        QTimer.singleShot(0, self._show_typed)

    def _show_typed(self) -> None:
        self.ask_for_gene(self.search.value)

    def ask_for_gene(self, text: str) -> bool:
        """Show the gene the user typed or picked (:meth:`show_gene`); the next training run predicts it too."""
        if not self.show_gene(text):
            return False
        if self.gene is not None:
            note_viewed_gene(self.viewer, self.gene)
        return True

    # ------------------------------------------------------------------ the legend
    def load_gene_names(self, path: Any) -> bool:
        """Name the open layers' genes by the table of ids and symbols at ``path``; False (and a notice) if bad."""
        from napari.utils.notifications import show_error

        from ...errors import InputError

        if path is None or str(path) in ("", "."):
            return False
        try:
            self.names_table, summary = load_gene_table(self.viewer, path, GENE_ROLES[:4])
        except InputError as exc:
            show_error(str(exc))
            return False
        self.refresh_genes()
        self._bind_legend(self._best_legend_layer())
        set_status(self.info, summary)
        return True

    def _layer_inserted(self, event) -> None:
        attach_to_layer(event.value, self.names_table)
        self.refresh_genes()
        layer, meta = event.value, histosge_meta(event.value)
        role = meta.get("role")
        if role in GENE_ROLES[:4]:
            layer.events.visible.connect(self._visibility_changed)
            if meta.get("gene") and self._follow_gene(layer):
                return  # the viewer switched to the new layer's gene (legend bound there)
        if role == ROLE_HEATMAP and layer.visible:
            self._hide_measured_under(layer)
        if role in GENE_ROLES:
            self._bind_legend(self._best_legend_layer())

    def _follow_gene(self, layer) -> bool:
        """A new (or newly shown) ``layer`` shows the viewer's gene where it has it, else the viewer its gene.

        Returns True when the viewer switched to ``layer``'s gene (:meth:`show_gene` ran).
        """
        meta = histosge_meta(layer)
        if self.gene is not None and self.gene in meta["adata"].var_names:
            if layer.visible and meta.get("gene") != self.gene:
                self._paint(layer, self.gene)
            elif not layer.visible:
                rename_hidden(layer, self.gene)  # repainted when shown
            return False
        if layer.visible and not self._switching:  # no gene chosen yet, or the new data lack it: all follow it
            return self.show_gene(meta["gene"])
        return False

    def _layer_removed(self, event) -> None:
        self.refresh_genes()
        if histosge_meta(event.value).get("role") == ROLE_HEATMAP:
            self._show_measured_again()
        self._bind_legend(self._best_legend_layer())
        if not layers_with_role(self.viewer.layers, ROLE_COMPARE):
            self._comparison_closed()

    def _visibility_changed(self, event) -> None:
        # Hidden layers are repainted when shown, not on every gene switch (each repaint costs).
        layer = event.source
        meta = histosge_meta(layer)
        if layer.visible and meta.get("gene") and self._follow_gene(layer):
            return
        if meta.get("role") == ROLE_HEATMAP:
            if layer.visible:
                self._hide_measured_under(layer)
            else:
                self._show_measured_again()
        self._bind_legend(self._best_legend_layer())

    # ------------------------------------------------------------------ one colour scale on screen
    def _hide_measured_under(self, heatmap) -> list[str]:
        """Hide the measured spots a shown prediction map covers: one colour scale, one legend on screen.

        They are shown again when no map of theirs is left visible (:meth:`_show_measured_again`);
        the comparison panels show measurement and prediction side by side. Returns the names hidden.
        """
        hidden = []
        for spots in self._measured_under(heatmap):
            if spots.visible:
                spots.visible, histosge_meta(spots)[UNDER_MAP_FLAG] = False, True
                hidden.append(spots.name)
        return hidden

    def _show_measured_again(self) -> None:
        maps = [lyr for lyr in layers_with_role(self.viewer.layers, ROLE_HEATMAP) if lyr.visible]
        covered = {id(spots) for lyr in maps for spots in self._measured_under(lyr)}
        for spots in layers_with_role(self.viewer.layers, ROLE_SPOTS):
            meta = histosge_meta(spots)
            if (id(spots) not in covered and meta.get(UNDER_MAP_FLAG)
                    and (self.gene is None or self.gene in meta["adata"].var_names)):
                meta.pop(UNDER_MAP_FLAG)
                spots.visible = True

    def _measured_under(self, heatmap) -> list:
        """The measured spots layers ``heatmap`` was predicted from (the same section)."""
        source = measured_source(heatmap, self.viewer.layers)
        library = (histosge_meta(heatmap)["adata"].uns.get("histosge", {}) or {}).get("library_id")
        out = []
        for spots in layers_with_role(self.viewer.layers, ROLE_SPOTS):
            adata = histosge_meta(spots)["adata"]
            if adata is source or (source is None and library is not None
                                   and (adata.uns.get("histosge", {}) or {}).get("library_id") == library):
                out.append(spots)
        return out

    def _paint(self, layer, gene: str) -> bool:
        """Show ``gene`` on ``layer`` in place; False (nothing changed) when its data lack the gene."""
        meta = histosge_meta(layer)
        if gene not in meta["adata"].var_names:
            return False
        if meta.get("role") in (ROLE_SPOTS, ROLE_PRED_SPOTS):
            recolor_spots(layer, gene)
        else:
            update_heatmap(layer, gene)
        return True

    def _active_changed(self, event) -> None:
        layer = event.value
        meta = histosge_meta(layer) if layer is not None else {}
        if layer is not None and layer.visible and meta.get("role") in GENE_ROLES and meta.get("gene"):
            self._bind_legend(layer)

    def _best_legend_layer(self):
        """The layer the legend should describe: the topmost visible layer showing a gene, else none.

        The comparison's difference panel has a legend of its own (:attr:`diff_colorbar`).
        """
        for layer in reversed(list(self.viewer.layers)):
            meta = histosge_meta(layer)
            if (layer.visible and meta.get("role") in GENE_ROLES and meta.get("gene")
                    and meta.get("panel") != DIFF_PANEL):
                return layer
        return None

    def _bind_legend(self, layer) -> None:
        """Describe ``layer`` in the legend from now on, following its contrast and colormap."""
        old = self.legend_layer
        if old is not None and old is not layer:
            for name in ("contrast_limits", "colormap", "face_color", "name", "visible"):
                emitter = getattr(old.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self._sync_legend)
        self.legend_layer = layer
        if layer is None:
            self.colorbar.clear("no gene shown (open spot data or predictions)")
            return
        if old is not layer:
            for name in ("contrast_limits", "colormap", "face_color", "name", "visible"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.connect(self._sync_legend)
        self._sync_legend()

    def _sync_legend(self, *_: Any) -> None:
        layer = self.legend_layer
        if layer is None:
            return
        if not layer.visible:  # never describe a hidden layer: the topmost visible one instead
            self._bind_legend(self._best_legend_layer())
            return
        title, lo, hi, cmap = legend_of(layer)
        units = histosge_meta(layer).get("units", UNITS)
        self.colorbar.set_range(title, lo, hi, colormap=cmap, units=units)

    # ------------------------------------------------------------------ showing a gene
    def _resolve(self, text: str) -> str | None:
        text = text.strip()
        layers = layers_with_role(self.viewer.layers, *GENE_ROLES[:4])
        if any(text in histosge_meta(layer)["adata"].var_names for layer in layers):
            return text  # an exact name: a hash lookup per layer, not the list of every gene
        genes = self.genes()  # names only: the completer also lists gene ids
        lower = {g.lower(): g for g in genes}
        if text.lower() in lower:
            return lower[text.lower()]
        from ...io.preprocess import resolve_gene  # a gene id (var["gene_ids"]) stands for its name

        for layer in layers:
            found = resolve_gene(histosge_meta(layer)["adata"], text)
            if found is not None:
                return found
        return None

    def show_gene(self, text: str) -> bool:
        """Recolour every spots layer and heatmap by gene ``text``; False if unknown.

        Layers whose data lack the gene are hidden (and shown again for a gene they have),
        so no layer keeps another gene's colours under this gene's legend; the status
        line names them.
        """
        from napari.utils.notifications import show_warning

        from ...errors import InputError

        try:
            gene = self._resolve(text)
        except InputError as exc:  # a symbol of two ids: the one line names both
            show_warning(str(exc))
            return False
        if gene is None:
            from ...gene_lists import ensembl_hint

            hints = {ensembl_hint([text.strip()], list(histosge_meta(layer)["adata"].var_names))
                     for layer in layers_with_role(self.viewer.layers, *GENE_ROLES[:4])}
            show_warning(f"gene '{text.strip()}' is not in any open layer{max(hints, default='')}")
            return False
        self._switching = True
        try:
            self._switch_to(gene)
        finally:
            self._switching = False
        if layers_with_role(self.viewer.layers, ROLE_COMPARE):
            self.compare()
        return True

    def _switch_to(self, gene: str) -> None:
        self.gene = gene
        self.search.value = gene
        measured_before = {id(lyr) for lyr in layers_with_role(self.viewer.layers, ROLE_SPOTS) if lyr.visible}
        shown, lacking = [], []
        for layer in layers_with_role(self.viewer.layers, ROLE_SPOTS, ROLE_PRED_SPOTS, ROLE_HEATMAP,
                                      ROLE_UNCERTAINTY):
            meta = histosge_meta(layer)
            if gene not in meta["adata"].var_names:
                if layer.visible:
                    layer.visible, meta[HIDDEN_FLAG] = False, True
                    lacking.append(layer.name)
                continue
            if meta.pop(HIDDEN_FLAG, False):
                layer.visible = True  # repainted by _visibility_changed
            elif layer.visible:
                self._paint(layer, gene)
            else:  # repainted when shown (_visibility_changed); named after the gene already
                rename_hidden(layer, gene)
            shown.append(layer)
        heatmaps = [lyr for lyr in shown if histosge_meta(lyr)["role"] == ROLE_HEATMAP]
        note = f"; not in (hidden): {', '.join(lacking)}" if lacking else ""
        if any(histosge_meta(lyr)["role"] != ROLE_SPOTS for lyr in self.viewer.layers if lyr.name in lacking):
            note += ("; a model predicts only the genes it was trained on: shown here before training (or under "
                     "the Train widget's \"always include\", --include-genes), the next model predicts it")
        measured = [lyr for lyr in shown if histosge_meta(lyr)["role"] == ROLE_SPOTS]
        if lacking and measured and not any(lyr.visible for lyr in shown):
            measured[-1].visible = True  # the gene is only measured: show the measurement (repainted when shown)
        reshown = [lyr for lyr in measured if lyr.visible and id(lyr) not in measured_before]
        if lacking and reshown:
            note += f"; showing the measured '{reshown[-1].name}'"
        under = [name for lyr in heatmaps if lyr.visible for name in self._hide_measured_under(lyr)]
        if under:
            note += f"; measured spots under the map hidden ({', '.join(under)}; the comparison shows both)"
        self._bind_legend(self._best_legend_layer())
        self._update_pcc(gene, heatmaps, note)

    def _update_pcc(self, gene: str, heatmaps: list, note: str = "") -> None:
        parts = []
        for layer in heatmaps:
            meta = histosge_meta(layer)
            source = measured_source(layer, self.viewer.layers)
            if source is None or gene not in source.var_names or not can_compare(meta["adata"]):
                continue
            r = gene_pcc(meta["adata"], source, gene, log_source=self._log_of(source))
            self.pcc[layer.name] = r
            parts.append(f"PCC {r:.3f}" if np.isfinite(r) else "PCC n/a (constant)")
        set_status(self.info, (f"{gene}: " + ", ".join(parts) if parts else gene) + note)
        if parts:
            self.info.tooltip = (self.info.tooltip or "") + PCC_NOTE

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

    # ------------------------------------------------------------------ figure
    def export_figure(self, path: str | None = None, *, background: bool = False):
        """Write the canvas with the legend and a scale bar to ``path`` (asked for when ``None``).

        Returns the path written, or ``None`` when the dialog was cancelled or the write failed
        (the status line says why). ``background``: the canvas is captured now and the file
        written in a background worker (:attr:`figure_worker`; the status line says when it is
        done); the path it will write is returned.
        """
        from ...errors import InputError
        from .figure_export import ask_figure_path, capture_figure, write_captured

        path = path if path is not None else ask_figure_path(self.native)
        if path is None:
            return None
        try:
            captured = capture_figure(self.viewer, self.colorbar, path)
            if background:
                return self._write_behind(path, captured)
            written = write_captured(path, *captured)
        except InputError as exc:
            set_status(self.info, f"figure not written: {exc}")
            return None
        set_status(self.info, f"figure written to {written}")
        return written

    def _write_behind(self, path: str, captured: tuple):
        """Write a captured figure in a background worker (rendering it can take seconds)."""
        from pathlib import Path

        from napari.qt.threading import create_worker

        from .figure_export import write_captured

        set_status(self.info, f"writing the figure to {path}...")
        # errors are shown in the status line; without _ignore_errors superqt re-raises them as a traceback
        worker = create_worker(write_captured, path, *captured, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda written: set_status(self.info, f"figure written to {written}"))
        worker.errored.connect(lambda exc: set_status(self.info, f"figure not written: {exc}"))
        self.figure_worker = worker
        worker.start()
        return Path(path)

    # ------------------------------------------------------------------ comparison
    def _comparable(self):
        """``(heatmap, predictions, measured spots)`` of the newest comparable heatmap, or ``None``."""
        for layer in reversed(layers_with_role(self.viewer.layers, ROLE_HEATMAP)):
            source = measured_source(layer, self.viewer.layers)
            if source is not None and can_compare(histosge_meta(layer)["adata"]):
                return layer, histosge_meta(layer)["adata"], source
        return None

    def compare(self) -> list:
        """Add observed | predicted | difference panels for the current gene, or repaint open ones in place."""
        from napari.utils.notifications import show_warning

        found = self._comparable()
        gene = self.gene or self._resolve(self.search.value)
        if found is None or gene is None:
            show_warning("Super-resolve (or open saved predictions and the spot data they came from) and pick "
                         "a gene; the comparison needs predictions at positions with parent spots, and measurements.")
            return []
        _, pred, source = found
        panels = layers_with_role(self.viewer.layers, ROLE_COMPARE, ROLE_COMPARE_TITLES)
        if gene not in source.var_names or gene not in pred.var_names:
            for layer in panels:
                if layer.visible:
                    layer.visible = False
            self.diff_colorbar.setVisible(False)
            self.observed_colorbar.setVisible(False)
            message = f"gene '{gene}' is not both measured and predicted" + (
                "; comparison panels hidden" if panels else "")
            show_warning(message)
            set_status(self.info, f"{status_of(self.info)}; {message}")
            return []
        titles = layers_with_role(self.viewer.layers, ROLE_COMPARE_TITLES)
        if titles and histosge_meta(titles[0]).get("pred") is pred and histosge_meta(titles[0]).get("source") is source:
            return self._repaint_comparison(gene, titles[0])
        if panels:
            self.close_comparison()
        return self._add_comparison(gene, pred, source)

    def _add_comparison(self, gene: str, pred, source) -> list:
        import napari.layers

        slide = next((lyr for lyr in layers_with_role(self.viewer.layers, ROLE_SLIDE)
                      if histosge_meta(lyr).get("adata") is source), None)
        slide_tuple = None
        if slide is not None:
            slide_tuple = (list(slide.data) if slide.multiscale else slide.data, {
                "name": slide.name, "rgb": True, "multiscale": slide.multiscale, "scale": tuple(slide.scale),
                "translate": tuple(slide.translate), "contrast_limits": (0, 255),
                "units": tuple(str(u) for u in slide.units)}, "image")
        added = []
        layers = comparison_layers(pred, source, gene, log_source=self._log_of(source), slide=slide_tuple)
        for data, kwargs, kind in layers:
            added.append(self.viewer.add_layer(napari.layers.Layer.create(data, kwargs, kind)))
        titles = added[-1]
        histosge_meta(titles).update(pred=pred, source=source, geometry=histosge_meta(added[0])["geometry"])
        self.viewer.reset_view()
        self._comparison_opened(gene, added)
        return added

    def _repaint_comparison(self, gene: str, titles) -> list:
        """Update the open panels to ``gene`` in place (no layer removed or added)."""
        meta = histosge_meta(titles)
        panels = {p.label: p for p in panels_for(meta["pred"], meta["source"], gene, meta["geometry"],
                                                 log_source=self._log_of(meta["source"]))}
        images = [lyr for lyr in layers_with_role(self.viewer.layers, ROLE_COMPARE)
                  if histosge_meta(lyr).get("gene") is not None]
        for layer in images:
            panel = panels[histosge_meta(layer)["panel"]]
            histosge_meta(layer)["gene"] = gene
            set_image_values(layer, panel.image, panel.limits)
            layer.name = f"{gene} {panel.label}"
        wanted = [p.title for p in panels.values()]
        if list(titles.features["title"]) != wanted:  # titles are gene-independent: normally unchanged
            titles.features = titles.features.assign(title=wanted)
            titles.text.refresh(titles.features)
        for layer in layers_with_role(self.viewer.layers, ROLE_COMPARE, ROLE_COMPARE_TITLES):
            if not layer.visible:  # each visibility change rebuilds napari's scene graph
                layer.visible = True
        self._comparison_opened(gene, images)
        return images

    def _comparison_opened(self, gene: str, layers: list) -> None:
        images = {histosge_meta(lyr).get("panel"): lyr for lyr in layers if histosge_meta(lyr).get("gene")}
        for label, bar in (("observed", self.observed_colorbar), (DIFF_PANEL, self.diff_colorbar)):
            panel = images.get(label)
            if panel is not None:
                lo, hi = panel.contrast_limits
                bar.set_range(f"{gene} {label}", lo, hi, colormap=panel.colormap, units=UNITS)
                bar.setVisible(True)
        if "predicted" in images:
            self._bind_legend(images["predicted"])
        self.close_compare_button.visible = True

    def _comparison_closed(self) -> None:
        self.diff_colorbar.setVisible(False)
        self.observed_colorbar.setVisible(False)
        self.close_compare_button.visible = False

    def close_comparison(self) -> None:
        """Remove the comparison panels (one batched removal: napari collects garbage once)."""
        panels = layers_with_role(self.viewer.layers, ROLE_COMPARE, ROLE_COMPARE_TITLES)
        with self.viewer.layers.batched_update():
            for layer in panels:
                self.viewer.layers.remove(layer)
        self._comparison_closed()
        self._bind_legend(self._best_legend_layer())
