"""Shared helpers for benchmark scripts: machine description and the generated blocks of
docs/benchmarks*.md (each between ``<!-- name:start -->`` and ``<!-- name:end -->``)."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DOC = DOCS / "benchmarks.md"
RESULTS = REPO / "benchmarks" / "results"


def data_root() -> Path:
    """``$HISTOSGE_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("HISTOSGE_DATA", REPO.parent / "shared" / "data"))


def existing_data_root() -> Path:
    """:func:`data_root`, or exit with a message naming it when it is not a folder."""
    root = data_root()
    if not root.is_dir():
        raise SystemExit(f"no data at {root}; set HISTOSGE_DATA")
    return root


def machine_info() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        # other work on a shared machine inflates timings: record how busy it was
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def machine_line(info: dict) -> str:
    gpu = info["gpu"] or "no GPU"
    load = info.get("load_average_1m")
    busy = f" Load average {load:.1f} when it started." if load is not None else ""
    return (f"Measured {info['date']} on {info['cpu']}, {info['cores']} cores "
            f"({info['torch_threads']} torch threads), {gpu}; Python {info['python']}, torch {info['torch']}.{busy}")


def machines_line(infos: list[dict]) -> str:
    """One :func:`machine_line` for parts measured separately: a date range, a load range.

    Falls back to one line per machine where the parts ran on different machines or software.
    """
    if not infos:
        return ""
    same = {k: v for k, v in infos[0].items() if k not in ("date", "load_average_1m")}
    if any({k: v for k, v in i.items() if k not in ("date", "load_average_1m")} != same for i in infos):
        return "\n".join(sorted({machine_line(i) for i in infos}))
    dates = sorted(i["date"] for i in infos)
    loads = [i["load_average_1m"] for i in infos if i.get("load_average_1m") is not None]
    line = machine_line({**infos[0], "date": dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}",
                         "load_average_1m": None})
    if loads:
        low, high = min(loads), max(loads)
        line += (f" Load average {low:.1f} when its parts started." if f"{low:.1f}" == f"{high:.1f}" else
                 f" Load average {low:.1f} to {high:.1f} when its parts started.")
    return line


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def block_page(name: str) -> Path:
    """The page of docs/benchmarks*.md holding block ``name``'s markers (docs/benchmarks.md
    for a block no page holds yet), so a block can be moved between pages by hand."""
    start = f"<!-- {name}:start -->"
    for page in sorted(DOCS.glob("benchmarks*.md")):
        if start in page.read_text():
            return page
    return DOC


def update_block(name: str, markdown: str) -> None:
    """Replace the ``<!-- name:start -->`` ... ``<!-- name:end -->`` block of its page
    (:func:`block_page`), or append it to docs/benchmarks.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    page = block_page(name)
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)


def publish(name: str, payload: dict, markdown: str, *, doc: bool = True, show: bool = True) -> Path:
    """Write ``results/<name>.json``, print the table, and (``doc``) replace its block in its page."""
    out = write_json(name, payload)
    if show:
        print(markdown)
    print(f"results -> {out}")
    if doc:
        update_block(name, markdown)
    return out


def saved_rows(name: str, replaced: set[str], runs_key: str) -> tuple[list[dict], dict]:
    """Rows of ``results/<name>.json`` for sections other than ``replaced``, and their run
    records (``payload[runs_key]``: section -> machine info), for ``--merge``."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return [], {}
    old = json.loads(path.read_text())
    rows = [r for r in old["rows"] if r["section"] not in replaced]
    kept = dict.fromkeys(r["section"] for r in rows)  # in the rows' order
    if runs_key not in old:  # saved before runs were recorded per section: one run for all
        old[runs_key] = {s: {**old["machine"], "threads": old.get("threads")} for s in kept}
    return rows, {s: old[runs_key][s] for s in kept}


def run_lines(runs: dict, suffix=lambda run: "") -> list[str]:
    """One machine line per distinct run (sections measured together share one)."""
    lines: dict[str, list[str]] = {}
    for section, run in runs.items():
        lines.setdefault(machine_line(run) + suffix(run), []).append(section)
    if len(lines) == 1:
        return list(lines)
    return [f"{', '.join(names)}: {line}" for line, names in lines.items()]


def wins(values, other) -> str:
    """Splits on which ``values`` are above ``other``, for the HVGs and the top-50 genes
    (columns 0 and 1 of two ``(splits, 2)`` arrays of held-out PCC), as ``"3/5, 5/5"``."""
    k = len(values)
    return f"{int((values[:, 0] > other[:, 0]).sum())}/{k}, {int((values[:, 1] > other[:, 1]).sum())}/{k}"


def signed(values) -> str:
    """Per-split differences as ``"+0.0118, -0.0036"``."""
    return ", ".join(f"{d:+.4f}" for d in values)


def measure_sections(name: str, items: dict, measure, render, *, doc: bool = True) -> dict:
    """``measure(item)`` for each ``section -> item``, kept with the sections of an earlier run.

    Results and machine lines go to ``results/<name>.json`` (and, with ``doc``, its block of
    docs/benchmarks.md) after every section, so a long run keeps what it finished; a section
    measured again replaces its earlier result. Returns the final payload.
    """
    previous = RESULTS / f"{name}.json"
    old = json.loads(previous.read_text()) if previous.exists() else {"results": {}, "machines": {}}
    results, machines = dict(old["results"]), dict(old["machines"])
    t0 = time.perf_counter()
    payload = {"machines": machines, "results": results, "wall_s": 0.0}
    for section, item in items.items():
        print(f"[{section}]", flush=True)
        machines[section] = machine_info()
        results[section] = measure(item)
        payload = {"machines": machines, "results": results, "wall_s": time.perf_counter() - t0}
        publish(name, payload, render(payload), doc=doc, show=False)
    print(render(payload))
    return payload


def rerun_under_xvfb(script: str, argv) -> None:
    """Without a display (Linux), run ``script`` again under a virtual X server torn down after Qt exits.

    Returns when there is a display; otherwise replaces this process or exits with a message.
    """
    import shutil
    import sys

    if os.environ.get("DISPLAY") or os.environ.get("HISTOSGE_UNDER_XVFB") or not sys.platform.startswith("linux"):
        return
    if shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, script,
               *(argv if argv is not None else sys.argv[1:])]
        os.environ["HISTOSGE_UNDER_XVFB"] = "1"
        os.execvp(cmd[0], cmd)
    sys.exit("no display: install Xvfb (xvfb-run) or run under a desktop session")
