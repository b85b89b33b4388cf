"""The user docs quote only measured numbers, and their relative links resolve.

A measured number in README.md, docs/user-guide.md or docs/choosing-a-model.md carries
its source in an HTML comment right after it, which Markdown does not render::

    0.362<!-- recovery.json: rows[section=B4][variant=Conditioned (neighbours + image)]/pcc_top50 -->

The comment names a file of ``benchmarks/results/`` and a path into it:

- ``key`` takes a dict key (or, on a list, the element at that integer index);
- ``[field=value]`` keeps the one list element whose ``field`` reads ``value``
  (``[field^=value]``: starts with ``value``); a bare ``[..]`` segment filters the list
  the path is on, ``name[..]`` first takes ``name``;
- ``*`` applies the rest of the path to every element of a list; after a filter, to every
  element the filter keeps;
- ``|mean``, ``|sd`` (sample SD, as the benchmark tables), ``|min``, ``|max`` reduce a
  list of numbers; ``|x100`` turns a fraction into a percentage.

The quoted number must equal the resolved value rounded to the quoted decimals. Any other
decimal number or percentage in prose (outside code) must be listed in ``NOT_MEASURED``
with the reason it is not a measurement.
"""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUOTING_DOCS = ("README.md", "docs/user-guide.md", "docs/choosing-a-model.md")

#: Decimal numbers and percentages that are not measurements, per document, with why.
NOT_MEASURED: dict[str, dict[str, str]] = {
    "README.md": {
        "2.4": "the oldest torch release the package accepts (a version)",
    },
    "docs/user-guide.md": {
        "10%": "the default share of training spots held back for validation (a setting)",
        "50%": "the share of spots `recover` hides by default (a setting)",
    },
    "docs/choosing-a-model.md": {
        "10%": "the default share of training spots held back for validation (a setting)",
    },
}

SOURCED = re.compile(
    r"(?:(?<![^\s(|])(?P<sign>[+-]))?(?P<number>\d[\d,]*(?:\.\d+)?)"
    r"<!--\s*(?P<file>[\w.-]+\.json):\s*(?P<path>.*?)\s*-->"
)
BARE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?%|(?<![\w.])\d+\.\d+(?![\w.]*\d)")
SEGMENT = re.compile(r"^(?P<name>[^\[]*)(?P<filters>(?:\[[^\]]*\])*)$")
FILTER = re.compile(r"\[(?P<field>[^\]=^]+)(?P<op>\^?=)(?P<value>[^\]]*)\]")
REDUCERS = {
    "mean": statistics.fmean,
    "sd": statistics.stdev,
    "min": min,
    "max": max,
    "x100": lambda value: value * 100,
}


class SourceError(AssertionError):
    """A number's source comment does not resolve, or resolves to another value."""


def _select(items: list, filters: str, where: str, *, many: bool) -> object:
    for match in FILTER.finditer(filters):
        field, op, value = match["field"].strip(), match["op"], match["value"].strip()
        if op == "=":
            items = [item for item in items if str(item.get(field)) == value]
        else:
            items = [item for item in items if str(item.get(field, "")).startswith(value)]
    if many:
        if not items:
            raise SourceError(f"{where}: filter {filters} keeps no element")
        return items
    if len(items) != 1:
        raise SourceError(f"{where}: filter {filters} keeps {len(items)} elements, not one")
    return items[0]


def _step(value: object, segment: str, where: str, *, many: bool = False) -> object:
    parts = SEGMENT.match(segment.strip())
    if parts is None:
        raise SourceError(f"{where}: cannot read path segment {segment!r}")
    name, filters = parts["name"].strip(), parts["filters"]
    if name:
        if isinstance(value, dict) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.lstrip("-").isdigit():
            value = value[int(name)]
        else:
            raise SourceError(f"{where}: no key {name!r}")
    if filters:
        if not isinstance(value, list):
            raise SourceError(f"{where}: filter {filters} on something that is not a list")
        value = _select(value, filters, where, many=many)
    return value


def _walk(value: object, segments: list[str], where: str) -> object:
    for i, segment in enumerate(segments):
        if segment.strip() == "*":
            if not isinstance(value, list):
                raise SourceError(f"{where}: '*' on something that is not a list")
            return [_walk(item, segments[i + 1:], where) for item in value]
        followed_by_star = i + 1 < len(segments) and segments[i + 1].strip() == "*"
        value = _step(value, segment, where, many=followed_by_star)
    return value


