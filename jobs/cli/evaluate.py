"""The ``fakescan evaluate`` command line."""
from __future__ import annotations

import argparse
import math

from jobs.cli.arguments import add_s3_endpoint, name_list, positive_int


def add_parser(commands: argparse._SubParsersAction) -> None:
    from detector.protocol import EXPLAIN_METHODS, SCENARIOS

    evaluate = commands.add_parser(
        "evaluate", help="the robustness protocol: accuracy, ROC AUC and ECE under 7 scenarios",
        description="Score every --model on the same labelled crops under clean, JPEG 50, H.264, PGD, learned U-Net "
                    "and U-Net + compression scenarios (on Ray Data); write Parquet tables, heatmap galleries and "
                    "an MLflow run to OUT. Render it with fakescan report OUT.")
    evaluate.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC",
                          help="weights (.safetensors path or s3:// URI) or models:/NAME@ALIAS; repeat to compare, "
                               "e.g. --model baseline=a.safetensors --model robust=b.safetensors")
    evaluate.add_argument("--data", required=True, help="a dataset written by fakescan prepare, or a labelled video "
                          "set (real/ and fake/ folders or labels.csv; it is prepared into OUT/prepared)")
    evaluate.add_argument("--out", required=True, help="local folder or s3://bucket/prefix for the results")
    evaluate.add_argument("--split", default="test", help="the prepared split to evaluate on (default test)")
    evaluate.add_argument("--scenarios", type=name_list, default=SCENARIOS, metavar="NAMES",
                          help=f"scenarios to run (default all: {','.join(SCENARIOS)})")
    evaluate.add_argument("--limit", type=positive_int, default=2000, help="most crops evaluated (a seeded random "
                          "sample; default 2000)")
    evaluate.add_argument("--pgd-steps", type=positive_int, default=10, help="PGD iterations (ε 8/255, step 2/255; "
                          "default 10)")
    evaluate.add_argument("--unet-steps", type=int, default=200, help="optimiser steps fitting each model's U-Net "
                          "attacker (default 200)")
    evaluate.add_argument("--attack-split", default="train", help="the split the U-Net attackers are fitted on "
                          "(default train)")
    evaluate.add_argument("--analysis", choices=(*EXPLAIN_METHODS, "none"), default="gradcam",
                          help="heatmap method for the feature-cosine and attention-entropy analysis (default gradcam)")
    evaluate.add_argument("--gallery", type=int, default=6, help="crops per gallery (confident fakes, "
                          "disagreements); 0 for none (default 6)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    evaluate.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, "
                          "else sqlite under OUT)")
    add_s3_endpoint(evaluate)


def run(args: argparse.Namespace) -> int:
    from jobs.evaluate.job import EvaluateConfig, run_evaluate

    config = EvaluateConfig(
        models=tuple(args.model), data=args.data, out=args.out.rstrip("/"), split=args.split,
        scenarios=tuple(args.scenarios), limit=args.limit, pgd_iterations=args.pgd_steps, unet_steps=args.unet_steps,
        attack_split=args.attack_split, analysis=None if args.analysis == "none" else args.analysis,
        gallery=args.gallery, batch_size=args.batch_size, tracking_uri=args.tracking_uri, s3_endpoint=args.s3_endpoint)
    result = run_evaluate(config)
    summary = result["summary"]
    clean = [r for r in result["metrics"].to_pylist() if r["stream"] == "all" and r["scenario"] == "clean"]
    by_method = [r for r in result["methods"].to_pylist() if r["stream"] == "all" and r["scenario"] == "clean"]
    shown = "; ".join(f"{r['model']} clean AUC {auc_text(r['auc'])}" + "".join(
        f", {m['method']} {auc_text(m['auc'])}" for m in by_method if m["model"] == r["model"]) for r in clean)
    print(f"fakescan: evaluated {len(summary['models'])} model(s) on {summary['n']} crops × "
          f"{len(summary['scenarios'])} scenarios in {summary['seconds']:.0f} s | {shown} | "
          f"results: {config.out} (fakescan report {config.out})")
    return 0


def auc_text(auc: float | None) -> str:
    return "n/a" if auc is None or math.isnan(auc) else f"{auc:.3f}"
