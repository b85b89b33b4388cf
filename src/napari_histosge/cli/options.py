"""Argument groups shared by the ``histosge`` commands, and the checks every option passes before any work.

Each command checks all its options (paths, ranges, the positions file) before it reads
data or loads a model, so a typo fails in a fraction of a second with one line, not after
the features were extracted.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from .. import outputs
from ..errors import InputError

#: Help for the settings whose default is the model's own (``ModelSpec.defaults`` in the model
#: registry; reading it here would load torch on every call, so the help points to the table).
MODEL_DEFAULT = "the model's own default (docs/cli.md)"


# ----------------------------------------------------------------------------- argument groups
def add_data_args(p: argparse.ArgumentParser) -> None:
    """``DATA`` (one section) and ``--image``."""
    p.add_argument("data", help="Space Ranger folder, ST v1 folder or .h5ad with obsm['spatial'] (auto-detected)")
    p.add_argument("--image", help="attach a full-resolution H&E image (TIFF/SVS/JPEG) to the spots")


def add_feature_args(p: argparse.ArgumentParser) -> None:
    """How image features are extracted."""
    g = p.add_argument_group("image features")
    g.add_argument(
        "--extractor", default="default",
        help="'default' (weight-free, offline), 'uni', 'timm:<model name>', or 'none' (image features off)",
    )
    g.add_argument("--weights", help="local checkpoint file for the extractor (UNI or timm)")
    g.add_argument("--patch-um", type=float, help="patch edge in micrometres (needs a known pixel size)")
    g.add_argument(
        "--patch-spot-fraction", type=float, default=None,
        help="patch edge as a multiple of the spot diameter (used when --patch-um is not given; default 2)",
    )
    g.add_argument("--feature-batch-size", type=int, default=None, help="patches per extractor batch (default 64)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The model and its training settings (flags not given keep the model's defaults)."""
    g = p.add_argument_group("model and training")
    g.add_argument("--model", default="histosge",
                   help="'histosge' (image + position, the paper), 'conditioned' (also the measured neighbours) "
                        "or 'subspot' (a grid of cells from the H&E and the measured spots, consistent with them)")
    g.add_argument("--epochs", type=int,
                   help=f"training epochs (histosge: 1000 as the paper; conditioned: {MODEL_DEFAULT})")
    g.add_argument("--batch-size", type=int,
                   help=f"spots per optimiser step (histosge: 512 as the paper; conditioned: {MODEL_DEFAULT})")
    g.add_argument("--lr", type=float, help="learning rate (paper: 1e-3)")
    g.add_argument("--n-genes", type=int, help="number of highly variable genes to predict (paper: 1000)")
    g.add_argument("--genes", help="comma-separated gene names to predict instead of HVGs")
    g.add_argument("--gene-selection", choices=["hvg", "spatial", "hvg+spatial"],
                   help="how genes are ranked when --genes is not given: 'hvg' highly variable (default, as the "
                        "paper), 'spatial' spatially structured (Moran's I), or the best of both")
    g.add_argument("--group-size", type=int, help="spots per self-attention group")
    g.add_argument("--grouping", choices=["spatial", "file_order"], help="how spots are grouped for attention")
    g.add_argument("--feature-dropout", type=float,
                   help="share of image-feature columns zeroed per spot while training (default 0.5; 0 is off)")
    g.add_argument("--image-init", type=float,
                   help="initial scale of the image-input weights (default 0: start from positions only; "
                        "1 is PyTorch's initialisation)")
    g.add_argument("--dropout", type=float,
                   help="dropout inside the network (histosge: in its transformer; default 0, as the paper)")
    g.add_argument("--head-rank", type=int,
                   help="histosge: pass the gene head's last layer through this many shared directions "
                        "(default: full rank, as the paper)")
    g.add_argument("--seed", type=int, default=0, help="random seed (split, weights, batches)")
    g.add_argument("--val-fraction", type=float,
                   help="share of the training spots held back to keep the best epoch (histosge: and to stop "
                        "early); default 0.1, 0 trains every spot for all epochs as the paper")
    g.add_argument("--neighbours", type=int,
                   help="conditioned model: measured neighbours in each position's context "
                        f"({MODEL_DEFAULT})")
    g.add_argument("--kriging-rank", type=int,
                   help="conditioned model: principal directions that may couple genes when kriging the "
                        "neighbours, per gene where cross-validation on the training spots favours it "
                        "(default 16; 0 krige every gene alone)")
    g.add_argument("--no-image-trend", action="store_true",
                   help="conditioned model: do not let the image predict the genes' principal directions "
                        "(the image trend the kriging interpolates around)")
    g.add_argument("--no-depth-term", action="store_true",
                   help="conditioned model: do not add the neighbours' kriged sequencing depth to genes "
                        "counted less than once per spot (the depth moves their log-normalised values)")
    g.add_argument("--histosge-weight", type=float,
                   help="conditioned model: weight of its HisToSGE companion (image + position, trained first "
                        "on the same spots) in the prediction, 0..1 (default: chosen on validation spots; "
                        "0 trains no companion)")
    g.add_argument("--cell-um", type=float,
                   help="subspot model: side of its grid cells in µm (default 14, at least two image pixels)")
    g.add_argument("--prior-bandwidth", type=float,
                   help="subspot model: width of the smoothed measurement it starts from, in spot spacings "
                        "(default 1.5)")
    g.add_argument("--image-modulation", action="store_true",
                   help="subspot model: let the cells' image features modulate the smoothed measurement (off by "
                        "default: no help on the pooled super-resolution benchmark)")
    g.add_argument("--histosge-members", type=int,
                   help="conditioned model: HisToSGE models in its companion, alike but for their initial "
                        "weights; their mean is blended in (default 3)")


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


