"""The ``histosge`` command line: the same steps as the plugin, for batches and clusters.

Every subcommand drives a progress generator from :mod:`napari_histosge.pipeline`
with a terminal progress bar. Errors about the input print one line and exit with
status 2; there is no traceback for a bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import CancelledError, HistosgeError, InputError
from .training_inputs import MODEL_DEFAULTS

EXIT_INPUT_ERROR = 2
#: The conditioned model keeps its best epoch on a validation split and overfits after a
#: few epochs on these data (docs/benchmarks.md), so it gets far fewer than HisToSGE's 1000.
CONDITIONED_EPOCHS = MODEL_DEFAULTS["conditioned"]["epochs"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="Space Ranger folder, ST v1 folder or .h5ad with obsm['spatial'] (auto-detected)")
    p.add_argument("--image", help="attach a full-resolution H&E image (TIFF/SVS/JPEG) to the spots")


def _add_feature_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image features")
    g.add_argument(
        "--extractor", default="default",
        help="'default' (weight-free, offline), 'uni', 'timm:<model name>', or 'none' (image features off)",
    )
    g.add_argument("--weights", help="local checkpoint file for the extractor (UNI or timm)")
    g.add_argument("--patch-um", type=float, help="patch edge in micrometres (needs a known pixel size)")
    g.add_argument(
        "--patch-spot-fraction", type=float, default=None,
        help="patch edge as a multiple of the spot diameter (used when --patch-um is not given)",
    )
    g.add_argument("--feature-batch-size", type=int, default=None, help="patches per extractor batch")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--model", default="histosge",
                   help="'histosge' (image + position, the paper) or 'conditioned' (also the measured neighbours)")
    g.add_argument("--epochs", type=int,
                   help=f"training epochs (histosge: 1000 as the paper; conditioned: {CONDITIONED_EPOCHS})")
    g.add_argument("--batch-size", type=int, help="spots per optimiser step (histosge: 512 as the paper; conditioned: "
                        f"{MODEL_DEFAULTS['conditioned']['batch_size']})")
    g.add_argument("--lr", type=float, help="learning rate (paper: 1e-3)")
    g.add_argument("--n-genes", type=int, help="number of highly variable genes to predict (paper: 1000)")
    g.add_argument("--genes", help="comma-separated gene names to predict instead of HVGs")
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
                        f"(default {MODEL_DEFAULTS['conditioned']['neighbours']})")
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
    g.add_argument("--histosge-members", type=int,
                   help="conditioned model: HisToSGE models in its companion, alike but for their initial "
                        "weights; their mean is blended in (default 3)")


def _add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (dask.distributed)")
    g.add_argument(
        "--scheduler",
        help="extract features (and predict, for predict/recover) on dask.distributed: 'local' starts a "
             "LocalCluster, or give a scheduler address such as tcp://host:8786 (default: in this process; "
             "results are identical)",
    )
    g.add_argument("--workers", type=int, help="workers of the LocalCluster (--scheduler local)")


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``histosge`` (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="histosge",
        description="Predict spatial gene expression from H&E histology and super-resolve it (HisToSGE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on all spots of one or more sections and save a checkpoint")
    p.add_argument("data", nargs="+",
                   help="one or more sections: Space Ranger folder, ST v1 folder or .h5ad (auto-detected); "
                        "several sections train one model, each section's positions in its own frame")
    p.add_argument("--image", help="attach a full-resolution H&E image to the spots (one DATA only)")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--resume", help="continue training from this checkpoint")
    _add_feature_args(p)
    _add_train_args(p)
    _add_scale_args(p)
    _add_common_args(p)

    p = sub.add_parser("predict", help="N-fold super-resolution: predict expression between measured spots")
    p.add_argument("model", help="checkpoint written by 'histosge train'")
    _add_data_args(p)
    p.add_argument("--fold", type=int, default=4, help="N: positions per measured spot, 2..16 (default 4)")
    p.add_argument("--out", required=True, help="output .h5ad")
    _add_scale_args(p)
    _add_common_args(p)

    p = sub.add_parser("recover", help="hide spots, train on the rest, predict the hidden ones (paper protocol)")
    _add_data_args(p)
    p.add_argument("--holdout", type=float, default=0.5, help="fraction of spots hidden (default 0.5)")
    p.add_argument("--out", required=True, help="output .h5ad with predictions for the hidden spots")
    p.add_argument("--metrics", help="also write per-gene held-out metrics to this CSV")
    p.add_argument("--save-model", help="also save the trained checkpoint here")
    _add_feature_args(p)
    _add_train_args(p)
    _add_scale_args(p)
    _add_common_args(p)

    p = sub.add_parser("evaluate", help="score predictions (.h5ad) against measured spots")
    p.add_argument("predictions", help=".h5ad of predictions (from 'recover' or 'predict' at fold 1)")
    _add_data_args(p)
    p.add_argument("--layers", help="layer annotation TSV (barcode, layer) for spatial-domain ARI")
    p.add_argument("--metrics", help="write per-gene metrics to this CSV")

    p = sub.add_parser("demo", help="run the whole pipeline on a generated slide with known ground truth")
    p.add_argument("--out", default="histosge-demo", help="output folder (default ./histosge-demo)")
    p.add_argument("--epochs", type=int, default=150, help="training epochs for the demo")
    _add_common_args(p)
    return parser


def _feature_config(args: argparse.Namespace):
    from .features import FeatureConfig

    config = FeatureConfig(extractor=args.extractor, checkpoint=args.weights, device=args.device)
    if args.patch_um is not None:
        config.patch_um = args.patch_um
    if args.patch_spot_fraction is not None:
        config.patch_spot_fraction = args.patch_spot_fraction
    if args.feature_batch_size is not None:
        config.batch_size = args.feature_batch_size
    config.cache = not args.no_cache
    return config


def _train_config(args: argparse.Namespace):
    from .training import TrainConfig

    values = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "n_top_genes": args.n_genes, "group_size": args.group_size, "grouping": args.grouping,
        "seed": args.seed, "device": args.device, "neighbours": args.neighbours,
        "feature_dropout": args.feature_dropout, "kriging_rank": args.kriging_rank,
        "val_fraction": args.val_fraction, "image_init": args.image_init, "histosge_weight": args.histosge_weight,
        "histosge_members": args.histosge_members, "dropout": args.dropout, "head_rank": args.head_rank,
    }
    if args.no_image_trend:
        values["image_trend"] = False
    if args.no_depth_term:
        values["depth_term"] = False
    if args.genes:
        values["genes"] = [g.strip() for g in args.genes.split(",") if g.strip()]
    return TrainConfig.for_model(args.model, **values)  # flags not given keep the model's defaults


def _read(args: argparse.Namespace):
    from .io import read_spots

    return read_spots(args.data, image=args.image)


def _drive(gen, args: argparse.Namespace):
    from .progress import run_with_tqdm

    return run_with_tqdm(gen, disable=getattr(args, "quiet", False))


def _write_h5ad(adata, path: str | Path) -> None:
    out = Path(path)
    if out.suffix != ".h5ad":
        raise InputError("output must end in .h5ad", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)


def cmd_train(args: argparse.Namespace) -> int:
    from .io import read_spots
    from .pipeline import fit

    if args.image and len(args.data) > 1:
        raise InputError(f"--image attaches one image to one section, but {len(args.data)} sections were given; "
                         "give each section with its image inside its folder, or train on one DATA")
    sections = [read_spots(path, image=args.image) for path in args.data]
    model = _drive(
        fit(sections if len(sections) > 1 else sections[0], train_config=_train_config(args),
            feature_config=_feature_config(args), checkpoint_path=args.out, resume=args.resume,
            scheduler=args.scheduler, n_workers=args.workers),
        args,
    )
    final = model.meta.get("history", [float("nan")])[-1] if model.meta.get("history") else float("nan")
    n_spots = sum(a.n_obs for a in sections)
    where = f" in {len(sections)} sections" if len(sections) > 1 else ""
    print(f"trained {model.config.model} on {n_spots} spots{where} x {len(model.genes)} genes; "
          f"final loss {final:.4g}")
    print(model.training_summary())
    print(f"checkpoint: {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .pipeline import superresolve
    from .training import TrainedModel

    model = TrainedModel.load(args.model, device=args.device)
    adata = _read(args)
    result = _drive(superresolve(model, adata, args.fold, scheduler=args.scheduler, n_workers=args.workers), args)
    _write_h5ad(result, args.out)
    spread = " (with per-gene uncertainty in layers['std'])" if "std" in result.layers else ""
    print(f"{result.n_obs} positions ({args.fold}-fold of {adata.n_obs} spots) x {result.n_vars} genes"
          f"{spread} -> {args.out}")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from .recovery import recover

    adata = _read(args)
    result = _drive(
        recover(adata, holdout=args.holdout, seed=args.seed, train_config=_train_config(args),
                feature_config=_feature_config(args), scheduler=args.scheduler, n_workers=args.workers),
        args,
    )
    result.predictions.uns["metrics_summary"] = json.loads(json.dumps(result.summary(), default=float))
    _write_h5ad(result.predictions, args.out)
    if args.metrics:
        result.metrics.to_csv(args.metrics)
    if args.save_model:
        result.model.save(args.save_model)
    _print_summary(result.summary())
    print(result.model.training_summary())
    print(f"predictions for {len(result.test_ids)} hidden spots -> {args.out}")
    return 0


def _print_summary(summary: dict) -> None:
    def line(label: str, s: dict) -> str:
        return (f"  {label:<38} PCC {s['mean_pcc']:.3f}  MSE {s['mse']:.4f}  MAE {s['mae']:.4f}"
                f"  ({s['n_genes']} genes)")

    print(f"held-out spots: {summary['n_test']} (trained on {summary['n_train']})")
    print(line("model, hidden spots", summary["model"]))
    print(line("model, hidden spots, top-mean genes", summary["model_top_mean"]))
    print(line("6-NN baseline, hidden spots", summary["baseline"]))
    print(line("6-NN baseline, top-mean genes", summary["baseline_top_mean"]))
    print(line("model, ALL spots incl. training (not held out)", summary["model_all_spots_incl_training"]))
    if "uncertainty" in summary:
        from .uncertainty import format_uncertainty

        print("  " + format_uncertainty(summary["uncertainty"]))


def cmd_evaluate(args: argparse.Namespace) -> int:
    import anndata as ad
    import numpy as np

    from .evaluation import gene_metrics, read_layer_annotations, spatial_ari, summarize
    from .preprocess import dense_targets, normalize_log1p

    pred_path = Path(args.predictions)
    if not pred_path.exists():
        raise InputError("predictions file does not exist", pred_path)
    try:
        pred = ad.read_h5ad(pred_path)
    except Exception as exc:  # noqa: BLE001 - any h5py/anndata failure means an unreadable file
        raise InputError(f"not a readable .h5ad file ({exc.__class__.__name__})", pred_path) from None
    adata = _read(args)
    spots = [s for s in pred.obs_names if s in set(adata.obs_names)]
    genes = [g for g in pred.var_names if g in set(adata.var_names)]
    if not spots:
        raise InputError("no predicted spot id matches a measured spot; 'evaluate' scores fold-1 predictions", pred_path)
    if not genes:
        raise InputError("no predicted gene matches a measured gene", pred_path)
    truth = dense_targets(normalize_log1p(adata)[spots], genes)
    subset = pred[spots, genes].X
    values = np.asarray(subset.toarray() if hasattr(subset, "toarray") else subset)
    metrics = gene_metrics(truth, values, genes)
    s = summarize(metrics)
    print(f"{len(spots)} spots x {len(genes)} genes: PCC {s['mean_pcc']:.3f} (median {s['median_pcc']:.3f}), "
          f"MSE {s['mse']:.4f}, MAE {s['mae']:.4f}")
    if "std" in pred.layers:
        from .uncertainty import format_uncertainty, uncertainty_metrics

        spread = pred[spots, genes].layers["std"]
        spread = np.asarray(spread.toarray() if hasattr(spread, "toarray") else spread)
        print(format_uncertainty(uncertainty_metrics(truth, values, spread)))
    if args.metrics:
        metrics.to_csv(args.metrics)
    if args.layers:
        labels = read_layer_annotations(args.layers).reindex(spots)
        ari_pred = spatial_ari(values, labels.to_numpy())
        ari_true = spatial_ari(truth, labels.to_numpy())
        print(f"spatial-domain ARI (k-means vs layers): predicted {ari_pred:.3f}, measured {ari_true:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = _drive(run_demo(args.out, epochs=args.epochs, device=args.device), args)
    print(summary["report"])
    return 0


COMMANDS = {
    "train": cmd_train, "predict": cmd_predict, "recover": cmd_recover,
    "evaluate": cmd_evaluate, "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``histosge``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CancelledError:
        print("histosge: cancelled", file=sys.stderr)
        return 130
    except HistosgeError as exc:
        print(f"histosge: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("histosge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
