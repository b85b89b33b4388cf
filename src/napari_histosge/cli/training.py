"""``histosge train`` and ``histosge recover``: fit a model, or run the paper's hold-out protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..outputs import output_lock, write_csv
from .options import (
    add_bin_arg,
    add_common_args,
    add_data_args,
    add_feature_args,
    add_gene_names_arg,
    add_scale_args,
    add_train_args,
    check_feature_args,
    check_scale_args,
    drive,
    feature_config,
    read_section,
    require_file,
    require_fraction,
    require_measured_genes,
    require_output,
    require_prediction_output,
    require_section,
    train_config,
    write_h5ad,
)

if TYPE_CHECKING:
    from ..training.model_meta import ModelMeta


def add_parsers(sub) -> None:
    """Register ``train`` and ``recover`` on the subparsers ``sub``."""
    p = sub.add_parser("train", help="train a model on all spots of one or more sections and save a checkpoint")
    p.add_argument("data", nargs="+",
                   help="one or more sections: Space Ranger folder, ST v1 folder or .h5ad (auto-detected); "
                        "several sections train one model, each section's positions in its own frame")
    p.add_argument("--image", help="attach a full-resolution H&E image to the spots (one DATA only)")
    add_bin_arg(p)
    add_gene_names_arg(p)
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--resume", help="continue training from this checkpoint")
    add_init_arg(p)
    add_feature_args(p)
    add_train_args(p)
    add_scale_args(p)
    add_common_args(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("recover", help="hide spots, train on the rest, predict the hidden ones (paper protocol)")
    add_data_args(p)
    p.add_argument("--holdout", type=float, default=0.5, help="fraction of spots hidden (default 0.5)")
    p.add_argument("--out", required=True,
                   help="output .h5ad (or .zarr, a SpatialData store) with predictions for the hidden spots")
    p.add_argument("--metrics", help="also write per-gene held-out metrics to this CSV")
    p.add_argument("--save-model", help="also save the trained checkpoint here (.pt)")
    add_init_arg(p)
    add_feature_args(p)
    add_train_args(p)
    add_scale_args(p)
    add_common_args(p)
    p.set_defaults(handler=cmd_recover)


def add_init_arg(p: argparse.ArgumentParser) -> None:
    """``--init MODEL``: start from a trained model (e.g. one trained on other sections)."""
    p.add_argument("--init", metavar="MODEL",
                   help="start from this trained histosge checkpoint (e.g. trained on other sections of the tissue) "
                        "and fine-tune it on DATA: its genes, feature extractor and network settings are kept")


def load_init(args: argparse.Namespace):
    """The ``--init`` model, or ``None``, and the run's settings (``pipeline.run_settings.run_settings``)."""
    config = train_config(args)  # every flag checked against the model, before the model is read
    if args.init is None:
        return None, config
    from ..models import load_model
    from ..pipeline.run_settings import run_settings
    from .settings import given_settings

    init = load_model(args.init, device=args.device)
    return init, run_settings(config.model, given_settings(args), init)


def check_train(args: argparse.Namespace) -> None:
    """Every ``train`` option, before any section is read."""
    require_output(args.out, ".pt", "checkpoint (--out)")
    if args.image and len(args.data) > 1:
        raise InputError(f"--image attaches one image to one section, but {len(args.data)} sections were given; "
                         "give each section with its image inside its folder, or train on one DATA")
    for path in args.data:
        require_section(path, bin_um=args.bin_um)
    require_file(args.image, "--image file")
    require_file(args.resume, "--resume checkpoint")
    require_file(args.init, "--init checkpoint")
    if args.init and args.resume:
        raise InputError("--resume continues its own checkpoint and --init starts a new run from a model: give one")
    if args.init and len(args.data) > 1:
        raise InputError(f"--init fine-tunes a model on one section, but {len(args.data)} sections were given")
    check_feature_args(args)
    check_scale_args(args)
    check_genes_given(args, args.data)
    # A model of other sections a model draws on (subspot --prior): read with the section, checked there.
    require_file(getattr(train_config(args), "prior", None), "--prior model")


def check_genes_given(args: argparse.Namespace, paths: list[str]) -> None:
    """The training settings, and the genes they name (``--genes``, ``--include-genes``) in every section's header."""
    config = train_config(args)
    named = list(config.genes or []) + list(config.include_genes or [])
    if getattr(args, "gene_name_table", None):  # symbols of the table name genes the header lists by id
        from ..io.gene_names import read_gene_table

        symbols = set(read_gene_table(args.gene_name_table).values())  # a bad table: one line, before any work
        named = [g for g in named if g not in symbols]
    require_measured_genes(named, paths, bin_um=getattr(args, "bin_um", None))