def resolve(file: str, path: str, results: Path = RESULTS) -> float:
    """The number ``path`` names in ``results/file`` (grammar in the module docstring)."""
    where = f"{file}: {path}"
    source = results / file
    if not source.is_file():
        raise SourceError(f"{where}: no file {source}")
    route, *reducers = path.split("|")
    value = _walk(json.loads(source.read_text()), [s for s in route.split("/") if s.strip()], where)
    for reducer in reducers:
        if reducer.strip() not in REDUCERS:
            raise SourceError(f"{where}: unknown reduction {reducer!r}")
        value = REDUCERS[reducer.strip()](value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SourceError(f"{where}: resolves to {value!r}, not a number")
    return float(value)


def check_quoted(text: str, results: Path = RESULTS) -> list[str]:
    """Problems with the sourced numbers of ``text``: unresolved sources, wrong values."""
    problems = []
    for match in SOURCED.finditer(text):
        quoted = (match["sign"] or "") + match["number"].replace(",", "")
        decimals = len(quoted.split(".")[1]) if "." in quoted else 0
        try:
            value = resolve(match["file"], match["path"], results)
        except SourceError as error:
            problems.append(str(error))
            continue
        if f"{value:.{decimals}f}" != f"{float(quoted):.{decimals}f}":
            problems.append(f"{quoted} quoted, but {match['file']}: {match['path']} is "
                            f"{value:.{decimals}f} at that rounding")
    return problems


def prose(text: str) -> str:
    """``text`` without code, link targets, sourced numbers and other HTML comments."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = SOURCED.sub(" ", text)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    return re.sub(r"\]\([^)]*\)", "]", text)


def bare_numbers(text: str, allowed: dict[str, str]) -> list[str]:
    """Decimal numbers and percentages in the prose of ``text`` with no source, not allowed."""
    found = [m.group(0).replace(" ", "") for m in BARE.finditer(prose(text))]
    return sorted({number for number in found if number not in allowed})


@pytest.mark.parametrize("doc", QUOTING_DOCS)
def test_every_quoted_number_matches_its_result(doc):
    text = (REPO / doc).read_text()
    assert SOURCED.search(text) or doc == "README.md", f"{doc} quotes no measured number"
    assert check_quoted(text) == []


@pytest.mark.parametrize("doc", QUOTING_DOCS)
def test_no_number_without_a_source(doc):
    assert bare_numbers((REPO / doc).read_text(), NOT_MEASURED.get(doc, {})) == []


def test_checker_rejects_a_wrong_number(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({
        "rows": [{"section": "B4", "variant": "a (x)", "pcc": 0.1234},
                 {"section": "C2", "variant": "a (x)", "pcc": -0.02}],
        "runs": {"B4": [[0.1, 0.5], [0.3, 0.7]]},
    }))
    quoted = ("0.123<!-- r.json: rows[section=B4][variant=a (x)]/pcc --> and "
              "20.0<!-- r.json: runs/B4/*/0|mean|x100 --> and "
              "(-0.02<!-- r.json: rows[variant^=a][section=C2]/pcc -->), but "
              "0.40<!-- r.json: runs/B4/*/1|mean -->")
    assert check_quoted(quoted, tmp_path) == [
        "0.40 quoted, but r.json: runs/B4/*/1|mean is 0.60 at that rounding"]
    assert check_quoted("-0.02<!-- r.json: rows[variant=a (x)]/*/pcc|min -->", tmp_path) == []
    assert check_quoted("0.124<!-- r.json: rows[section=B4]/pcc -->", tmp_path) == [
        "0.124 quoted, but r.json: rows[section=B4]/pcc is 0.123 at that rounding"]
    assert "keeps 2 elements" in check_quoted("0.1<!-- r.json: rows[variant=a (x)]/pcc -->", tmp_path)[0]
    assert "no key 'mse'" in check_quoted("0.1<!-- r.json: rows[section=B4]/mse -->", tmp_path)[0]
    assert "no file" in check_quoted("0.1<!-- missing.json: rows -->", tmp_path)[0]


def test_checker_finds_bare_numbers():
    text = ("Trains at 0.27 s per epoch, 10% held back, 94% covered, 0.31<!-- r.json: x --> sourced,\n"
            "`torch==2.14.1` and 1.2.3 are versions, ```\nx = 0.5\n``` is code, [a](docs/v0.2.md).")
    assert bare_numbers(text, {"10%": "a setting"}) == ["0.27", "94%"]


def _relative_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _headings(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", " ", text, flags=re.S), flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(anchor.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))])
def test_relative_links_resolve(doc):
    source = REPO / doc
    broken = []
    for link in _relative_links(source.read_text()):
        target, _, anchor = unquote(link).partition("#")
        path = (source.parent / target).resolve() if target else source
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in _headings(path.read_text()):
            broken.append(link)
    assert broken == []


def test_user_docs_do_not_link_the_notes():
    for doc in ["README.md", *(p for p in (REPO / "docs").rglob("*.md"))]:
        text = (REPO / doc).read_text()
        assert not [link for link in _relative_links(text) if "notes/" in link], doc


def _tree_paths(text: str) -> set[str]:
    """Paths of the ``src/napari_histosge/`` tree drawn in a Markdown text."""
    block = text.split("```\nsrc/napari_histosge/\n", 1)[1].split("```", 1)[0]
    paths, parents = set(), []
    for line in block.splitlines():
        match = re.match(r"^((?:│   |    )*)[├└]── (\S+)", line)
        if match is None:
            continue
        depth = len(match[1]) // 4
        parents[depth:] = [match[2].rstrip("/")]
        paths.add("/".join(parents))
    return paths


def test_architecture_tree_matches_the_package():
    package = REPO / "src" / "napari_histosge"
    files = [p for p in package.rglob("*") if "__pycache__" not in p.parts and p.suffix in (".py", ".yaml")]
    actual = {str(p.relative_to(package)) for p in files if p.name != "__init__.py" or p.parent == package}
    actual |= {str(folder.relative_to(package)) for p in files for folder in p.parents
               if package in folder.parents}
    drawn = _tree_paths((REPO / "docs" / "architecture.md").read_text())
    assert sorted(actual - drawn) == [] and sorted(drawn - actual) == []


def test_the_model_metadata_tables_are_current():
    """docs/architecture.md's tables of a model's metadata are generated from the dataclasses."""
    spec = importlib.util.spec_from_file_location("render_model_meta", REPO / "scripts" / "render_model_meta.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split(script.START, 1)[1].split(script.END, 1)[0]
    assert block.strip() == script.rendered().strip(), "run: python scripts/render_model_meta.py"
    assert "| `cell_px` |" in block and "| `kriging` |" in block and "| `history` |" in block


def test_every_result_has_one_generated_block():
    """benchmarks/_report.py re-renders a block wherever its markers are: each result's block
    must stand, start and end, on exactly one docs/benchmarks*.md page."""
    pages = {p.name: p.read_text() for p in (REPO / "docs").glob("benchmarks*.md")}
    placed = {}
    for result in sorted(RESULTS.glob("*.json")):
        start, end = f"<!-- {result.stem}:start -->", f"<!-- {result.stem}:end -->"
        placed[result.stem] = [name for name, text in pages.items()
                               if text.count(start) == 1 and text.count(end) == 1
                               and text.index(start) < text.index(end)]
    assert {stem: names for stem, names in placed.items() if len(names) != 1} == {}


def _apt_packages(text: str) -> set[str]:
    """Package names of the ``apt-get install`` commands in a shell or Markdown text (options left out)."""
    names: set[str] = set()
    for command in re.findall(r"apt-get install((?:[^\n]*\\\n)*[^\n]*)", text):
        names |= {w for w in command.replace("\\\n", " ").split() if not w.startswith(("-", ">", "/"))}
    return names


def test_the_readme_lists_every_package_test_sh_installs():
    # scripts/test.sh without root says to install them "(see README)": the README must list them.
    installed = _apt_packages((REPO / "scripts" / "test.sh").read_text())
    assert "xvfb" in installed and "libxcb-cursor0" in installed
    assert sorted(installed - _apt_packages((REPO / "README.md").read_text())) == []


def test_readme_sections_named_elsewhere_exist():
    headings = set(re.findall(r"^#+\s+(.+?)\s*$", (REPO / "README.md").read_text(), re.MULTILINE))
    for source in ("pyproject.toml", "scripts/test.sh"):
        named = re.findall(r'README,? \\?"([^"\\]+)\\?"', (REPO / source).read_text())
        assert named, source
        assert [n for n in named if n not in headings] == [], source


def test_the_readme_lists_every_command_and_says_how_to_start_napari_from_the_venv():
    import argparse

    from napari_histosge.cli.main import build_parser

    readme = (REPO / "README.md").read_text()
    listing = readme.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert [c for c in commands.choices if f"histosge {c}" not in listing] == []
    assert "source .venv/bin/activate" in readme and ".venv/bin/napari" in readme
    last = (REPO / "scripts" / "demo.sh").read_text().strip().splitlines()[-1]
    assert "activate" in last and "bin/napari" in last


def test_the_cli_page_says_recover_trains_on_at_most_max_bins_spots():
    """recover cuts its training spots to --max-bins (tests/test_io_visium_hd.py): the page must not say otherwise."""
    text = " ".join((REPO / "docs" / "cli.md").read_text().split())
    said = text[text.index("A section trains on at most `--max-bins` spots"):][:600]
    assert "`recover` trains on at most `--max-bins` of its hold-out split's training spots" in said
    assert "as drawn" not in said
