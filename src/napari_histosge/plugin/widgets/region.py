"""The Regions widget: draw polygons or lassos over the slide, see which spots or grid cells they hold, export.

The drawing is a napari Shapes layer ("regions") in the world frame. Each change of the
drawing reassigns the positions of the chosen layer (a measured spots layer, predicted
spots or a grid map) to the regions, writes that assignment back as the ``region``
feature of a spots layer (and ``obs["region"]`` of its AnnData), and summarises the regions
in a background thread: per region, the genes most above the rest of the section. Regions
can also be loaded from GeoJSON (an earlier export, QuPath annotations). Export
writes the same tables as ``histosge region`` (the positions, the summary) and the regions
as GeoJSON in full-resolution pixels, so the drawing can be replayed on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton, Table
from qtpy.QtCore import QTimer

from ...errors import InputError
from ...progress import Progress
from .layers import (
    META_KEY,
    ROLE_HEATMAP,
    ROLE_PRED_SPOTS,
    ROLE_SPOTS,
    histosge_meta,
    layers_with_role,
    um_per_px,
)
from .status import set_status, status_label
from .worker import Outcome, start_job, warm_up_in_background

if TYPE_CHECKING:
    import napari

#: Role of the Shapes layer the regions are drawn in.
ROLE_REGIONS = "regions"
#: Roles of the layers whose positions the regions can select.
TARGET_ROLES = (ROLE_SPOTS, ROLE_PRED_SPOTS, ROLE_HEATMAP)
#: Genes listed per region in the widget's table (the export holds every gene).
TOP_GENES = 5
#: Height (px) below which the summary table does not shrink.
TABLE_MIN_HEIGHT = 150
#: Shape types that enclose an area (paths and lines select nothing).
AREA_TYPES = ("polygon", "rectangle", "ellipse")
#: Vertices of the polygon an ellipse is read as.
ELLIPSE_VERTICES = 64
#: A drawn edge is the data's extent over this wide.
EDGE_SHARE = 400
#: Quiet time after the last edit before the selection is recomputed (a lasso emits many events).
DEBOUNCE_MS = 250


def shape_polygon(vertices: np.ndarray, shape_type: str) -> np.ndarray | None:
    """An area shape's outline as ``(n, 2)`` world ``(row, col)`` vertices; ``None`` for a path or line.

    An ellipse's four vertices are the corners of its bounding box (rotated with it).
    """
    vertices = np.asarray(vertices, dtype=np.float64)[:, -2:]
    if shape_type not in AREA_TYPES or len(vertices) < 3:
        return None
    if shape_type == "ellipse":
        centre = vertices.mean(axis=0)
        half_a, half_b = (vertices[1] - vertices[0]) / 2, (vertices[3] - vertices[0]) / 2
        t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]
        return centre + np.cos(t) * half_a + np.sin(t) * half_b
    return vertices


def drawn_regions(shapes, mpp: float | None) -> list:
    """The regions of a Shapes layer, in full-resolution pixels ``(x, y)`` of data placed with ``mpp``.

    A shape is named by its ``name`` feature when it has one, else ``region k`` (k counting
    the shapes from 1). Paths and lines enclose nothing and are left out.
    """
    from ...export.regions import Region

    u = mpp or 1.0
    names = shapes.features["name"] if "name" in shapes.features else None
    regions = []
    for i, (vertices, kind) in enumerate(zip(shapes.data, shapes.shape_type, strict=True)):
        world = np.array([shapes.data_to_world(v) for v in vertices], dtype=np.float64).reshape(-1, 2)
        outline = shape_polygon(world, kind)
        name = str(names.iloc[i]).strip() if names is not None and isinstance(names.iloc[i], str) else ""
        name = name or f"region {i + 1}"
        if outline is not None:
            regions.append(Region(name, outline[:, ::-1] / u))
    return regions


def set_shape_names(shapes, names: dict[int, str]) -> None:
    """Set the ``name`` feature of shapes ``{index: name}`` (one features update, so one refresh)."""
    features = shapes.features.copy()
    features["name"] = features["name"].astype(object) if "name" in features else ""
    for i, name in names.items():
        features.loc[features.index[i], "name"] = name
    shapes.features = features


def summary_job(adata, regions: list):
    """The region tables in the worker thread (a measured section holds thousands of genes)."""
    from ...export.regions import region_tables

    yield Progress("regions", 0, 1, "summarising the regions")
    return region_tables(adata, regions)


class RegionsWidget(Container):
    """Select spots or grid cells with drawn regions; summarise and export them."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.target = ComboBox(label="positions", choices=self._target_choices, nullable=True,
                               tooltip="the spots or grid map whose positions the regions select")
        self.draw = PushButton(text="Draw regions")
        self.draw.tooltip = ("adds (or selects) the 'regions' layer in lasso mode: draw freehand, or pick "
                             "polygon, rectangle or ellipse in the layer controls")
        self.load = PushButton(text="Load regions...")
        self.load.tooltip = ("add named regions from a GeoJSON file in full-resolution pixels (an earlier "
                             "export, QuPath annotations)")
        self.region_name = LineEdit(label="name",
                                    tooltip="name of the selected shapes (Enter): their rows in the export")
        self.region_name.native.setPlaceholderText("name the selected shapes (Enter)")
        self.table = Table(value=[], label="summary")
        self.table.native.verticalHeader().setVisible(False)
        self.table.native.setMinimumHeight(TABLE_MIN_HEIGHT)  # a few rows stay visible in a crowded dock
        self.table.native.setToolTip(f"per region, the {TOP_GENES} genes most above the rest of the section "
                                     "(mean log1p counts per 1e4); the export holds every gene")
        self.export = PushButton(text="Export tables...")
        self.export.tooltip = ("CSV of the selected positions and their values, CSV of the mean per region and "
                               "gene, and the regions as GeoJSON (for 'histosge region DATA --regions')")
        self.status = status_label()
        self.extend([self.target, self.draw, self.load, self.region_name, self.table, self.export, self.status])
        self.regions: list = []
        self.tables: tuple[Any, Any] | None = None
        self._job: Any = None
        self._stale = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.refresh)
        self.draw.changed.connect(self.start_drawing)
        self.load.changed.connect(lambda: self.load_regions())
        self.region_name.native.returnPressed.connect(self.rename_selected)
        self.target.changed.connect(self.schedule)
        self.export.changed.connect(lambda: self.export_tables())
        napari_viewer.layers.events.inserted.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(self._layers_changed)
        for layer in napari_viewer.layers:
            self._watch(layer)
        self.target.value = self._default_target()
        # the first region's summary job would import these (torch included) on the event loop
        warm_up_in_background(("napari_histosge.export.regions",))
        set_status(self.status, "draw regions over the slide to select spots or grid cells")

    # ------------------------------------------------------------------ layers
    def _target_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_with_role(self.viewer.layers, *TARGET_ROLES)]

    def _default_target(self):
        """The newest prediction layer, else the newest spots layer."""
        for roles in ((ROLE_HEATMAP, ROLE_PRED_SPOTS), (ROLE_SPOTS,)):
            found = layers_with_role(self.viewer.layers, *roles)
            if found:
                return found[-1]
        return None

    def _layers_changed(self, event) -> None:
        if event.type == "inserted":
            self._watch(event.value)
        elif histosge_meta(event.value).get("role") == ROLE_REGIONS:
            self.schedule()  # the drawing is gone: so is the selection
        current = self.target.value
        self.target.reset_choices()
        if current is None or current not in self.viewer.layers:
            self.target.value = self._default_target()

    def _watch(self, layer) -> None:
        if histosge_meta(layer).get("role") == ROLE_REGIONS:
            layer.events.data.connect(self.schedule)
            layer.events.features.connect(self.schedule)

    def shapes_layer(self):
        """The regions layer, or ``None``."""
        found = layers_with_role(self.viewer.layers, ROLE_REGIONS)
        return found[-1] if found else None

    def regions_layer(self):
        """The regions layer, added (empty, in the target's units) when there is none."""
        shapes = self.shapes_layer()
        if shapes is None:
            target = self.target.value
            units = getattr(target, "units", None) if target is not None else None
            kwargs = {"units": units} if units is not None else {}
            # Edge widths are in world units: a fixed share of the data's extent reads the same at any size.
            extent = self.viewer.layers.extent.world
            width = float(np.max(extent[1] - extent[0])) / EDGE_SHARE if np.all(np.isfinite(extent)) else 4.0
            shapes = self.viewer.add_shapes(
                name="regions", edge_color="cyan", face_color=[0, 1, 1, 0.2], edge_width=max(width, 1e-6),
                features={"name": np.array([], dtype=object)}, feature_defaults={"name": ""},
                text={"string": "{name}", "color": "cyan", "size": 12, "anchor": "upper_left"},
                metadata={META_KEY: {"role": ROLE_REGIONS}}, **kwargs)
        return shapes

    def start_drawing(self) -> None:
        """Add (or select) the regions layer and enter lasso mode."""
        shapes = self.regions_layer()
        self.viewer.layers.selection.active = shapes
        try:
            shapes.mode = "add_polygon_lasso"
        except ValueError:  # a napari without the lasso
            shapes.mode = "add_polygon"

    def ask_regions_file(self) -> str | None:
        """A GeoJSON path from an open dialog (tests pass the path to :meth:`load_regions`)."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Load regions", "",
                                              "GeoJSON (*.geojson *.json);;All files (*)")
        return path or None

    def load_regions(self, path: str | Path | None = None) -> int:
        """Add the regions of a GeoJSON file (this widget's export, QuPath, ``histosge region``) as shapes.

        The file is in full-resolution pixels, as the chosen layer's section is; the shapes
        keep their names. Holes cannot be drawn by napari's shapes: such regions are added
        filled, and the status says so. Returns how many shapes were added.
        """
        from ...export.regions import read_regions

        target = self.target.value
        adata = histosge_meta(target).get("adata") if target is not None else None
        if adata is None:
            set_status(self.status, "open a section or predictions first: regions are placed on its positions")
            return 0
        path = path if path is not None else self.ask_regions_file()
        if path is None:
            return 0
        try:
            regions = read_regions(path)
        except InputError as exc:
            set_status(self.status, str(exc))
            return 0
        u = um_per_px(adata) or 1.0
        shapes = self.regions_layer()
        start = len(shapes.data)
        shapes.add_polygons([region.exterior[:, ::-1] * u for region in regions])
        set_shape_names(shapes, {start + i: region.name for i, region in enumerate(regions)})
        self.viewer.layers.selection.active = shapes
        holed = [r.name for r in regions if r.holes]
        message = f"loaded {len(regions)} region(s) from {Path(path).name}"
        if holed:
            message += (f"; {', '.join(holed)} had holes, which napari's shapes cannot show: they are filled "
                        f"here ('histosge region' keeps them)")
        set_status(self.status, message)
        self.schedule()
        return len(regions)

    def rename_selected(self) -> None:
        """Give the selected shapes the name typed in the name box."""
        shapes = self.shapes_layer()
        name = self.region_name.value.strip()
        if shapes is None or not shapes.selected_data or not name:
            set_status(self.status, "select shapes in the regions layer, type a name, press Enter")
            return
        set_shape_names(shapes, dict.fromkeys(shapes.selected_data, name))

    @staticmethod
    def label_unnamed(shapes) -> None:
        """Name each unnamed shape ``region k`` (as the export does), so the canvas labels it."""
        if len(shapes.data) == 0:
            return
        names = list(shapes.features["name"]) if "name" in shapes.features else [None] * len(shapes.data)
        named = [n.strip() if isinstance(n, str) and n.strip() else f"region {i + 1}" for i, n in enumerate(names)]
        if named == names:
            return
        features = shapes.features.copy()
        features["name"] = named
        shapes.features = features  # its event reschedules a refresh, which then finds every name set

    # ------------------------------------------------------------------ selection
    def schedule(self, *_: Any) -> None:
        """Recompute after the drawing has been still for a moment."""
        self._timer.start()

    def refresh(self) -> None:
        """Assign the target's positions to the drawn regions; summarise them in the background."""
        from ...export.regions import OUTSIDE, assign_regions

        shapes, target = self.shapes_layer(), self.target.value
        meta = histosge_meta(target) if target is not None else {}
        adata = meta.get("adata")
        self.tables = None
        if shapes is None or adata is None:
            self.regions = []
            self.table.clear()
            set_status(self.status, "draw regions over the slide to select spots or grid cells")
            return
        self.label_unnamed(shapes)
        self.regions = drawn_regions(shapes, um_per_px(adata))
        names = assign_regions(np.asarray(adata.obsm["spatial"]), self.regions)
        adata.obs["region"] = names
        if target.__class__.__name__ == "Points" and len(target.data) == len(names):
            features = target.features.copy()
            features["region"] = names
            target.features = features
        selected = names != OUTSIDE
        if not selected.any():
            self.table.clear()
            set_status(self.status, f"no position of {target.name} in the {len(self.regions)} region(s)")
            return
        set_status(self.status, f"{int(selected.sum())} of {len(names)} positions of {target.name} in "
                                f"{len(set(names[selected]))} region(s); summarising...")
        self._summarise(adata, target.name)

    def _summarise(self, adata, target_name: str) -> None:
        if self._job is not None:  # one summary at a time; the latest drawing is redone after it
            self._stale = True
            return
        regions = list(self.regions)

        def done(outcome: Outcome) -> None:
            self._job = None
            if self._stale:
                self._stale = False
                self.refresh()
                return
            if outcome.error is not None:
                set_status(self.status, str(outcome.error))
                return
            self.tables = outcome.value
            self.show_summary(target_name, adata.n_obs)

        self._job = start_job(lambda: summary_job(adata, regions), description="summarising regions", on_done=done)

    def show_summary(self, target_name: str, n_positions: int) -> None:
        """The top genes of each region in the table, and a one-line status."""
        assert self.tables is not None
        positions, summary = self.tables
        top = summary.groupby("region", sort=False).head(TOP_GENES)
        self.table.value = pd.DataFrame({
            "region": top["region"], "gene": top["gene"], "in": top["mean"].round(2),
            "rest": top["mean_outside"].round(2), "Δ": top["difference"].round(2),
        }).reset_index(drop=True)
        self.table.native.resizeColumnsToContents()
        counts = positions["region"].value_counts(sort=False)
        set_status(self.status, "; ".join(f"{r}: {n}" for r, n in counts.items())
                   + f" of the {n_positions} positions of {target_name}")

    # ------------------------------------------------------------------ export
    def ask_path(self) -> str | None:
        """A CSV path from a save dialog (tests pass the path to :meth:`export_tables`)."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self.native, "Export region tables", "regions.csv", "CSV (*.csv)")
        return path or None

    def export_tables(self, path: str | Path | None = None) -> list[Path]:
        """Write the positions table, the summary beside it and the regions' GeoJSON to ``path``."""
        from ...export.regions import write_region_outputs

        if self.tables is None:
            set_status(self.status, "nothing to export yet: draw a region around some positions first")
            return []
        path = path if path is not None else self.ask_path()
        if path is None:
            return []
        path = Path(path).with_suffix(".csv")
        try:
            written = write_region_outputs(path, *self.tables, regions=self.regions)
        except InputError as exc:
            set_status(self.status, str(exc))
            return []
        set_status(self.status, "wrote " + ", ".join(p.name for p in written) + f" in {path.parent}")
        return written