def cmd_train(args: argparse.Namespace) -> int:
    """``histosge train``: train on one or more sections and save the checkpoint."""
    check_train(args)
    from ..io import read_spots  # heavy: after the checks
    from ..pipeline.steps import fit

    init, config = load_init(args)  # the model's defaults (and the --init model): before any data
    features = feature_config(args) if init is None or args.extractor != "default" or args.stain != "none" else None
    # One training per --out: a second one would interleave its checkpoints with this one's.
    with output_lock(args.out, what="checkpoint (--out)"):
        sections = [read_spots(path, image=args.image, bin_um=args.bin_um, gene_names=args.gene_name_table)
                    for path in args.data]
        model = drive(
            fit(sections if len(sections) > 1 else sections[0], train_config=config, feature_config=features,
                checkpoint_path=args.out, resume=args.resume, scheduler=args.scheduler, n_workers=args.workers,
                init=init),
            args,
        )
    n_spots = sum(min(a.n_obs, config.max_bins) for a in sections)  # fit trains on at most max_bins of each
    where = f" in {len(sections)} sections" if len(sections) > 1 else ""
    print(f"trained {model.config.model} on {spots_trained_on(n_spots, model.meta)}{where} x "
          f"{len(model.genes)} genes; {final_loss_text(model.meta)}")
    print(model.training_summary())
    print(f"checkpoint: {args.out}")
    return 0


def spots_trained_on(n_spots: int, meta: ModelMeta) -> str:
    """``"N spots"``, or ``"N spots (M held for validation)"`` where training held some of ``n_spots`` back."""
    return trained_on_text(n_spots, int(meta.n_validation_spots or 0), " spots")


def trained_on_text(n_train: int, held: int, unit: str = "") -> str:
    """The spots a network fitted of ``n_train`` training spots, and apart the ``held`` it validated on."""
    return f"{n_train - held}{unit} ({held} held for validation)" if held else f"{n_train}{unit}"


def final_loss_text(meta: ModelMeta) -> str:
    """The last epoch's training loss; a model fitted without epochs (in closed form) has none, and says so."""
    history = meta.history
    if not history:
        return "fitted without epochs (no training loss)"
    return f"final loss {history[-1]:.4g}"


def check_recover(args: argparse.Namespace) -> None:
    """Every ``recover`` option, before the section is read."""
    require_prediction_output(args.out)
    if args.metrics is not None:
        require_output(args.metrics, ".csv", "metrics file (--metrics)")
    if args.save_model is not None:
        require_output(args.save_model, ".pt", "checkpoint (--save-model)")
    require_fraction(args.holdout, "--holdout")
    require_file(args.init, "--init checkpoint")
    require_section(args.data, bin_um=args.bin_um)
    require_file(args.image, "--image file")
    check_feature_args(args)
    check_scale_args(args)
    check_genes_given(args, [args.data])


def cmd_recover(args: argparse.Namespace) -> int:
    """``histosge recover``: the hold-out protocol on one section, scored and written."""
    check_recover(args)
    from ..pipeline.recovery import recover  # heavy: after the checks

    init, config = load_init(args)
    features = feature_config(args) if init is None or args.extractor != "default" or args.stain != "none" else None

    adata = read_section(args)
    result = drive(
        recover(adata, holdout=args.holdout, seed=config.seed, train_config=config, feature_config=features,
                scheduler=args.scheduler, n_workers=args.workers, init=init),
        args,
    )
    result.predictions.uns["metrics_summary"] = json.loads(json.dumps(result.summary(), default=float))
    if args.save_model:  # first, so the predictions can name the model they came from
        result.model.save(args.save_model)
        result.predictions.uns["histosge"]["model_path"] = str(Path(args.save_model).resolve())
    write_h5ad(result.predictions, args.out)
    if args.metrics:
        write_csv(args.metrics, result.metrics, what="metrics file (--metrics)")
    print_recovery_summary(result.summary())
    print(result.model.training_summary())
    print(f"predictions for {len(result.test_ids)} hidden spots -> {args.out}")
    return 0


def print_recovery_summary(summary: dict) -> None:
    """The headline numbers of :meth:`~napari_histosge.pipeline.recovery.RecoveryResult.summary`."""
    def line(label: str, s: dict) -> str:
        return (f"  {label:<38} PCC {s['mean_pcc']:.3f}  MSE {s['mse']:.4f}  MAE {s['mae']:.4f}"
                f"  ({s['n_genes']} genes)")

    trained = trained_on_text(summary["n_train"], summary.get("n_validation", 0))
    print(f"held-out spots: {summary['n_test']} (trained on {trained})")
    print(line("model, hidden spots, every predicted gene", summary["model_all_genes"]))
    print(line("model, hidden spots, ranked genes", summary["model"]))
    print(line("model, hidden spots, top-mean genes", summary["model_top_mean"]))
    print(line("6-NN baseline, hidden spots", summary["baseline"]))
    print(line("6-NN baseline, top-mean genes", summary["baseline_top_mean"]))
    print(line("model, ALL spots incl. training (not held out)", summary["model_all_spots_incl_training"]))
    if "uncertainty" in summary:
        from ..evaluation.uncertainty import format_uncertainty

        print("  " + format_uncertainty(summary["uncertainty"]))
