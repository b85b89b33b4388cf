"""Property-based fuzzing of every reader: malformed input ends in one InputError line or a correct result.

Each reader gets a small valid input, written once by a helper, then damaged by generated
mutations: cells set to NaN, infinity, negative, fractional or text values; columns dropped,
added or repeated; rows repeated or cut to none or one; positions moved off the image;
files truncated, emptied, filled with other bytes or removed; folders named with spaces and
non-ASCII letters. Reading must either raise :class:`InputError` with a one-line message or
return a result that keeps the readers' contract; any other exception fails the test, and
hypothesis shrinks it to the smallest input that shows it (notes/fuzzing.md lists what was
found and fixed). The seed is fixed (``derandomize``) and the examples few, so the file runs
in about a minute and the same inputs are tried on every run; the section readers and the
checkpoints are fuzzed in the full run (``slow``), the cheap text readers in the quick tier too.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from napari_histosge.errors import InputError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def fuzz(examples: int):
    """The settings of every fuzz test: a fixed seed, ``examples`` inputs, no deadline, no example database."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def outcome(read: Callable[[], Any]) -> Any:
    """``read()``'s result, or ``None`` when it raised an InputError whose message is one line."""
    try:
        return read()
    except InputError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, repr(message)
        return None


def check_section(adata) -> None:
    """The readers' contract on what they return (docs/architecture.md), where reading succeeded."""
    assert adata.n_obs >= 1 and adata.n_vars >= 1
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    values = adata.X.data if hasattr(adata.X, "data") else np.asarray(adata.X)
    assert np.isfinite(values).all() and (values >= 0).all() and (values == np.round(values)).all()
    xy = np.asarray(adata.obsm["spatial"])
    assert xy.shape == (adata.n_obs, 2) and np.isfinite(xy).all()


# ----------------------------------------------------------------------------- mutations
BAD_VALUES = [math.nan, math.inf, -math.inf, -3, 2.5, 1e300, "x", "", "naïve 名前", " 7 "]
FOLDER_NAMES = ["plain", "with space", "ünïcødé 名前", "a,b;c"]

#: One damage to one file: which file (an index into the sorted files), what, and where.
damage = st.tuples(
    st.integers(0, 1000),
    st.sampled_from(["truncate", "empty", "garbage", "remove", "cell", "drop_column", "extra_column",
                     "repeat_row", "repeat_column", "keep_rows", "scale_positions", "json_value"]),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.sampled_from(BAD_VALUES + [0, 1, 10.0]),
)


def copy_section(template: Path, root: Path, name: str) -> Path:
    """``template`` (a folder or file) copied to ``root/name`` (keeping a file's suffix)."""
    target = root / (name + (template.suffix if template.is_file() else ""))
    if template.is_dir():
        shutil.copytree(template, target)
    else:
        shutil.copyfile(template, target)
    return target


def apply_damage(section: Path, change: tuple) -> None:
    """One generated change to one file of ``section`` (a folder, or a file damaged as bytes only)."""
    which, kind, at, where, value = change
    files = sorted(p for p in section.rglob("*") if p.is_file()) if section.is_dir() else [section]
    path = files[which % len(files)]
    table_file = path.name.endswith((".csv", ".tsv", ".tsv.gz", ".parquet"))
    if kind == "json_value" and path.suffix == ".json":
        _damage_json(path, at, value)
    elif table_file and kind in ("cell", "drop_column", "extra_column", "repeat_row", "repeat_column", "keep_rows",
                                 "scale_positions"):
        _damage_table(path, kind, at, where, value)
    else:
        _damage_bytes(path, kind if kind in ("truncate", "empty", "garbage", "remove") else "truncate", at)


def _damage_bytes(path: Path, kind: str, at: float) -> None:
    data = path.read_bytes()
    if kind == "remove":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        cut = int(len(data) * at)
        path.write_bytes(data[:cut] + bytes(range(256))[: max(1, len(data) - cut)] + data[cut + 256:])
    else:
        path.write_bytes(data[: int(len(data) * at)])


def _damage_json(path: Path, at: float, value: Any) -> None:
    try:
        content = json.loads(path.read_text())
    except ValueError:
        return
    if isinstance(content, dict) and content:
        key = sorted(content)[int(at * (len(content) - 1))]
        content[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    path.write_text(json.dumps(content))


def _read_table(path: Path) -> tuple[pd.DataFrame, dict]:
    if path.suffix == ".parquet":
        return pd.read_parquet(path), {}
    sep = "," if path.name.endswith(".csv") else "\t"
    header = 0
    with (__import__("gzip").open(path, "rt") if path.name.endswith(".gz") else open(path)) as fh:
        first = fh.readline()
    if path.name == "tissue_positions_list.csv" or not first.strip():
        header = None
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, header=header)
    return table, {"sep": sep, "header": header is not None}


