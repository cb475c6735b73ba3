"""``fakescan train hybrid|ensemble``: one parser per detector over the flags they share."""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from jobs.cli.arguments import OneLineParser, absolute, add_s3_endpoint, positive_float, positive_int, share


def add_common(parser: argparse.ArgumentParser, kind: str, model: str, name: str) -> None:
    """The flags of every training job (``jobs.train.common.TrainConfig``)."""
    from detector.factory import list_detectors
    from jobs.train.common import TRAINING_FAKES

    parser.add_argument("--data", required=True, help="a dataset written by fakescan prepare (local or s3://)")
    parser.add_argument("--out", required=True, help="local folder for the model, and the MLflow store by default")
    parser.add_argument("--storage", default=None, help="Ray Train storage for checkpoints, local or s3:// "
                        "(default OUT/checkpoints)")
    parser.add_argument("--name", default=None, help=f"run name; rerunning a name resumes it (default {name})")
    parser.add_argument("--model", default=model, help=f"architecture config: {', '.join(list_detectors(kind))} "
                        f"(default {model})")
    parser.add_argument("--init", default=None, metavar="WEIGHTS", help=f"start from these {kind} weights "
                        "(.safetensors path or s3:// URI), e.g. a model to harden or continue")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="epochs (default 5)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="batch per worker (default 32)")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    parser.add_argument("--fakes", choices=TRAINING_FAKES, default="prepared",
                        help="prepared: the train split's crops as labelled (default); self-blend: its real crops "
                             "only, each paired every epoch with a fresh self-blend of itself (SBI)")
    parser.add_argument("--degrade-share", type=share, default=0.5, help="share of the training crops passed "
                        "through the compound degradation engine, each epoch anew (default 0.5; 0 for none)")
    parser.add_argument("--gpu", dest="use_gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="one GPU per worker (default: when the cluster has one per worker)")
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts allowed (default 3)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                        "else sqlite under OUT)")
    parser.add_argument("--register-as", default=f"fakescan-{kind}", help=f"registered model name (default "
                        f"fakescan-{kind})")
    parser.add_argument("--alias", default=None, help="registry alias to point at the new version, e.g. champion")
    parser.add_argument("--seed", type=int, default=0)
    add_s3_endpoint(parser)


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a detector on Ray Train (tracked in MLflow)")
    detectors = train.add_subparsers(dest="detector", required=True, parser_class=OneLineParser)
    hybrid = detectors.add_parser("hybrid", help="adversarial training of the hybrid EfficientNet-Transformer",
                                  description="Train the hybrid detector on a prepared crop dataset with DDP on "
                                              "Ray Train; log to MLflow and register the model.")
    add_common(hybrid, "hybrid", "hybrid_b0", "hybrid-MODEL-MODE")
    hybrid.add_argument("--mode", default="adversarial", choices=["adversarial", "baseline"],
                        help="adversarial (PGD + U-Net attacker, the default) or baseline (clean data only)")
    hybrid.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations in training and validation "
                        "(default 10, as in the paper)")
    hybrid.add_argument("--backbone-weights", default=None, metavar="FILE", help="a published timm checkpoint of "
                        "the config's backbone, e.g. ImageNet efficientnet_b0's model.safetensors (path or s3://); "
                        "ignored with --init")
    hybrid.add_argument("--boundary-weight", type=positive_float, default=10.0,
                        help="weight of the blending-boundary loss against the label's, for a hybrid_boundary_* "
                             "model trained with --fakes self-blend (default 10)")
    hybrid.add_argument("--val-pgd-limit", type=int, default=256, help="validation crops attacked with PGD "
                        "each epoch (default 256)")

    ensemble = detectors.add_parser("ensemble", help="fine-tune the DINOv2 + CLIP ensemble on degraded crops",
                                    description="Fine-tune the ensemble's backbone and stream heads on a prepared crop "
                                                "dataset passed through the compound degradation engine, with DDP "
                                                "on Ray Train; calibrate every stream; log to MLflow and register.")
    add_common(ensemble, "ensemble", "ensemble_giant", "ensemble-MODEL-FINETUNE")
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


def config_from(args: argparse.Namespace, config_type: type) -> Any:
    """The job's config from the flags of the same names; local paths made absolute."""
    values = {f.name: getattr(args, f.name) for f in fields(config_type) if hasattr(args, f.name)}
    values["data"] = args.data.rstrip("/")
    for path in ("init", "backbone_weights", "dinov2_weights", "clip_weights"):
        if path in values:
            values[path] = absolute(values[path])
    return config_type(**values)


def run(args: argparse.Namespace) -> int:
    if args.detector == "ensemble":
        from jobs.train.ensemble import EnsembleTrainConfig, run_train_ensemble

        result = run_train_ensemble(config_from(args, EnsembleTrainConfig))
        shown_prefix = "val_clean"
    else:
        from jobs.train.hybrid import HybridTrainConfig, run_train_hybrid

        result = run_train_hybrid(config_from(args, HybridTrainConfig))
        shown_prefix = "val_"
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result["metrics"].items()) if k.startswith(shown_prefix))
    print(f"fakescan: trained {result['model']} (run {result['run_id']}) | {shown} | weights: {result['weights']}")
    return 0
