"""Re-render the tables of the model metadata in docs/architecture.md from the dataclasses.

Run after changing a field of :class:`napari_histosge.training.model_meta.ModelMeta` or of a
model's own record: ``python scripts/render_model_meta.py``. tests/test_docs.py checks that
the block between ``<!-- model-meta:start -->`` and ``<!-- model-meta:end -->`` is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
START, END = "<!-- model-meta:start -->", "<!-- model-meta:end -->"


def rendered() -> str:
    """The block's text: every model's shared entries, then each model's own record."""
    from napari_histosge.models.conditioned.meta import ConditionedMeta
    from napari_histosge.models.subspot.meta import CellRidgeMeta, SubspotMeta
    from napari_histosge.training.model_meta import ModelMeta, meta_table

    parts = [("`training.model_meta.ModelMeta`: every model", ModelMeta),
             ("`models.subspot.meta.CellRidgeMeta` (cellridge; subspot too) adds", CellRidgeMeta),
             ("`models.subspot.meta.SubspotMeta` (subspot) adds", SubspotMeta),
             ("`models.conditioned.meta.ConditionedMeta` (conditioned) adds", ConditionedMeta)]
    return "\n\n".join(f"{title}:\n\n{meta_table(cls)}" for title, cls in parts)


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    PAGE.write_text(f"{head}{START}\n{rendered()}\n{END}{tail}", encoding="utf-8")
    print(f"updated {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
