"""Print the src/napari_histosge tree with each module's docstring summary, for docs/architecture.md.

Run after adding, moving or removing a module and paste the output into the tree block
(tests/test_docs.py checks that the tree and the package agree).
"""
import ast
import re
from pathlib import Path
root = Path(__file__).resolve().parents[1] / "src" / "napari_histosge"
OVERRIDE = {"__init__.py": "the public API: read_spots, fit, predict_spots, superresolve, recover, run, ... (lazy)",
            "napari.yaml": "npe2 manifest: readers, writer, sample data, widgets"}
def summary(p):
    if p.suffix != ".py":
        return OVERRIDE.get(p.name, "")
    d = ast.get_docstring(ast.parse(p.read_text())) or ""
    s = d.split("\n\n")[0].replace("\n", " ")
    s = re.sub(r"``([^`]*)``", r"\1", s)
    s = re.sub(r":(func|class|mod):`\.?([^`]*)`", r"\2", s)
    return s.rstrip(".")
lines = ["src/napari_histosge/"]
def walk(d, prefix, depth=0):
    items = sorted([p for p in d.iterdir() if p.name != "__pycache__"
                    and ((p.is_dir() and any(p.rglob("*.py"))) or p.suffix in (".py", ".yaml"))],
                   key=lambda p: (p.is_dir(), p.name != "__init__.py", p.name))
    for i, p in enumerate(items):
        last = i == len(items) - 1
        branch = "└── " if last else "├── "
        name = p.name + ("/" if p.is_dir() else "")
        if p.is_dir():
            desc = summary(p / "__init__.py") if (p / "__init__.py").exists() else ""
            lines.append(f"{prefix}{branch}{name:<{26 - 4 * depth}} {desc}".rstrip())
            walk(p, prefix + ("    " if last else "│   "), depth + 1)
        elif p.name == "__init__.py" and d != root:
            continue
        else:
            desc = OVERRIDE.get(p.name) if d == root and p.name in OVERRIDE else summary(p)
            lines.append(f"{prefix}{branch}{name:<{26 - 4 * depth}} {desc}".rstrip())
walk(root, "")
print("\n".join(lines))
