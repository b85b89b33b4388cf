"""The core must never import Qt or napari: check in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE_MODULES = [
    "napari_histosge",
    "napari_histosge.io",
    "napari_histosge.slide.open",
    "napari_histosge.features",
    "napari_histosge.cells",
    "napari_histosge.models",
    "napari_histosge.io.preprocess",
    "napari_histosge.training.engine",
    "napari_histosge.training.start",
    "napari_histosge.prediction.lattice",
    "napari_histosge.evaluation.metrics",
    "napari_histosge.pipeline.steps",
    "napari_histosge.demo",
    "napari_histosge.cli.main",
]


@pytest.mark.slow
def test_core_imports_no_qt_or_napari() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE_MODULES)
        + "gui = {'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui'}\n"
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in gui)\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core modules pulled in GUI packages: {out.stdout.strip()}"


def test_the_command_line_reads_every_models_settings_without_torch() -> None:
    """``histosge`` builds its training flags from the settings classes: those load without any model."""
    code = ("import sys\nfrom napari_histosge.cli.main import build_parser\nbuild_parser()\n"
            "from napari_histosge.training.config import config_names\nprint(config_names())\n"
            "print(sorted(m for m in ('torch', 'anndata', 'napari_histosge.models.registry') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["['cellridge', 'conditioned', 'histosge', 'subspot']", "[]"]


def test_the_parser_and_the_product_declarations_load_no_cell_detector() -> None:
    """The cells product's declaration needs only the Segmentation type: no scipy, no detector, no slide readers."""
    code = ("import sys\nfrom napari_histosge.cli.main import build_parser\nbuild_parser()\n"
            "import napari_histosge.pipeline.products\n"
            "print(sorted(m for m in ('scipy', 'napari_histosge.cells.detect', 'napari_histosge.cells.source')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
