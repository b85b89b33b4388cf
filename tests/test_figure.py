"""Figures of expression maps: layout, formats, scale bars, atomic writes, rendering and ``histosge figure``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_histosge.errors import InputError
from napari_histosge.export import figure as F
from napari_histosge.export.raster import nn_spacing
from napari_histosge.export.render import find_slide, heatmap_rgba, pick_gene, render_map
from napari_histosge.outputs import write_h5ad

STOPS = heatmap_rgba(np.linspace(0.0, 1.0, 33))


def legend(title: str = "ERBB2") -> F.Legend:
    return F.Legend(title=title, vmin=0.25, vmax=3.5, colormap=STOPS, units="log1p(counts per 1e4)")


def image(h: int = 120, w: int = 600) -> np.ndarray:
    out = np.zeros((h, w, 4), np.uint8)
    out[..., 0], out[..., 3] = 200, 255
    return out


def svg_texts(path: Path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- write_figure
def test_png_is_written_with_the_image_pixel_for_pixel(tmp_path: Path) -> None:
    out = F.write_figure(tmp_path / "fig.png", image(), legend=legend(), um_per_image_px=2.0)
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.width == 600  # one image pixel per figure pixel
        assert png.height > 120  # the footer below the image
        top = np.asarray(png.convert("RGB"))[60, 300]
    assert tuple(top) == (200, 0, 0)


def test_svg_keeps_gene_units_limits_and_scale_bar_as_text(tmp_path: Path) -> None:
    out = F.write_figure(tmp_path / "fig.svg", image(), legend=legend(), um_per_image_px=2.0, title="B4")
    texts = svg_texts(out)
    assert any("ERBB2" in t and "log1p(counts per 1e4)" in t for t in texts)
    assert "0.25" in texts and "3.5" in texts
    assert "200 µm" in texts  # a fifth of 600 px x 2 µm = 240 µm, rounded to 200
    assert "B4" in texts
    assert out.read_text(encoding="utf-8").count("<image") == 1  # only the map is a raster


def test_pdf_is_written(tmp_path: Path) -> None:
    out = F.write_figure(tmp_path / "fig.PDF", image(), legend=None, um_per_image_px=None)
    assert out.read_bytes().startswith(b"%PDF")


def test_without_a_pixel_size_there_is_no_scale_bar_and_the_figure_says_so(tmp_path: Path) -> None:
    texts = svg_texts(F.write_figure(tmp_path / "fig.svg", image(), legend=None, um_per_image_px=None))
    assert not any("µm" in t or " mm" in t for t in texts)
    assert any("pixel size unknown" in t for t in texts)
    assert not any("ERBB2" in t for t in texts)  # no legend either


@pytest.mark.parametrize(("target", "nice"), [(240, 200), (480, 500), (700, 500), (760, 1000), (1400, 1000),
                                              (3300, 5000), (0.3, 0.2), (15, 20)])
def test_scale_bar_length_is_round(target: float, nice: float) -> None:
    assert F.nice_length(target) == pytest.approx(nice)


def test_scale_bar_is_about_a_fifth_of_the_width() -> None:
    assert F.scale_bar_length(1000, 5.0) == (1000.0, "1 mm")
    assert F.scale_bar_length(1000, 2.5) == (500.0, "500 µm")
    for width, um in ((800, 0.73), (1600, 4.4), (333, 1.9)):
        length, _ = F.scale_bar_length(width, um)
        assert 0.12 < length / (width * um) < 0.32


def test_bad_suffix_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.png, \.svg, \.pdf.*\.jpg"):
        F.write_figure(tmp_path / "fig.jpg", image(), legend=None, um_per_image_px=None)
    assert not (tmp_path / "fig.jpg").exists()


def test_bad_image_and_pixel_size_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="RGB"):
        F.write_figure(tmp_path / "fig.png", np.zeros((4, 4)), legend=None, um_per_image_px=None)
    with pytest.raises(InputError, match="pixel size"):
        F.write_figure(tmp_path / "fig.png", image(), legend=None, um_per_image_px=-1.0)


def test_a_failing_write_leaves_the_earlier_figure_intact(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "fig.png"
    out.write_bytes(b"earlier figure")

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(InputError, match="disk is full"):
        F.write_figure(out, image(), legend=legend(), um_per_image_px=1.0)
    assert out.read_bytes() == b"earlier figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left behind


def test_legend_takes_the_plugin_colour_bars_stops() -> None:
    stops = [(0.0, (0, 0, 0, 0)), (1.0, (255, 255, 255, 255))]
    ramp = F.Legend("g", 0.0, 1.0, stops).ramp(4)
    assert ramp[0] == pytest.approx([0.125] * 4)
    assert ramp[-1] == pytest.approx([0.875] * 4)


# ----------------------------------------------------------------------------- render_map
def grid_prediction(values: np.ndarray, mpp: float | None = 2.0):
    import anndata as ad

    rows, cols = np.nonzero(np.isfinite(values))
    pred = ad.AnnData(X=values[rows, cols][:, None].astype(np.float32),
                      obs=pd.DataFrame({"grid_row": rows, "grid_col": cols}, index=[f"c{i}" for i in range(len(rows))]),
                      var=pd.DataFrame(index=["ERBB2"]))
    pred.obsm["spatial"] = np.column_stack([100 + cols * 10.0, 50 + rows * 10.0])
    pred.uns["histosge"] = {"grid": {"shape": list(values.shape), "cell_px": 10.0, "origin_xy": [100.0, 50.0]},
                            "units": "log1p(counts per 1e4)", **({"mpp": mpp} if mpp else {})}
    return pred


def test_render_map_paints_a_grid_cell_by_cell_on_white() -> None:
    values = np.full((4, 8), np.nan)
    values[1:3, 1:7] = 1.0
    values[1:3, 4:7] = 5.0  # the right half high
    img, um, leg = render_map(grid_prediction(values), "erbb2", limits=(0.0, 5.0), max_size=80)
    assert img.dtype == np.uint8 and img.shape[2] == 4 and max(img.shape[:2]) == 80
    assert um == pytest.approx(2.0 * 60 * 1.06 / 80)  # (6 filled cells x 10 px + margins) over 80 px, x 2 µm
    assert (leg.title, leg.vmin, leg.vmax, leg.units) == ("ERBB2", 0.0, 5.0, "log1p(counts per 1e4)")
    assert tuple(img[0, 0, :3]) == (255, 255, 255)  # outside every cell: the background
    h = img.shape[0]
    high, low = img[h // 2, 62, :3].astype(int), img[h // 2, 20, :3].astype(int)
    for got, value in ((high, 5.0), (low, 1.0)):  # inferno over white, opacity rising over the lowest 30%
        rgba = heatmap_rgba(np.array([value / 5.0]))[0]
        alpha = rgba[3] * 0.85
        assert got == pytest.approx((rgba[:3] * alpha + (1 - alpha)) * 255, abs=2)


def test_render_map_default_limits_are_robust() -> None:
    values = np.linspace(0.0, 10.0, 100).reshape(10, 10)
    _, _, leg = render_map(grid_prediction(values), "ERBB2", max_size=40)
    assert (leg.vmin, leg.vmax) == pytest.approx(np.percentile(values, [1, 99]))


def test_render_map_without_pixel_size_has_none() -> None:
    _, um, _ = render_map(grid_prediction(np.ones((3, 3)), mpp=None), "ERBB2", max_size=30)
    assert um is None


def test_render_map_paints_spots_over_the_recorded_slide(demo) -> None:
    img, um, leg = render_map(demo, demo.var_names[0], max_size=200)
    assert max(img.shape[:2]) == 200 and um is not None
    found = find_slide(demo)
    assert found is not None and found[0].name.endswith(".jpg")
    # the H&E shows under the map: not the plain white of a map without a slide
    white = demo.copy()
    white.uns["histosge"] = {k: v for k, v in demo.uns["histosge"].items() if k not in ("images", "image")}
    plain, _, _ = render_map(white, demo.var_names[0], max_size=200)
    assert plain.shape == img.shape
    assert np.abs(plain.astype(int) - img.astype(int)).mean() > 5
    assert tuple(plain[0, 0, :3]) == (255, 255, 255)


def spot_file(fold: int, keep_every_other: bool = True):
    """Predictions on a 10 x 10 lattice (pitch 100 px, spots 50 px across); a checkerboard of them when asked."""
    import anndata as ad

    rows, cols = np.mgrid[0:10, 0:10]
    keep = ((rows + cols) % 2 == 0).ravel() if keep_every_other else np.ones(100, bool)
    xy = np.column_stack([cols.ravel() * 100.0, rows.ravel() * 100.0])[keep]
    pred = ad.AnnData(X=np.full((len(xy), 1), 3.0, np.float32), var=pd.DataFrame(index=["ERBB2"]),
                      obs=pd.DataFrame(index=[f"s{i}" for i in range(len(xy))]))
    pred.obsm["spatial"] = xy
    pred.uns["histosge"] = {"fold": fold, "spot_diameter_px": 50.0, "units": "log1p(counts per 1e4)"}
    return pred


def coloured_share(img: np.ndarray) -> float:
    return float((img[..., :3] < 250).any(axis=2).mean())


def test_render_map_paints_spots_as_discs_and_leaves_the_gaps_of_a_scattered_file_empty() -> None:
    """A fold-1 file of every other spot (what ``histosge recover`` writes) is not filled in between."""
    scattered, _, _ = render_map(spot_file(1), "ERBB2", limits=(0.0, 3.0), max_size=400)
    full, _, _ = render_map(spot_file(1, keep_every_other=False), "ERBB2", limits=(0.0, 3.0), max_size=400)
    disc = np.pi * 25.0**2 / 100.0**2  # the share of the lattice a 50 px spot covers
    # a 10 x 10 lattice spans about 9.5 pitches plus margins: the share is of that square
    assert coloured_share(full) == pytest.approx(disc * 100 / (10 * 1.06) ** 2, rel=0.25)
    assert coloured_share(scattered) == pytest.approx(coloured_share(full) / 2, rel=0.25)
    dense, _, _ = render_map(spot_file(4, keep_every_other=False), "ERBB2", limits=(0.0, 3.0), max_size=400)
    assert coloured_share(dense) > 0.7  # a denser lattice stays a filled map


def test_render_map_bad_limits_and_unknown_gene(demo) -> None:
    with pytest.raises(InputError, match="low below high"):
        render_map(demo, demo.var_names[0], limits=(2.0, 1.0))
    with pytest.raises(InputError, match=f"close matches: {demo.var_names[0]}"):
        pick_gene(demo, demo.var_names[0] + "X")


# ----------------------------------------------------------------------------- histosge figure
@pytest.fixture(scope="module")
def prediction_file(demo, tmp_path_factory) -> Path:
    """A small 4x prediction of the demo section (its values plus noise), recording the demo's slide."""
    import anndata as ad

    from napari_histosge.io.preprocess import normalize_log1p

    log = normalize_log1p(demo)[:, :6]
    values = np.asarray(log.X.toarray() if hasattr(log.X, "toarray") else log.X, dtype=np.float32)
    offsets = 0.25 * nn_spacing(np.asarray(demo.obsm["spatial"])) * np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]])
    xy = (np.asarray(demo.obsm["spatial"])[:, None, :] + offsets[None]).reshape(-1, 2)
    pred = ad.AnnData(X=np.repeat(values, 4, axis=0), var=pd.DataFrame(index=list(log.var_names)),
                      obs=pd.DataFrame(index=[f"p{i}" for i in range(len(xy))]))
    pred.obsm["spatial"] = xy
    pred.uns["histosge"] = {**demo.uns["histosge"], "fold": 4, "model": "fake", "units": "log1p(counts per 1e4)"}
    return write_h5ad(tmp_path_factory.mktemp("pred") / "pred.h5ad", pred)


