"""The package's import structure, checked statically with ``ast``.

Four rules hold for every module under ``src/napari_histosge``:

(a) layer order: a module imports only from its own layer or the layers below it
    (the package ``__init__``, the public API, may import anything);
(b) no private name (``_x``, not a dunder) is imported from another module of the package,
    and a private module (``_common.py``) is imported only from inside its own package;
(c) no import of a package module inside a function, except in ``cli/`` and ``plugin/``:
    napari scans the plugin and the CLI starts on every call, so both defer loading the
    torch-heavy core until a command or widget needs it;
(d) Qt, napari, magicgui and vispy are imported only in ``plugin/``.

Imports are counted wherever they stand: module level, ``if TYPE_CHECKING:`` blocks and
function bodies. The checker runs first on a small synthetic package with known
violations, so a checker that finds nothing cannot pass unnoticed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "napari_histosge"

#: Lowest layer first. The key is the first name below the package (a module or subpackage).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "progress", "device", "settings", "outputs", "gene_lists"),
    ("io", "slide"),
    ("features", "cells"),
    ("evaluation", "export"),
    ("training",),
    ("models",),
    ("prediction",),
    ("pipeline",),
    ("api", "steps", "demo", "cli"),
    ("plugin",),
)
#: Where imports of the package inside functions are allowed (start-up speed, see (c)).
LAZY_IMPORT_ALLOWED = ("cli", "plugin")
#: Where GUI imports are allowed.
GUI_ALLOWED = ("plugin",)
GUI_PACKAGES = frozenset(
    {"napari", "magicgui", "vispy", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt"}
)


@dataclass(frozen=True)
class Import:
    """One imported module (and, for ``from`` imports, the name taken from it)."""

    importer: str
    target: str
    name: str | None
    line: int
    statement: str
    in_function: bool


def discover_modules(src: Path, package: str) -> dict[str, Path]:
    """Map every module's dotted name to its file (``pkg.sub`` for ``pkg/sub/__init__.py``)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve_from(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool, modules: Sequence[str]) -> None:
        self.importer, self.is_package, self.modules = importer, is_package, set(modules)
        self.function_depth = 0
        self.found: list[Import] = []

    def _visit_function(self, node: ast.AST) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def _add(self, node: ast.stmt, target: str, name: str | None) -> None:
        found = Import(self.importer, target, name, node.lineno, ast.unparse(node), self.function_depth > 0)
        self.found.append(found)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, None)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = _resolve_from(self.importer, self.is_package, node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:  # ``from . import errors`` imports a module
                self._add(node, submodule, None)
            else:
                self._add(node, source, alias.name)


def collect_imports(src: Path, package: str) -> list[Import]:
    """Every import statement of every module of ``package`` under ``src``."""
    modules = discover_modules(src, package)
    found: list[Import] = []
    for name, path in modules.items():
        collector = _ImportCollector(name, path.name == "__init__.py", list(modules))
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.extend(collector.found)
    return found


def _key(module: str) -> str | None:
    """The layer key of a package module (``io`` for ``pkg.io.h5ad``); None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _describe(found: Import, why: str) -> str:
    return f"{found.importer} line {found.line}: {found.statement}  ({why})"


def layer_violations(
    imports: Sequence[Import], package: str, layers: Sequence[Sequence[str]] = LAYERS
) -> list[str]:
    """(a) Imports of a higher layer; also modules that no layer names."""
    rank = {key: index for index, keys in enumerate(layers) for key in keys}
    top = len(layers)  # the package ``__init__`` (public API) sits above every layer
    problems = []
    for found in imports:
        if not _inside(found.target, package):
            continue
        importer_key, target_key = _key(found.importer), _key(found.target)
        if importer_key is None:
            continue  # the public API may import anything
        for key in (importer_key, target_key):
            if key is not None and key not in rank:
                problems.append(_describe(found, f"{package}.{key} is in no layer; add it to LAYERS"))
        if importer_key not in rank or (target_key is not None and target_key not in rank):
            continue
        target_rank = top if target_key is None else rank[target_key]
        if target_rank > rank[importer_key]:
            target_name = "the public API" if target_key is None else f"layer {target_key}"
            problems.append(_describe(found, f"layer {importer_key} may not import {target_name}"))
    return sorted(set(problems))


def private_violations(imports: Sequence[Import], package: str) -> list[str]:
    """(b) Private names taken from another module; private modules used outside their package."""
    problems = []
    for found in imports:
        if not _inside(found.target, package):
            continue
        if found.name is not None and _is_private(found.name):
            problems.append(_describe(found, f"private name {found.name} of {found.target}"))
        parts = found.target.split(".")
        for depth, part in enumerate(parts):
            owner = ".".join(parts[:depth])
            if _is_private(part) and not _inside(found.importer, owner):
                problems.append(_describe(found, f"private module {found.target} used outside {owner}"))
    return sorted(set(problems))


def function_import_violations(
    imports: Sequence[Import], package: str, allowed: Sequence[str] = LAZY_IMPORT_ALLOWED
) -> list[str]:
    """(c) Package modules imported inside functions, outside the start-up-sensitive parts."""
    problems = []
    for found in imports:
        importer_key = _key(found.importer)
        if found.in_function and _inside(found.target, package) and importer_key not in allowed:
            problems.append(_describe(found, "package import inside a function"))
    return sorted(set(problems))


def gui_violations(imports: Sequence[Import], package: str, allowed: Sequence[str] = GUI_ALLOWED) -> list[str]:
    """(d) Qt / napari / magicgui / vispy imported outside the plugin."""
    problems = []
    for found in imports:
        if found.target.split(".")[0] in GUI_PACKAGES and _key(found.importer) not in allowed:
            problems.append(_describe(found, f"GUI package {found.target.split('.')[0]} outside plugin/"))
    return sorted(set(problems))


def _report(rule: str, problems: list[str]) -> str:
    return f"{len(problems)} import(s) break the rule '{rule}':\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# The checker on a synthetic package whose violations are known.

SYNTHETIC = {
    "__init__.py": "from .top import high\n",  # the public API may import the top layer
    "base.py": "import os\n_secret = 1\n",
    "mid/__init__.py": "",
    "mid/_helpers.py": "from .. import base\n",
    "mid/core.py": (
        "from ._helpers import base\n"  # private module, same package: fine
        "from ..base import _secret\n"  # (b) private name
        "from .. import top\n"  # (a) upward
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..top import high\n"  # (a) upward, even for typing only
        "def work():\n"
        "    import numpy\n"  # third party inside a function: fine
        "    from ..base import os\n"  # (c) package import inside a function
        "    import napari\n"  # (d) GUI outside the plugin
    ),
    "top.py": "from .mid._helpers import base\nhigh = 1\ndef f():\n    from . import mid\n",  # (b) and lazy: allowed
    "stray.py": "from . import base\n",  # in no layer
}
SYNTHETIC_LAYERS = (("base",), ("mid",), ("top",))


@pytest.fixture
def synthetic(tmp_path: Path) -> list[Import]:
    for relative, text in SYNTHETIC.items():
        path = tmp_path / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return collect_imports(tmp_path, "pkg")


def _lines(problems: list[str]) -> list[tuple[str, int]]:
    return [(p.split(" line ")[0], int(p.split(" line ")[1].split(":")[0])) for p in problems]


def test_checker_resolves_relative_imports(synthetic: list[Import]) -> None:
    targets = {(f.importer, f.line): (f.target, f.name) for f in synthetic}
    assert targets[("pkg.mid._helpers", 1)] == ("pkg.base", None)
    assert targets[("pkg.mid.core", 2)] == ("pkg.base", "_secret")
    assert targets[("pkg.mid.core", 3)] == ("pkg.top", None)
    assert targets[("pkg", 1)] == ("pkg.top", "high")
    assert [f.in_function for f in synthetic if f.importer == "pkg.mid.core"] == [
        False, False, False, False, False, True, True, True,
    ]  # fmt: skip


def test_checker_finds_layer_violations(synthetic: list[Import]) -> None:
    problems = layer_violations(synthetic, "pkg", SYNTHETIC_LAYERS)
    assert _lines(problems) == [("pkg.mid.core", 3), ("pkg.mid.core", 6), ("pkg.stray", 1)]
    assert "layer mid may not import layer top" in problems[0]
    assert "pkg.stray is in no layer" in problems[2]


def test_checker_finds_private_imports(synthetic: list[Import]) -> None:
    problems = private_violations(synthetic, "pkg")
    assert _lines(problems) == [("pkg.mid.core", 2), ("pkg.top", 1)]
    assert "private name _secret of pkg.base" in problems[0]
    assert "private module pkg.mid._helpers used outside pkg.mid" in problems[1]


def test_checker_finds_function_imports(synthetic: list[Import]) -> None:
    assert _lines(function_import_violations(synthetic, "pkg", allowed=("top",))) == [("pkg.mid.core", 9)]
    assert len(function_import_violations(synthetic, "pkg", allowed=())) == 2


def test_checker_finds_gui_imports(synthetic: list[Import]) -> None:
    assert _lines(gui_violations(synthetic, "pkg", allowed=("top",))) == [("pkg.mid.core", 10)]
    assert gui_violations(synthetic, "pkg", allowed=("mid",)) == []


# ---------------------------------------------------------------------------------------------
# The rules on the real package.


@pytest.fixture(scope="module")
def package_imports() -> list[Import]:
    return collect_imports(REPO / "src", PACKAGE)


def test_every_module_was_read(package_imports: list[Import]) -> None:
    importers = {found.importer for found in package_imports}
    for module in (f"{PACKAGE}.io.h5ad", f"{PACKAGE}.plugin.widgets.train", f"{PACKAGE}.cli.main"):
        assert module in importers


def test_layer_order(package_imports: list[Import]) -> None:
    problems = layer_violations(package_imports, PACKAGE)
    assert not problems, _report("a module imports only from its own layer or below", problems)


def test_no_private_imports_across_modules(package_imports: list[Import]) -> None:
    problems = private_violations(package_imports, PACKAGE)
    assert not problems, _report("no private name imported across modules", problems)


def test_no_package_imports_inside_functions(package_imports: list[Import]) -> None:
    problems = function_import_violations(package_imports, PACKAGE)
    assert not problems, _report("no package import inside a function outside cli/ and plugin/", problems)


def test_gui_only_in_plugin(package_imports: list[Import]) -> None:
    problems = gui_violations(package_imports, PACKAGE)
    assert not problems, _report("Qt/napari/magicgui/vispy only in plugin/", problems)


def iter_layer_keys() -> Iterator[str]:
    """Every first-level module or subpackage of the real package (all must be in LAYERS)."""
    for path in sorted((REPO / "src" / PACKAGE).iterdir()):
        if path.suffix == ".py" and path.stem != "__init__":
            yield path.stem
        elif (path / "__init__.py").is_file():
            yield path.name


def test_every_part_of_the_package_has_a_layer() -> None:
    named = {key for keys in LAYERS for key in keys}
    assert sorted(set(iter_layer_keys()) - named) == []
