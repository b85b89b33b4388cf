"""A mistake on the command line is refused in a fresh process within two seconds, on a real section.

Each command runs as a user runs it: a new Python process (imports included). Before the
checks read the counts' header and told a section from its names, a misspelled gene was
refused only after the image features (tens of seconds on her2st B4), a folder that is no
section after torch had loaded, and ``--grid-um 0.1`` after the section was read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")  # the processor time of a child process (POSIX)

REPO = Path(__file__).resolve().parents[1]
#: The most a refusal may take, imports included (the checks themselves take milliseconds).
REFUSAL_SECONDS = 2.0
RUN_CLI = "import sys; from napari_histosge.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _refuse(argv: list[str], message: str, tmp_path: Path) -> None:
    """Run ``histosge ARGV`` in a fresh process: status 2, one error line with ``message``, soon.

    "Soon" is the processor time of the process (user + system), imports included: on an idle
    machine that is its wall time, and unlike the wall time it does not grow with what other
    processes of a shared machine do meanwhile.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HISTOSGE_CACHE": str(tmp_path / "cache")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", RUN_CLI, *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("histosge: error: ") and message in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert cpu < REFUSAL_SECONDS, f"refused after {cpu:.2f} s of processor time ({wall:.2f} s wall): {lines[0]}"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Files that exist (never read by the checks) and a folder that is no section."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a section\n")
    for name in ("m.pt", "pred.h5ad"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "regions.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    return {"notes": str(tmp_path / "notes"), "m.pt": str(tmp_path / "m.pt"), "pred": str(tmp_path / "pred.h5ad"),
            "regions": str(tmp_path / "regions.geojson"), "tmp": str(tmp_path)}


def test_train_refuses_a_misspelled_gene_in_a_list_of_fifty(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    from napari_histosge.io.gene_header import measured_genes

    measured = measured_genes(her2st_b4)
    assert measured is not None
    genes = [g for g in measured.names if g.isalnum()][100:149] + ["GRB77"]
    _refuse(["train", str(her2st_b4), "--genes", ",".join(genes), "--out", inputs["tmp"] + "/m2.pt"],
            "1 requested gene(s) are not in the data: 'GRB77' (did you mean 'GRB7'", tmp_path)


def test_train_refuses_a_folder_that_is_no_section(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["train", str(her2st_b4), inputs["notes"], "--out", inputs["tmp"] + "/m2.pt"], "unsupported input",
            tmp_path)


def test_recover_refuses_an_unknown_marker(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["recover", str(her2st_b4), "--include-genes", "ERBB2, NOTAGENE", "--out", inputs["tmp"] + "/h.h5ad"],
            "'NOTAGENE'", tmp_path)


def test_predict_refuses_a_folder_that_is_no_section(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["predict", inputs["m.pt"], inputs["notes"], "--out", inputs["tmp"] + "/p.h5ad"], "unsupported input",
            tmp_path)


def test_superresolve_refuses_a_grid_finer_than_a_pixel(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["superresolve", inputs["m.pt"], str(her2st_b4), "--grid-um", "0.1", "--out", inputs["tmp"] + "/s.h5ad"],
            "--grid-um must be at least", tmp_path)


def test_region_refuses_an_unknown_gene(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["region", str(her2st_b4), "--regions", inputs["regions"], "--genes", "ERBB2,ERBX",
             "--out", inputs["tmp"] + "/r.csv"], "'ERBX'", tmp_path)


def test_evaluate_refuses_a_folder_that_is_no_section(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["evaluate", inputs["pred"], inputs["notes"]], "unsupported input", tmp_path)


def test_figure_refuses_a_bad_size(her2st_b4: Path, inputs, tmp_path: Path) -> None:
    _refuse(["figure", inputs["pred"], "--gene", "ERBB2", "--out", inputs["tmp"] + "/f.png", "--size", "5"],
            "--size must be between", tmp_path)
