"""Shared fixtures: where the real data lives, and a skip when it is absent."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
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


def _manifest(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: what a write would change."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _set_writable(folder: Path, writable: bool) -> None:
    """Give or take the write permission of ``folder``, its sub-folders and its files (the folder last)."""
    write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        mode = path.stat().st_mode
        os.chmod(path, (mode | stat.S_IWUSR) if writable else (mode & ~write))


@pytest.fixture(scope="session")
def demo_section(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Path]]:
    """``demo_section(seed)``: the generated demo section of ``seed``, written once per test session.

    Generating a section takes seconds; the tests share one folder per seed and only read it.
    A test that changes a section's files works on a copy (:func:`demo_copy`). The shared
    folders are made read-only, so a write fails in the test that makes it; root ignores
    permissions (a CI may run as root), so a write into a shared one also fails the session
    here, naming the folder.
    """
    from napari_histosge.demo import make_demo_dataset

    made: dict[int, tuple[Path, dict[str, tuple[int, int]]]] = {}

    def section(seed: int = 0) -> Path:
        if seed not in made:
            folder = make_demo_dataset(tmp_path_factory.mktemp(f"demo-seed{seed}") / "demo", seed=seed)
            _set_writable(folder, False)
            made[seed] = (folder, _manifest(folder))
        return made[seed][0]

    yield section
    for folder, _ in made.values():
        _set_writable(folder, True)  # pytest deletes old session folders: let it
    changed = [str(folder) for folder, before in made.values() if _manifest(folder) != before]
    assert not changed, f"a test wrote into the shared demo section(s) {changed}: give it demo_copy instead"


@pytest.fixture
def demo_copy(demo_section: Callable[[int], Path], tmp_path: Path) -> Callable[..., Path]:
    """``demo_copy(folder=tmp_path / "demo", seed=0)``: a copy of the demo section that a test may change."""

    def copy(folder: Path | None = None, seed: int = 0) -> Path:
        folder = tmp_path / "demo" if folder is None else Path(folder)
        shutil.copytree(demo_section(seed), folder)
        _set_writable(folder, True)  # copytree keeps the shared folder's read-only modes
        return folder

    return copy


@pytest.fixture(scope="session")
def demo_dir(demo_section: Callable[[int], Path]) -> Path:
    """The generated demo section (ST v1 layout, known ground truth), shared by every test: read it only."""
    return demo_section(0)


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