def require_data(path: str, what: str = "data") -> None:
    """A section (folder or file) that must exist; its format is checked when it is read."""
    if not Path(path).exists():
        raise InputError(f"{what} does not exist", path)


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


def check_feature_args(args: argparse.Namespace) -> None:
    """The image-feature options."""
    if args.weights is not None and not str(args.weights).startswith("hf-hub:"):
        require_file(args.weights, "--weights file")
    require_positive(args.patch_um, "--patch-um")
    require_positive(args.patch_spot_fraction, "--patch-spot-fraction")
    require_int(args.feature_batch_size, "--feature-batch-size", 1)


def check_scale_args(args: argparse.Namespace) -> None:
    """The dask.distributed options."""
    require_int(args.workers, "--workers", 1)


# ----------------------------------------------------------------------------- shared helpers
def feature_config(args: argparse.Namespace):
    """The :class:`~napari_histosge.features.FeatureConfig` the feature options describe."""
    from ..features import FeatureConfig

    config = FeatureConfig(extractor=args.extractor, checkpoint=args.weights, device=args.device)
    if args.patch_um is not None:
        config.patch_um = args.patch_um
    if args.patch_spot_fraction is not None:
        config.patch_spot_fraction = args.patch_spot_fraction
    if args.feature_batch_size is not None:
        config.batch_size = args.feature_batch_size
    config.cache = not args.no_cache
    return config


def train_settings(args: argparse.Namespace) -> dict:
    """The training settings the options give (``None``: not given, the model's default)."""
    values = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "n_top_genes": args.n_genes, "group_size": args.group_size, "grouping": args.grouping,
        "seed": args.seed, "device": args.device, "neighbours": args.neighbours,
        "feature_dropout": args.feature_dropout, "kriging_rank": args.kriging_rank,
        "val_fraction": args.val_fraction, "image_init": args.image_init, "histosge_weight": args.histosge_weight,
        "histosge_members": args.histosge_members, "dropout": args.dropout, "head_rank": args.head_rank,
        "cell_um": args.cell_um, "prior_bandwidth": args.prior_bandwidth, "gene_selection": args.gene_selection,
    }
    if args.image_modulation:
        values["image_modulation"] = True
    if args.no_image_trend:
        values["image_trend"] = False
    if args.no_depth_term:
        values["depth_term"] = False
    if args.genes is not None:
        values["genes"] = [g.strip() for g in args.genes.split(",") if g.strip()]
        if not values["genes"]:
            raise InputError(f"--genes lists no gene name: {args.genes!r}")
    return values


def check_train_settings(args: argparse.Namespace) -> None:
    """The bounds of every given training setting, without loading a model (no torch: fast)."""
    from ..training.inputs import TrainConfig

    given = {k: v for k, v in train_settings(args).items() if v is not None}
    TrainConfig.from_dict({**TrainConfig().to_dict(), **given})


def train_config(args: argparse.Namespace):
    """The :class:`~napari_histosge.training.inputs.TrainConfig` of the options: the model's defaults, then them."""
    from ..models import train_config as model_config

    return model_config(args.model, **train_settings(args))


def read_section(args: argparse.Namespace):
    """The section ``DATA`` (with ``--image``), read."""
    from ..io import read_spots

    return read_spots(args.data, image=args.image)


def drive(gen, args: argparse.Namespace):
    """Run a progress generator with a terminal bar (none with ``--quiet``)."""
    from ..progress import run_with_tqdm

    return run_with_tqdm(gen, disable=getattr(args, "quiet", False))


def write_h5ad(adata, path: str | Path, what: str = "output (--out)") -> None:
    """Write predictions ``adata`` atomically to a checked ``.h5ad`` path, refusing non-finite values.

    A model whose weights diverged predicts NaN; such a file is never written (an earlier
    file at ``path`` stays), and an ``OSError`` becomes one :class:`InputError`.
    """
    refuse_non_finite_predictions(adata)
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
