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
