"""Regions: positions inside drawn polygons, their tables, the GeoJSON round trip and ``histosge region``."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_histosge.cli.main import main
from napari_histosge.errors import InputError
from napari_histosge.export.regions import (
    OUTSIDE,
    Region,
    assign_regions,
    expression_values,
    read_regions,
    region_tables,
    regions_geojson,
    summary_path,
    write_region_outputs,
)


def square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]


def grid_section(n: int = 6, *, prediction: bool = False) -> ad.AnnData:
    """``n x n`` positions 10 px apart; gene A is high on the left half, gene B everywhere 1 count."""
    yy, xx = np.mgrid[0:n, 0:n]
    xy = np.column_stack([xx.ravel() * 10.0, yy.ravel() * 10.0])
    left = xy[:, 0] < n * 5
    x = np.column_stack([np.where(left, 9.0, 1.0), np.ones(len(xy)), np.full(len(xy), 90.0)])
    adata = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame(index=[f"s{i}" for i in range(len(xy))]),
                       var=pd.DataFrame(index=["A", "B", "C"]))
    adata.obsm["spatial"] = xy
    if prediction:
        adata.uns["histosge"] = {"fold": 1}
    return adata


def test_assign_regions_holes_and_overlap_order() -> None:
    xy = np.array([[5.0, 5.0], [15.0, 15.0], [25.0, 5.0], [50.0, 50.0]])
    ring = Region("ring", square(0, 0, 30), [square(10, 10, 10)])
    right = Region("right", square(20, 0, 20))
    names = assign_regions(xy, [ring, right])
    # (15, 15) sits in the hole; (25, 5) is in both: the first region listed wins
    assert list(names) == ["ring", OUTSIDE, "ring", OUTSIDE]
    assert list(assign_regions(xy, [right, ring])) == ["ring", OUTSIDE, "right", OUTSIDE]


def test_region_tables_values_means_and_order() -> None:
    adata = grid_section(prediction=True)  # predictions: values taken as they are
    positions, summary = region_tables(adata, [Region("left", square(-1, -1, 26))])
    assert positions.index.name == "id"
    assert list(positions.columns[:3]) == ["region", "x", "y"]
    assert len(positions) == 9 and set(positions["region"]) == {"left"}
    assert np.allclose(positions["A"], 9.0)
    row = summary.set_index("gene").loc["A"]
    assert row["n_positions"] == 9 and row["mean"] == pytest.approx(9.0)
    # the rest of the section: 9 more left positions at 9, 18 right ones at 1
    assert row["mean_outside"] == pytest.approx((9 * 9 + 18 * 1) / 27)
    assert summary["gene"].iloc[0] == "A" and summary["difference"].is_monotonic_decreasing


def test_measured_counts_are_normalised_over_every_gene() -> None:
    adata = grid_section()
    values = expression_values(adata, ["A"])
    total = adata.X.sum(axis=1)
    expected = np.log1p(np.asarray(adata.X[:, 0]) / total * 1e4)
    assert np.allclose(values["A"].to_numpy(), expected, rtol=1e-5)


def test_unknown_gene_and_regions_off_the_data_are_one_clear_error() -> None:
    adata = grid_section(prediction=True)
    with pytest.raises(InputError, match="gene 'NOPE' is not in the data"):
        region_tables(adata, [Region("left", square(-1, -1, 26))], ["A", "NOPE"])
    with pytest.raises(InputError, match="no position lies inside the 1 region.*span x 0-50, y 0-50"):
        region_tables(adata, [Region("far", square(1000, 1000, 10))])


def test_bad_rings_are_refused() -> None:
    with pytest.raises(InputError, match="at least 3 finite points"):
        Region("line", [[0, 0], [1, 1]])
    with pytest.raises(InputError, match="not a list of"):
        Region("junk", "abc")


def test_geojson_round_trip_names_holes_and_qupath_classes(tmp_path: Path) -> None:
    regions = [Region("tumour", square(0, 0, 30), [square(10, 10, 5)]), Region("stroma", square(40, 0, 10))]
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps(regions_geojson(regions)))
    back = read_regions(path)
    assert [r.name for r in back] == ["tumour", "stroma"]
    assert len(back[0].holes) == 1
    assert np.allclose(back[0].exterior[:4], regions[0].exterior)
    qupath = {"type": "Feature", "properties": {"classification": {"name": "Immune cells"}},
              "geometry": {"type": "MultiPolygon", "coordinates": [[square(0, 0, 5)], [square(9, 9, 5)]]}}
    path.write_text(json.dumps(qupath))
    assert [r.name for r in read_regions(path)] == ["Immune cells", "Immune cells #2"]
    path.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    with pytest.raises(InputError, match="no Polygon"):
        read_regions(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="cannot read the regions"):
        read_regions(path)


def test_outputs_written_atomically_beside_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adata = grid_section(prediction=True)
    regions = [Region("left", square(-1, -1, 26))]
    positions, summary = region_tables(adata, regions)
    out = tmp_path / "sel.csv"
    written = write_region_outputs(out, positions, summary, regions=regions)
    assert written == [out, summary_path(out), tmp_path / "sel.geojson"]
    assert pd.read_csv(out, index_col="id").shape == (9, 6)
    assert [r.name for r in read_regions(tmp_path / "sel.geojson")] == ["left"]
    before = out.read_bytes()

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(InputError, match="disk is full"):
        write_region_outputs(out, positions, summary, regions=regions)
    assert out.read_bytes() == before  # the earlier table stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel.csv", "sel.geojson", "sel_summary.csv"]


def test_cli_region_on_a_prediction_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred = tmp_path / "pred.h5ad"
    grid_section(prediction=True).write_h5ad(pred)
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps(regions_geojson([Region("left", square(-1, -1, 26))])))
    out = tmp_path / "t.csv"
    assert main(["region", str(pred), "--regions", str(regions), "--out", str(out), "--genes", "A,C"]) == 0
    text = capsys.readouterr().out
    assert "left: 9 of 36 positions" in text and "A +" in text
    table = pd.read_csv(out, index_col="id")
    assert list(table.columns) == ["region", "x", "y", "A", "C"]
    assert set(pd.read_csv(tmp_path / "t_summary.csv")["gene"]) == {"A", "C"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--genes", "NOPE"], "1 requested gene(s) are not in the data: 'NOPE'"),  # from the header, before any read
    (["--summary", "{out}"], "--summary and --out name the same file"),
    (["--regions", "{tmp}/missing.geojson"], "regions file (--regions)"),
])
def test_cli_region_bad_input_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       extra: list[str], message: str) -> None:
    pred = tmp_path / "pred.h5ad"
    grid_section(prediction=True).write_h5ad(pred)
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps(regions_geojson([Region("left", square(-1, -1, 26))])))
    out = tmp_path / "t.csv"
    argv = ["region", str(pred), "--regions", str(regions), "--out", str(out)]
    argv += [e.format(out=out, tmp=tmp_path) for e in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_cli_region_on_a_real_section(her2st_b4: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from napari_histosge.io import read_spots

    xy = np.asarray(read_spots(her2st_b4).obsm["spatial"])
    (x0, y0), (x1, y1) = xy.min(axis=0) - 10, xy.max(axis=0) + 10
    mid = (x0 + x1) / 2
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps(regions_geojson([Region("left", [[x0, y0], [mid, y0], [mid, y1], [x0, y1]])])))
    out = tmp_path / "b4.csv"
    assert main(["region", str(her2st_b4), "--regions", str(regions), "--out", str(out),
                 "--genes", "ERBB2,GRB7"]) == 0
    table = pd.read_csv(out, index_col="id")
    assert len(table) == int((xy[:, 0] < mid).sum())
    assert (table["x"] < mid).all() and list(table.columns[-2:]) == ["ERBB2", "GRB7"]


@pytest.mark.parametrize("coordinates", [5, [5], "ring"])
def test_malformed_polygon_coordinates_are_one_line(tmp_path: Path, coordinates) -> None:
    from napari_histosge.export.regions import read_regions

    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": coordinates}}]}))
    with pytest.raises(InputError) as err:
        read_regions(path)
    assert len(str(err.value).splitlines()) == 1 and "bad.geojson" in str(err.value)
