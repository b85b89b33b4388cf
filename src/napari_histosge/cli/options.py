"""Argument groups shared by the ``histosge`` commands, and the checks every option passes before any work.

Each command checks all its options (paths, ranges, the positions file) before it reads
data or loads a model, so a typo fails in a fraction of a second with one line, not after
the features were extracted.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import Field
from pathlib import Path
from typing import Any

from .. import outputs
from ..errors import InputError
from ..settings import declared_fields, setting_of
from ..slide.grid_size import check_grid_um


# ----------------------------------------------------------------------------- argument groups
def add_data_args(p: argparse.ArgumentParser) -> None:
    """``DATA`` (one section) and ``--image``."""
    p.add_argument("data", help="Space Ranger folder, ST v1 folder or .h5ad with obsm['spatial'] (auto-detected)")
    p.add_argument("--image", help="attach a full-resolution H&E image (TIFF/SVS/JPEG) to the spots")
    add_bin_arg(p)
    add_gene_names_arg(p)


def add_gene_names_arg(p: argparse.ArgumentParser) -> None:
    """``--gene-names``: a table of Ensembl ids and symbols, for data named by id."""
    p.add_argument("--gene-names", dest="gene_name_table", metavar="FILE",
                   help="a table of Ensembl ids and gene symbols (two columns, tab or comma separated), so gene "
                        "symbols can be given for data named by id (default: the table shipped with the data, "
                        "e.g. <section>_genes.tsv)")


def add_bin_arg(p: argparse.ArgumentParser) -> None:
    """``--bin-um``: which bins of a Visium HD folder to read."""
    p.add_argument("--bin-um", type=int, choices=[8, 16],
                   help="Visium HD: read the bins of this size in µm (default 16 where present, else 8)")


def _feature_settings() -> list[tuple[str, Field]]:
    """``(flag, field)`` of each image-feature setting on the command line, as declared in ``FeatureConfig``."""
    from ..features import FeatureConfig

    return [(setting_of(f).flag or "--" + f.name.replace("_", "-"), f)
            for f in declared_fields(FeatureConfig) if setting_of(f).on_cli]


def _turns_off(flag: str, f: Field) -> bool:
    """Whether ``flag`` is the off switch of a true-by-default setting (``--no-cache``): given, the value is false."""
    return setting_of(f).kind is bool and flag.startswith("--no-") and f.default is True


def add_feature_args(p: argparse.ArgumentParser) -> None:
    """How image features are extracted: one flag per declared setting of ``FeatureConfig``.

    A true-by-default setting whose flag starts with ``--no-`` (``--no-cache``) is that off
    switch; any other true-or-false setting gets ``--name`` and ``--no-name``.
    """
    g = p.add_argument_group("image features")
    for flag, f in _feature_settings():
        spec = setting_of(f)
        if _turns_off(flag, f):
            g.add_argument(flag, action="store_true", help=f"do not {spec.help}")
            continue
        if spec.kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f"{spec.help} (default {'on' if f.default else 'off'})".replace("%", "%%"))
            continue
        shown = (f" (default {f.default:g})" if isinstance(f.default, (int, float))
                 else f" (default {f.default})" if spec.choices else "")
        kwargs: dict[str, Any] = {"default": f.default, "help": (spec.help + shown).replace("%", "%%")}
        if spec.kind in (int, float):
            kwargs["type"] = spec.kind
        if spec.choices:
            kwargs["choices"] = list(spec.choices)
        g.add_argument(flag, **kwargs)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and its training settings, one flag per setting (:mod:`.settings`)."""
    from .settings import add_settings_args

    add_settings_args(p)


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """Where features (and predictions) are computed: here or on dask.distributed."""
    g = p.add_argument_group("scale-out (dask.distributed)")
    g.add_argument(
        "--scheduler",
        help="extract features (and predict, for predict/superresolve/recover) on dask.distributed: 'local' "
             "starts a LocalCluster, or give a scheduler address such as tcp://host:8786 (default: in this "
             "process; results are identical)",
    )
    g.add_argument("--workers", type=int, help="workers of the LocalCluster (--scheduler local)")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--quiet``."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- checks before any work