def _damage_table(path: Path, kind: str, at: float, where: float, value: Any) -> None:
    try:
        table, form = _read_table(path)
    except Exception:  # noqa: BLE001 - a file an earlier change already broke: damage its bytes instead
        _damage_bytes(path, "truncate", at)
        return
    if table.shape[1] == 0:
        return
    row = int(at * max(len(table) - 1, 0))
    col = int(where * (table.shape[1] - 1))
    if kind == "cell" and len(table):
        table = table.astype(object)
        table.iat[row, col] = value
    elif kind == "drop_column":
        table = table.drop(columns=table.columns[col])
    elif kind == "extra_column":
        table["extra"] = value
    elif kind == "repeat_row" and len(table):
        table = pd.concat([table, table.iloc[[row]]])
    elif kind == "repeat_column" and table.shape[1] > 1:
        table.columns = [*table.columns[:-1], table.columns[col]]
    elif kind == "keep_rows":
        table = table.iloc[: int(at * 3)]
    elif kind == "scale_positions":
        for name in table.columns:
            if "pxl" in str(name) or "pixel" in str(name):
                table[name] = pd.to_numeric(table[name], errors="coerce") * (1e6 if at > 0.5 else -1)
    _write_table(table, path, form)


def _write_table(table: pd.DataFrame, path: Path, form: dict) -> None:
    if path.suffix == ".parquet":
        try:
            table.to_parquet(path)
        except Exception:  # noqa: BLE001 - mixed types pyarrow will not write: the column as text
            table.astype(str).to_parquet(path)
        return
    table = table.rename(columns=lambda c: "" if str(c).startswith("Unnamed: ") else c)
    compression = "gzip" if path.name.endswith(".gz") else None
    table.to_csv(path, sep=form["sep"], index=False, header=form["header"], compression=compression)


def fuzz_reader(template: Path, name: str, changes: list, read: Callable[[Path], Any]) -> None:
    """Copy ``template`` under a generated name, apply ``changes``, and check what ``read`` makes of it."""
    with tempfile.TemporaryDirectory() as tmp:
        section = copy_section(template, Path(tmp), name)
        for change in changes:
            if section.exists():
                apply_damage(section, change)
        result = outcome(lambda: read(section))
        if result is not None:
            check_section(result)


