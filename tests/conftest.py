"""Shared fixtures: where the real data lives, and a skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The real data folder: ``$HISTOSGE_DATA`` or ``../shared/data`` beside the repo."""
    return Path(os.environ.get("HISTOSGE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Path to ``../shared/data``; skips the test with a clear reason when absent."""
    root = data_root()
    if not (root / "her2st").is_dir() or not (root / "dlpfc").is_dir():
        pytest.skip(
            f"real data not found at {root} (set HISTOSGE_DATA to the folder holding her2st/ and dlpfc/)"
        )
    return root


@pytest.fixture(scope="session")
def her2st_b4(real_data: Path) -> Path:
    return real_data / "her2st" / "B4"


@pytest.fixture(scope="session")
def dlpfc_151675(real_data: Path) -> Path:
    return real_data / "dlpfc" / "151675"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated demo section (Space Ranger layout, known ground truth), one per test module."""
    from napari_histosge.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="module")
def demo(demo_dir: Path):
    """The demo section, read."""
    from napari_histosge.io import read_spots

    return read_spots(demo_dir)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep feature/pyramid caches of tests out of the user's home."""
    monkeypatch.setenv("HISTOSGE_CACHE", str(tmp_path_factory.getbasetemp() / "histosge-cache"))


@pytest.fixture
def notifications(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Capture napari notifications raised through show_error/show_info/show_warning, as (kind, message)."""
    import napari.utils.notifications as nt

    seen: list[tuple[str, str]] = []
    for kind in ("error", "info", "warning"):
        monkeypatch.setattr(nt, f"show_{kind}", lambda msg, _k=kind: seen.append((_k, str(msg))))
    return seen