def require_output(path: str, suffix: str | None, what: str = "output") -> Path:
    """``path`` as a file to write: the right suffix, in an existing, writable folder."""
    out = Path(path)
    if suffix is not None and out.suffix.lower() != suffix:
        raise InputError(f"the {what} must end in {suffix}", out)
    if out.is_dir():
        raise InputError(f"the {what} is a folder; give a file name ending in {suffix or 'a suffix'}", out)
    return _writable_folder(out.parent, what)


#: What a predictions output (``--out``) may be: an AnnData file or a SpatialData zarr store.
PREDICTION_SUFFIXES = (".h5ad", ".zarr")


def require_prediction_output(path: str, what: str = "output (--out)") -> Path:
    """``path`` as a predictions output: an ``.h5ad`` file, or a ``.zarr`` SpatialData store (replaced whole).

    A store needs the spatialdata package: its absence is reported here, before any work.
    """
    out = Path(path)
    if out.suffix.lower() != ".zarr":
        if out.suffix.lower() != ".h5ad":
            raise InputError(f"the {what} must end in .h5ad (AnnData) or .zarr (a SpatialData store)", out)
        return require_output(path, ".h5ad", what)
    if out.exists() and not out.is_dir():
        raise InputError(f"the {what} is a file, not a SpatialData store (a folder)", out)
    from ..io.spatialdata_io import require_spatialdata

    require_spatialdata(out)
    return _writable_folder(out.parent, what)


