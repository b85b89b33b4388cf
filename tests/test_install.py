"""A plain install: the manifest travels with the package, validates, and names the plugin as the docs do.

The install itself (a wheel into a fresh environment with napari) is scripts/check_wheel.sh.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "src" / "napari_histosge" / "napari.yaml"
#: Where the docs name a napari menu entry of the plugin: "Plugins > NAME > ..." or "Open Sample ▸ NAME ▸".
MENU = re.compile(r"(?:Plugins|Open Sample)\s*(?:>|▸)\s*([\w .-]+?)\s*(?:>|▸)")


def _manifest():
    npe2 = pytest.importorskip("npe2")
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_is_packaged_and_named_by_the_entry_point():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "napari.yaml" in project["tool"]["setuptools"]["package-data"]["napari_histosge"]
    entry = project["project"]["entry-points"]["napari.manifest"]
    assert entry == {project["project"]["name"]: "napari_histosge:napari.yaml"}


def test_manifest_validates_and_its_commands_import():
    manifest = _manifest()
    manifest.validate_imports()  # every python_name resolves
    assert manifest.name == "napari-histosge"


def test_menus_in_the_docs_use_the_display_name():
    display = _manifest().display_name
    named = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        named |= set(MENU.findall(doc.read_text()))
    assert named, "the docs name no menu of the plugin"
    assert named == {display}


def test_spatialdata_stores_have_a_reader_and_a_writer():
    manifest = _manifest()
    readers = {r.command: r.filename_patterns for r in manifest.contributions.readers or []}
    assert readers["napari-histosge.get_spatialdata_reader"] == ["*.zarr"]
    writers = [w for w in manifest.contributions.writers or [] if ".zarr" in w.filename_extensions]
    assert {w.command for w in writers} == {"napari-histosge.write_zarr"}


def test_the_qt_binding_is_the_one_napari_recommends():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["napari"]
    assert not [r for r in extra if r.lower().startswith("pyqt5")], "napari deprecates PyQt5"
    assert any(r.startswith("napari[pyqt6]") for r in extra)


def test_the_project_metadata_builds_without_a_deprecation():
    # setuptools deprecates `project.license` as a TOML table: such builds stop working after
    # 2027-02-18. The metadata is read by the installed setuptools (no build, under a second).
    import subprocess
    import sys

    script = (
        "import warnings\n"
        "from setuptools.config.pyprojecttoml import apply_configuration\n"
        "from setuptools.dist import Distribution\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    dist = apply_configuration(Distribution(), 'pyproject.toml')\n"
        "for w in seen:\n"
        "    if 'Setuptools' in w.category.__name__:\n"
        "        print(w.category.__name__, ' '.join(str(w.message).split()))\n"
        "print('license:', dist.metadata.license_expression)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "SetuptoolsDeprecationWarning" not in run.stdout and "2027" not in run.stdout, run.stdout
    assert "license: BSD-3-Clause" in run.stdout


def test_the_build_asks_for_a_setuptools_that_reads_spdx_licenses():
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    setuptools = next(r for r in build if r.startswith("setuptools"))
    assert re.fullmatch(r"setuptools>=(\d+)", setuptools) and int(setuptools.split(">=")[1]) >= 77
