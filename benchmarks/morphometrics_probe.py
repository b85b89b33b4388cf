"""A linear probe of image features across sections: ridge regression, leave one section out.

For each her2st section S, a ridge regression (penalty chosen by cross-validation on the
training spots) maps the image features of the other three sections' spots to their 50
highest-mean genes (log1p of normalize_total 1e4) and predicts S from its H&E alone; the score is
the mean per-gene PCC over S's spots. Features: ``default``, ``nuclei`` and both side by side
(each standardised on the training spots). No positions, no network: a cheap check of how much
section-transferable signal each set of features carries, beside (not instead of) the
HisToSGE rows of ``cross_section.py``. Writes ``benchmarks/results/morphometrics_probe.json``
and its block. Usage::

    python benchmarks/morphometrics_probe.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import existing_data_root, machine_info, machine_line, publish  # noqa: E402

from napari_histosge.features import FeatureConfig  # noqa: E402
from napari_histosge.io import read_spots  # noqa: E402
from napari_histosge.io.preprocess import normalize_log1p, top_mean_genes  # noqa: E402
from napari_histosge.pipeline.steps import spot_features  # noqa: E402
from napari_histosge.progress import run_to_end  # noqa: E402

SECTIONS = ("B4", "C2", "C3", "C4")
SETS = {"default": ("default",), "nuclei": ("nuclei",), "default+nuclei": ("default", "nuclei")}
TOP = 50


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float64)


def probe(features: dict, logs: dict, held: str, parts: tuple[str, ...]) -> float:
    """Mean per-gene PCC on ``held`` of a ridge fit on the other sections' spots."""
    import anndata as ad
    from sklearn.linear_model import RidgeCV

    others = [s for s in logs if s != held]
    shared = sorted(set.intersection(*(set(map(str, logs[s].var_names)) for s in logs)))
    train = ad.concat([logs[s][:, shared] for s in others], join="inner")
    genes = top_mean_genes(train, n=TOP)
    x_train = np.vstack([np.hstack([features[p][s] for p in parts]) for s in others])
    x_test = np.hstack([features[p][held] for p in parts])
    mean, sd = x_train.mean(0), x_train.std(0) + 1e-9
    model = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit((x_train - mean) / sd, _dense(train[:, genes].X))
    predicted, measured = model.predict((x_test - mean) / sd), _dense(logs[held][:, genes].X)
    pcc = [np.corrcoef(predicted[:, j], measured[:, j])[0, 1] for j in range(len(genes))
           if measured[:, j].std() > 0 and predicted[:, j].std() > 0]
    return float(np.mean(pcc))


def render(payload: dict) -> str:
    lines = [machine_line(payload["machine"]),
             "Ridge regression from image features alone (no positions), trained on the other her2st sections' "
             f"spots, scored on the left-out section: mean per-gene PCC over its spots, the training sections' "
             f"{TOP} highest-mean genes.", "",
             "| left out | " + " | ".join(f"`{s}`" for s in SETS) + " |", "|---|" + "---|" * len(SETS)]
    for section in dict.fromkeys(r["section"] for r in payload["rows"]):
        cells = {r["features"]: r["pcc_top50"] for r in payload["rows"] if r["section"] == section}
        lines.append(f"| {section} | " + " | ".join(f"{cells[s]:.3f}" for s in SETS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-doc", action="store_true", help="do not update the docs block")
    args = parser.parse_args(argv)
    root, info = existing_data_root(), machine_info()
    group = {s: read_spots(root / "her2st" / s) for s in SECTIONS}
    logs = {s: normalize_log1p(a) for s, a in group.items()}
    features = {spec: {s: run_to_end(spot_features(a, FeatureConfig(extractor=spec))).features
                       for s, a in group.items()} for spec in ("default", "nuclei")}
    rows = [{"section": held, "features": name, "pcc_top50": probe(features, logs, held, parts)}
            for held in SECTIONS for name, parts in SETS.items()]
    payload = {"machine": info, "rows": rows}
    publish("morphometrics_probe", payload, render(payload), doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