def require_output_folder(path: str, what: str = "output folder") -> Path:
    """``path`` as a folder to write into: an existing writable folder, or a new one in one."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"the {what} is a file, not a folder", out)
        _writable_folder(out, what)
    else:
        _writable_folder(out.parent, what)
    return out


def _writable_folder(folder: Path, what: str) -> Path:
    folder = folder if str(folder) else Path(".")
    if not folder.is_dir():
        raise InputError(f"the folder for the {what} does not exist", folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the folder for the {what} is not writable", folder)
    return folder


def require_file(path: str | None, what: str) -> None:
    """An input file that must exist (``None``: the option was not given)."""
    if path is not None and not Path(path).is_file():
        raise InputError(f"{what} not found" if not Path(path).is_dir() else f"{what} is a folder, not a file",
                         path)


def require_predictions(path: str) -> None:
    """A predictions file: an existing ``.h5ad`` file."""
    p = Path(path)
    if not p.is_file():
        raise InputError("predictions file does not exist" if not p.exists() else "predictions is not a file", p)
    if p.suffix.lower() != ".h5ad":
        raise InputError("the predictions must be an .h5ad file", p)


def read_h5ad(path: str | Path, *, need_positions: bool = False):
    """An ``.h5ad`` file read, with one clear error when it cannot be (or holds no positions)."""
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - any h5py/anndata failure means an unreadable file
        raise InputError(f"not a readable .h5ad file ({exc.__class__.__name__})", path) from None
    if need_positions and ("spatial" not in adata.obsm or adata.n_obs == 0):
        raise InputError("the file holds no positions (obsm['spatial'])", path)
    return adata


def require_data(path: str, what: str = "data") -> None:
    """A section (folder or file) that must exist; its format is checked when it is read."""
    if not Path(path).exists():
        raise InputError(f"{what} does not exist", path)


def require_section(path: str, what: str = "data", *, bin_um: int | None = None) -> None:
    """A section that must exist and be of a supported format, told from its names alone (no reader loads)."""
    from ..io.detect import SUPPORTED, detect_format

    require_data(path, what)
    fmt = detect_format(path)
    if fmt is None:
        raise InputError(f"unsupported input; {SUPPORTED}", path)
    if bin_um is not None and fmt != "visium_hd":
        raise InputError(f"a bin size applies to Visium HD outputs only, and this is {fmt!r}", path)


def require_measured_genes(genes: list[str], paths: list[str], *, bin_um: int | None = None) -> None:
    """Every one of ``genes`` among the genes each section of ``paths`` measures, read from the counts' header.

    A section whose header cannot be read cheaply is checked by its reader instead (same message).
    """
    from ..gene_lists import unknown_genes_message
    from ..io.gene_header import measured_genes

    if not genes:
        return
    for path in paths:
        measured = measured_genes(path, bin_um=bin_um)
        unknown = [] if measured is None else measured.unknown(genes)
        if unknown:
            raise InputError(unknown_genes_message(unknown, list(measured.names)), path)  # type: ignore[union-attr]


def require_int(value: int | None, name: str, least: int, most: int | None = None) -> None:
    """An integer option within ``least .. most`` (``None``: not given)."""
    if value is None:
        return
    if value < least or (most is not None and value > most):
        bound = f"between {least} and {most}" if most is not None else f"at least {least}"
        raise InputError(f"{name} must be {bound}, got {value}")


def require_positive(value: float | None, name: str) -> None:
    """A finite number > 0 (``None``: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number, got {value}")


def require_fraction(value: float, name: str) -> None:
    """A number strictly between 0 and 1."""
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise InputError(f"{name} must be between 0 and 1 (exclusive), got {value}")


def require_grid_um(value: float | None) -> None:
    """``--grid-um``: a finite size of at least :data:`~napari_histosge.slide.grid_size.MIN_GRID_UM`."""
    check_grid_um(value, "--grid-um")


def check_feature_args(args: argparse.Namespace) -> None:
    """The image-feature options: each as its declared setting, then the weights and the extractor."""
    for flag, f in _feature_settings():
        setting_of(f).check(flag, getattr(args, flag[2:].replace("-", "_")))
    if args.weights is not None:
        from ..features.hub import is_hub_spec

        if not is_hub_spec(args.extractor):  # a hub model's weights are a folder, checked below
            require_file(args.weights, "--weights file")
    if args.extractor != "none" and (args.extractor != "default" or args.weights is not None):
        from ..features import check_extractor

        check_extractor(args.extractor, args.weights)  # the Train widget's check too, before any data is read


def check_scale_args(args: argparse.Namespace) -> None:
    """The dask.distributed options."""
    require_int(args.workers, "--workers", 1)


# ----------------------------------------------------------------------------- shared helpers
def feature_config(args: argparse.Namespace):
    """The :class:`~napari_histosge.features.FeatureConfig` the feature options (and ``--device``) describe."""
    from ..features import FeatureConfig

    return FeatureConfig(device=args.device, **feature_values(args))


def feature_values(args: argparse.Namespace) -> dict[str, Any]:
    """The image-feature settings the flags give, by setting name (an off switch given: false)."""
    values: dict[str, Any] = {}
    for flag, f in _feature_settings():
        value = getattr(args, flag[2:].replace("-", "_"))
        values[f.name] = not value if _turns_off(flag, f) else value
    return values


def train_config(args: argparse.Namespace):
    """The chosen model's settings: its defaults, then the flags given."""
    from .settings import check_settings

    return check_settings(args)


def read_section(args: argparse.Namespace):
    """The section ``DATA`` (with ``--image``), read."""
    from ..io import read_spots

    return read_spots(args.data, image=args.image, bin_um=getattr(args, "bin_um", None),
                      gene_names=getattr(args, "gene_name_table", None))


def drive(gen, args: argparse.Namespace):
    """Run a progress generator with a terminal bar (none with ``--quiet``)."""
    from ..progress import run_with_tqdm

    return run_with_tqdm(gen, disable=getattr(args, "quiet", False))


def write_h5ad(adata, path: str | Path, what: str = "output (--out)") -> None:
    """Write predictions ``adata`` atomically to a checked ``.h5ad`` or ``.zarr`` path, refusing non-finite values.

    A model whose weights diverged predicts NaN; such a file is never written (an earlier
    file at ``path`` stays), and an ``OSError`` becomes one :class:`InputError`.
    """
    refuse_non_finite_predictions(adata)
    if Path(path).suffix.lower() == ".zarr":
        from ..io.spatialdata_write import write_spatialdata

        write_spatialdata(path, adata)
    else:
        outputs.write_h5ad(path, adata, what=what)


def refuse_non_finite_predictions(adata) -> None:
    """Raise :class:`InputError` naming the model if predictions ``adata`` hold NaN or infinite values."""
    import numpy as np

    values = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    bad = ~np.isfinite(values)
    if bad.any():
        info = adata.uns.get("histosge", {})
        rows = int(bad.any(axis=1).sum())
        raise InputError(f"the model predicts NaN or infinite values at {rows} of {adata.n_obs} positions (its "
                         "training diverged: train again with a lower --lr); nothing was written",
                         info.get("model_path") if isinstance(info, dict) else None)
