"""Visium HD bins in a real (headless) viewer: a raster of the bin grid, in place, recoloured by gene.

The bins are the synthetic output of hd_fixture.py (no real HD data on these machines),
on a slightly rotated grid so the raster's affine placement is tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hd_fixture import make_visium_hd
from napari_histosge.io import read_spots
from napari_histosge.io.preprocess import normalize_log1p
from napari_histosge.plugin.widgets import layers as L
from napari_histosge.plugin.widgets.gene_viewer import GeneViewerWidget

ANGLE = 0.05


@pytest.fixture(scope="module")
def hd(tmp_path_factory) -> dict:
    return make_visium_hd(tmp_path_factory.mktemp("hd"), n=20, angle=ANGLE)


def _bin_pixel(layer, adata, k: int) -> tuple[int, int]:
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    return int(rows[k] - rows.min()), int(cols[k] - cols.min())


@pytest.mark.slow
def test_bins_are_one_raster_pixel_each_in_the_world_frame(make_napari_viewer, hd: dict) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(hd["folder"]), plugin="napari-histosge")
    [bins] = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)
    assert bins._type_string == "image"  # not Points
    adata = L.histosge_meta(bins)["adata"]
    assert adata.uns["histosge"]["bins"]["bin_um"] == 16
    mpp = adata.uns["histosge"]["mpp"]
    rows, cols = adata.obs["array_row"], adata.obs["array_col"]
    assert bins.data.shape == (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)  # the tissue's box
    assert np.isfinite(bins.data).sum() == adata.n_obs
    gene = L.histosge_meta(bins)["gene"]
    log = normalize_log1p(adata)
    expected = np.asarray(log[:, gene].X.toarray()).ravel()
    for k in (0, adata.n_obs // 2, adata.n_obs - 1):
        i, j = _bin_pixel(bins, adata, k)
        assert bins.data[i, j] == pytest.approx(expected[k], rel=1e-6)
        # the pixel's centre is the bin's centre, in µm as (row, col) = (y, x), rotation included
        world = np.asarray(bins.data_to_world((i, j)))
        np.testing.assert_allclose(world, adata.obsm["spatial"][k, ::-1] * mpp, atol=1e-6)
    # the H&E under it sits in the same micrometre frame
    [slide] = L.layers_with_role(viewer.layers, L.ROLE_SLIDE)
    assert tuple(str(u) for u in slide.units) == tuple(str(u) for u in bins.units)


@pytest.mark.slow
def test_gene_viewer_recolours_the_bins_in_place_by_symbol_or_id(make_napari_viewer, hd: dict) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(hd["folder"]), plugin="napari-histosge")
    widget = GeneViewerWidget(viewer)
    [bins] = L.layers_with_role(viewer.layers, L.ROLE_SPOTS)
    adata = L.histosge_meta(bins)["adata"]
    log = normalize_log1p(adata)
    for typed, gene in (("KRT19", "KRT19"), ("ensg00000000007", "VIM")):
        assert widget.show_gene(typed)
        assert widget.gene == gene and L.histosge_meta(bins)["gene"] == gene
        assert L.layers_with_role(viewer.layers, L.ROLE_SPOTS) == [bins]  # the same layer, repainted
        values = np.asarray(log[:, gene].X.toarray()).ravel()
        i, j = _bin_pixel(bins, adata, 3)
        assert bins.data[i, j] == pytest.approx(values[3], rel=1e-6)
        assert bins.contrast_limits == pytest.approx([values.min(), values.max()])
    assert "ENSG00000000007" in widget._model.stringList()  # ids are offered as well as names
    assert not widget.show_gene("NOT_A_GENE")


def test_bins_without_a_grid_fall_back_to_points(hd: Path) -> None:
    adata = read_spots(hd["folder"], bin_um=8)
    assert L.spots_layer(adata)[2] == "image"
    del adata.uns["histosge"]["bins"]
    assert L.bin_raster(adata) is None and L.spots_layer(adata)[2] == "points"
