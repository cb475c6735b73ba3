"""Training throughput of the hybrid detector: baseline against adversarial steps.

    .venv/bin/python bench/train_throughput.py [--model hybrid_b0] [--batch-size 16] [--steps 3]

Runs the real training step (detector/adversarial.py) on one process with all its cores,
in both modes, one after the other in the same run, and prints samples/s per mode and
the adversarial/baseline ratio. The job on Ray Train adds data loading and DDP on top;
its own samples/s is logged to MLflow each epoch.
"""
from __future__ import annotations

import argparse
import time

import torch

from detector.adversarial import StepConfig, TrainStep
from detector.attacks import PGDConfig, UNetAttacker
from detector.device import resolve_device
from detector.factory import create_detector


def samples_per_second(model_name: str, mode: str, batch_size: int, steps: int, pgd_steps: int,
                       device: str) -> float:
    torch.manual_seed(0)
    model, info = create_detector(model_name, device=device)
    attacker = UNetAttacker().to(device) if mode == "adversarial" else None
    step = TrainStep(model, attacker, StepConfig(mode, PGDConfig(iterations=pgd_steps)))
    size = info.config.img_size
    pixels = torch.rand(batch_size, 3, size, size, device=device)
    labels = (torch.arange(batch_size, device=device) % 2).float()
    step(pixels, labels)  # warm-up: allocations, cuDNN autotuning
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(pixels, labels)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hybrid_b0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--device", default=resolve_device())
    args = parser.parse_args()
    rates = {mode: samples_per_second(args.model, mode, args.batch_size, args.steps, args.pgd_steps, args.device)
             for mode in ("baseline", "adversarial")}
    print(f"model {args.model}, batch {args.batch_size}, PGD-{args.pgd_steps}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    for mode, rate in rates.items():
        print(f"  {mode:12s} {rate:8.2f} samples/s")
    print(f"  adversarial / baseline: {rates['adversarial'] / rates['baseline']:.3f}")


if __name__ == "__main__":
    main()
