"""Accuracy and ROC AUC of a hybrid model on one split of a prepared crop dataset, on clean,
JPEG 50 and PGD crops (the scenarios the training job validates on).

    .venv/bin/python bench/hybrid_metrics.py --model WEIGHTS --data PREPARED [--split test] [--pgd-steps 10]
"""
from __future__ import annotations

import argparse

import torch

from detector.attacks import PGDConfig
from detector.factory import create_detector
from detector.robustness import scenario_metrics
from pipelines.dataset import read_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="safetensors weights")
    parser.add_argument("--data", required=True, help="a dataset written by fakescan prepare")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--pgd-limit", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, info = create_detector(args.model)
    crops, labels = read_split(f"{args.data}/crops", args.split)
    metrics = scenario_metrics(model, crops, labels, PGDConfig(iterations=args.pgd_steps), args.pgd_limit)
    print(f"{info.name} {info.version} on {args.data} [{args.split}]: {len(labels)} crops, "
          f"{int(labels.sum())} fake, {int((labels == 0).sum())} real")
    for scenario in ("clean", "jpeg50", "pgd"):
        if f"{scenario}_auc" in metrics:
            n = min(args.pgd_limit, len(labels)) if scenario == "pgd" else len(labels)
            print(f"  {scenario:7s} accuracy {metrics[scenario + '_accuracy']:.3f}  AUC "
                  f"{metrics[scenario + '_auc']:.3f}  (n={n})")


if __name__ == "__main__":
    main()