@pytest.mark.slow
def test_cli_writes_png_and_svg(prediction_file: Path, tmp_path: Path, capsys) -> None:
    import anndata as ad

    from napari_histosge.cli.main import main

    gene = str(ad.read_h5ad(prediction_file).var_names[2])
    png = tmp_path / "map.png"
    assert main(["figure", str(prediction_file), "--gene", gene.lower(), "--out", str(png), "--size", "300"]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.width == F.MIN_WIDTH_PX  # a 300 px map is centred in the narrowest figure
    svg = tmp_path / "map.svg"
    assert main(["figure", str(prediction_file), "--gene", gene, "--out", str(svg), "--limits", "0", "4",
                 "--title", "demo"]) == 0
    texts = svg_texts(svg)
    assert any(t.startswith(gene) for t in texts) and "0" in texts and "4" in texts
    assert any(t.endswith("µm") or t.endswith("mm") for t in texts)


def test_cli_missing_gene_is_one_line_and_status_2(prediction_file: Path, tmp_path: Path, capsys) -> None:
    import anndata as ad

    from napari_histosge.cli.main import main

    gene = str(ad.read_h5ad(prediction_file).var_names[0])
    out = tmp_path / "map.png"
    assert main(["figure", str(prediction_file), "--gene", gene + "X", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"gene '{gene}X'" in err and f"close matches: {gene}" in err
    assert not out.exists()
    assert main(["figure", str(prediction_file), "--gene", "ERBB2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()  # a gene the model was not trained on: how to add it
    assert len(err.splitlines()) == 1 and "--include-genes ERBB2" in err and '"always include"' in err
    assert not out.exists()


MBP_ID = "ENSG00000197971"  # a marker of the packaged table, named by id as DLPFC's matrices name it


@pytest.fixture(scope="module")
def prediction_by_id(prediction_file: Path, tmp_path_factory) -> Path:
    """The prediction file with its genes named by Ensembl id (the first MBP's, the others made up), no symbols."""
    import anndata as ad

    pred = ad.read_h5ad(prediction_file)
    pred.var_names = [MBP_ID, *(f"ENSG{900001 + i:011d}" for i in range(pred.n_vars - 1))]
    return write_h5ad(tmp_path_factory.mktemp("by_id") / "pred.h5ad", pred)


def test_cli_finds_a_symbol_on_predictions_named_by_id(prediction_by_id: Path, tmp_path: Path, capsys) -> None:
    from napari_histosge.cli.main import main

    out = tmp_path / "mbp.png"
    assert main(["figure", str(prediction_by_id), "--gene", "MBP", "--out", str(out), "--size", "64"]) == 0
    assert f"wrote {out}: MBP " in capsys.readouterr().out and out.is_file()  # the symbol, not the id
    table = tmp_path / "names.tsv"
    table.write_text("gene_id\tgene_name\nENSG00000900002\tMYGENE\n")
    assert main(["figure", str(prediction_by_id), "--gene", "MYGENE", "--out", str(out), "--size", "64",
                 "--gene-names", str(table)]) == 0
    assert ": MYGENE " in capsys.readouterr().out
    bad = tmp_path / "bad.tsv"
    bad.write_text("MYGENE\n")
    out.unlink()
    assert main(["figure", str(prediction_by_id), "--gene", "MYGENE", "--out", str(out),
                 "--gene-names", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs two columns" in err[0] and not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--out", "fig.jpg"], "is none of them"),
    (["--out", "fig.png", "--limits", "3", "1"], "LO below HI"),
    (["--out", "fig.png", "--slide", "/no/such.svs"], "--slide"),
])
def test_cli_checks_options_first(prediction_file: Path, tmp_path: Path, capsys, monkeypatch, extra, message) -> None:
    from napari_histosge.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["figure", str(prediction_file), "--gene", "G", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_trim_background_cuts_plain_border_bars_only():
    from napari_histosge.export.figure import trim_background

    image = np.zeros((10, 20, 4), np.uint8)
    image[2:8, 5:15, :3] = 200  # the data
    image[4, 9, :3] = 0  # a background-coloured pixel inside the data stays
    trimmed = trim_background(image, (0, 0, 0))
    assert trimmed.shape == (6, 10, 4) and trimmed[2, 4, 0] == 0
    blank = np.zeros((5, 5, 3), np.uint8)
    assert trim_background(blank, (0, 0, 0)).shape == blank.shape  # nothing shown: left as is
