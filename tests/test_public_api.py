"""The public API: every name in ``__all__`` resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import napari_histosge as hs


@pytest.mark.parametrize("name", hs.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(hs, name) is not None
    assert name in dir(hs)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        hs.not_a_name  # noqa: B018


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    # napari imports the package to find its manifest: that must not pull in torch or anndata.
    code = ("import sys, napari_histosge; "
            "print(','.join(m for m in ('torch', 'anndata', 'scanpy', 'napari', 'qtpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