# ----------------------------------------------------------------------------- templates
@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small valid section per format, written once for the module."""
    from hd_fixture import make_visium_hd
    from test_io import make_spaceranger, make_st_v1

    root = tmp_path_factory.mktemp("fuzz-templates")
    made = {
        "st_v1": make_st_v1(root / "st", image="png")["folder"],
        "spaceranger": make_spaceranger(root / "sr", counts="mtx_gz")["folder"],
        "spaceranger_h5": make_spaceranger(root / "sr_h5", counts="h5")["folder"],
        "visium_hd": make_visium_hd(root / "hd", n=12)["folder"],
    }
    return made


def read(section: Path):
    from napari_histosge.io import read_spots

    return read_spots(section)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["st_v1", "spaceranger", "spaceranger_h5", "visium_hd"])
def test_folder_readers_survive_damaged_files(fmt: str, templates) -> None:
    examples = {"st_v1": 40, "spaceranger": 30, "spaceranger_h5": 12, "visium_hd": 20}[fmt]

    @fuzz(examples)
    @given(name=st.sampled_from(FOLDER_NAMES), changes=st.lists(damage, min_size=1, max_size=3))
    def run(name, changes):
        fuzz_reader(templates[fmt], name, changes, read)

    run()


# ----------------------------------------------------------------------------- h5ad
cell_values = st.sampled_from([0, 1, 3, 7, math.nan, math.inf, -1, 0.5, 1e12])


@pytest.mark.slow
@fuzz(40)
@given(
    n_spots=st.sampled_from([0, 1, 2, 6]),
    n_genes=st.sampled_from([1, 2, 5]),
    edits=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), cell_values), max_size=3),
    spatial=st.sampled_from(["ok", "missing", "nan", "three_columns", "one_column", "off_image", "text"]),
    dtype=st.sampled_from(["float32", "int64", "float64", "bool"]),
    repeat=st.sampled_from(["none", "spot", "gene"]),
    truncate=st.sampled_from([None, 0.0, 0.5, 0.95]),
    name=st.sampled_from(FOLDER_NAMES),
)
def test_h5ad_reader_survives_malformed_files(n_spots, n_genes, edits, spatial, dtype, repeat, truncate, name):
    import anndata as ad

    rng = np.random.default_rng(0)
    x = rng.poisson(3, (n_spots, n_genes)).astype(np.float64)
    for row, col, value in edits:
        if n_spots:
            x[int(row * (n_spots - 1)), int(col * (n_genes - 1))] = value
    spots = [f"s{i}" for i in range(n_spots)]
    genes = [f"G{i}" for i in range(n_genes)]
    if repeat == "spot" and n_spots > 1:
        spots[1] = spots[0]
    if repeat == "gene" and n_genes > 1:
        genes[1] = genes[0]
    with np.errstate(invalid="ignore"):
        matrix = x.astype(dtype) if dtype != "bool" else x > 0
    adata = ad.AnnData(matrix, obs=pd.DataFrame(index=spots), var=pd.DataFrame(index=genes))
    xy = np.column_stack([np.arange(n_spots) * 100.0 + 50, np.full(n_spots, 80.0)])
    positions = {"ok": xy, "nan": np.where(xy > 100, np.nan, xy), "three_columns": np.c_[xy, xy[:, :1]],
                 "one_column": xy[:, :1], "off_image": xy * 1e9, "text": xy.astype(str)}
    if spatial in positions:
        adata.obsm["spatial"] = positions[spatial]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.h5ad"
        try:
            adata.write_h5ad(path)
        except Exception:  # noqa: BLE001 - anndata will not write it: nothing to read
            return
        if truncate is not None:
            path.write_bytes(path.read_bytes()[: int(path.stat().st_size * truncate)])
        result = outcome(lambda: read(path))
        if result is not None:
            check_section(result)


# ----------------------------------------------------------------------------- SpatialData
@pytest.fixture(scope="module")
def spatialdata_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("spatialdata")
    from test_spatialdata import make_store

    path = tmp_path_factory.mktemp("fuzz-sd") / "section.zarr"
    make_store(path)
    return path


@pytest.mark.slow
def test_spatialdata_reader_survives_damaged_stores(spatialdata_store: Path) -> None:
    @fuzz(8)
    @given(changes=st.lists(damage, min_size=1, max_size=2))
    def run(changes):
        fuzz_reader(spatialdata_store, "store with space", changes, read)

    run()


# ----------------------------------------------------------------------------- positions CSV
csv_cell = st.one_of(st.sampled_from(["1", "2.5", "-4", "nan", "inf", "-inf", "", " ", "x", "1e400", "名前", "0x10"]),
                     st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=6))


@fuzz(60)
@given(
    header=st.sampled_from(["id,x,y", "x,y,id", "id,x", "id,y,x,extra", "ID,X,Y", "", "id;x;y", "\ufeffid,x,y"]),
    rows=st.lists(st.tuples(csv_cell, csv_cell, csv_cell), max_size=5),
    tail=st.sampled_from(["", "\n", "\n\n", ",,,\n"]),
)
def test_positions_csv_reader(header, rows, tail):
    from napari_histosge.prediction.positions import read_positions_csv

    text = header + "\n" + "\n".join(",".join(r) for r in rows) + tail
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "positions with space.csv"
        path.write_text(text, encoding="utf-8")
        result = outcome(lambda: read_positions_csv(path))
    if result is not None:
        assert len(result.ids) == len(result.xy) >= 1 and len(set(result.ids)) == len(result.ids)
        assert np.asarray(result.xy).shape == (len(result.ids), 2) and np.isfinite(result.xy).all()


# ----------------------------------------------------------------------------- GeoJSON regions
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.text(max_size=3),
                   st.none())
ring = st.lists(st.lists(number, min_size=0, max_size=3), max_size=6)
json_value = st.recursive(st.one_of(st.none(), st.booleans(), number, st.text(max_size=5)),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)
geometry = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", "Nope"]),
                           "coordinates": st.one_of(st.lists(ring, max_size=2), st.lists(st.lists(ring, max_size=2),
                                                                                          max_size=2), json_value)}),
    json_value,
)
feature = st.one_of(
    st.fixed_dictionaries({"type": st.just("Feature"), "geometry": geometry,
                           "properties": st.one_of(st.none(), st.dictionaries(st.sampled_from(["name", "classification",
                                                                                               "other"]),
                                                                              json_value, max_size=2))}),
    json_value,
)


@pytest.mark.slow
@fuzz(40)
@given(
    document=st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["FeatureCollection", "Feature", "x"]),
                                              "features": st.lists(feature, max_size=3)}),
                       st.lists(feature, max_size=3), json_value),
    truncate=st.sampled_from([None, None, 0.5]),
)
def test_geojson_region_reader(document, truncate):
    from napari_histosge.export.regions import read_regions

    text = json.dumps(document)
    if truncate is not None:
        text = text[: int(len(text) * truncate)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "régions 1.geojson"
        path.write_text(text, encoding="utf-8")
        regions = outcome(lambda: read_regions(path))
    for region in regions or []:
        exterior = np.asarray(region.exterior, np.float64)
        assert exterior.ndim == 2 and exterior.shape[1] == 2 and len(exterior) >= 3 and np.isfinite(exterior).all()
        assert isinstance(region.name, str) and region.name


@fuzz(60)
@given(
    document=st.one_of(st.fixed_dictionaries({"type": st.just("FeatureCollection"),
                                              "features": st.lists(feature, max_size=3)}),
                       st.lists(feature, max_size=3), geometry),
    nuclei=st.booleans(),
)
def test_geojson_cell_reader(document, nuclei):
    from napari_histosge.cells import read_cell_polygons

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cellules 1.geojson"
        path.write_text(json.dumps(document), encoding="utf-8")
        seg = outcome(lambda: read_cell_polygons(path, (50, 60), nuclei=nuclei))
    if seg is not None:
        assert seg.n_cells >= 1 and seg.labels.shape == (50, 60)
        assert np.isfinite(np.asarray(seg.table.obsm["spatial"])).all()


# ----------------------------------------------------------------------------- gene lists
@fuzz(150)
@given(text=st.one_of(st.text(), st.text(alphabet=",; \n\t.txtAZ/~\x00é", max_size=300),
                      st.lists(st.text(alphabet="ABCGRK0123456789-", min_size=1, max_size=8), max_size=300)
                      .map(", ".join)))
def test_gene_lists(text):
    from napari_histosge.gene_lists import parse_gene_names

    names = outcome(lambda: parse_gene_names(text))
    if names is not None:
        assert all(isinstance(n, str) and n and not any(c in n for c in ",; \n\t") for n in names)


# ----------------------------------------------------------------------------- OME-Zarr metadata
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["ome", "multiscales", "attributes", "datasets", "x"]), inner,
                               max_size=3), max_leaves=8)


@fuzz(150)
@given(attrs=JSON_VALUES, name=st.sampled_from([".zattrs", "zarr.json"]))
def test_ome_metadata_of_any_shape_is_read_or_ignored(attrs, name):
    # Format detection reads this for every folder dropped on napari: any JSON is an image or not, never a crash.
    from napari_histosge.io.detect import ome_multiscales

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).write_text(json.dumps(attrs))
        found = ome_multiscales(Path(folder))
    assert found is None or isinstance(found, dict)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small checkpoint (three genes) as this version writes it: tests/data's, saved again."""
    from napari_histosge.models import load_model

    path = tmp_path_factory.mktemp("fuzz-ckpt") / "m.pt"
    load_model(Path(__file__).parent / "data" / "histosge_17fc61b.pt", device="cpu").save(path)
    return path.read_bytes()


@pytest.mark.slow
def test_checkpoint_loader_survives_damaged_files(checkpoint: bytes) -> None:
    from napari_histosge.models import load_model

    @fuzz(30)
    @given(kind=st.sampled_from(["truncate", "flip", "garbage", "empty", "zeros"]), at=st.floats(0, 1),
           name=st.sampled_from(FOLDER_NAMES))
    def run(kind, at, name):
        cut = int(len(checkpoint) * at)
        data = {"truncate": checkpoint[:cut], "empty": b"", "zeros": bytes(len(checkpoint)),
                "flip": checkpoint[:cut] + bytes([checkpoint[min(cut, len(checkpoint) - 1)] ^ 0xFF])
                + checkpoint[cut + 1:],
                "garbage": checkpoint[:cut] + bytes(range(256)) + checkpoint[cut + 256:]}[kind]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.pt"
            path.write_bytes(data)
            model = outcome(lambda: load_model(path, device="cpu"))
        if model is not None:
            assert data == checkpoint or kind == "flip"  # only an intact (or harmlessly flipped) file loads
            assert model.genes == ["g0", "g1", "g2"]

    run()
