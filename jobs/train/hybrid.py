"""The hybrid detector's training job on Ray Train, recorded and registered in MLflow.

    fakescan train hybrid --data PREPARED --out OUT [--workers 2] [--epochs 5] [--mode adversarial]

- ``TorchTrainer``: DDP over gloo on CPU, NCCL on GPU; each worker reads its own shard of
  the train split through Ray Data.
- Half of the training crops (``--degrade-share``) pass through the compound degradation
  engine, seeded per sample and epoch, as in the ensemble's job.
- A ``hybrid_boundary_*`` model trained on self-blends also learns where each image is
  blended, from the blend alphas (``--boundary-weight``); on prepared fakes its boundary
  head is frozen.
- Every epoch, rank 0 validates (clean, JPEG 50, PGD), writes a checkpoint to the run's
  storage (local or s3://) and logs to MLflow. A killed worker restarts the worker group
  from the last checkpoint (``FailureConfig``) and keeps logging into the same MLflow run;
  rerunning the same command after the job itself died resumes the same way.
- At the end the model is logged to that run and registered (default ``fakescan-hybrid``).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from detector.adversarial import StepConfig, TrainStep, bare
from detector.attacks import PGDConfig, UNetAttacker
from detector.degrade import DegradationConfig, DegradationEngine
from detector.factory import create_detector, parse_detector_spec, weights_metadata
from detector.hybrid import preprocess_crops
from detector.robustness import scenario_metrics
from jobs.train.common import TrainConfig, run_training
from jobs.train.worker import EpochReporter, flip_augment, load_checkpoint, sample_seed, training_images


@dataclass
class HybridTrainConfig(TrainConfig):
    model: str = "hybrid_b0"
    mode: str = "adversarial"  # adversarial | baseline
    pgd_steps: int = 10
    val_pgd_limit: int = 256
    backbone_weights: str | None = None  # a published timm checkpoint of the backbone, e.g. ImageNet EfficientNet-B0
    boundary_weight: float = 10.0  # of a hybrid_boundary_* model's boundary loss, with --fakes self-blend
    experiment: str = "fakescan-hybrid"
    register_as: str = "fakescan-hybrid"

    kind = "hybrid"

    @property
    def run_name(self) -> str:
        return self.name or f"hybrid-{self.model}-{self.mode}"


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg["seed"] + rank)
    torch.set_num_threads(cfg["threads"])
    generator = torch.Generator().manual_seed(cfg["seed"] + 1000 * rank)
    pretrained = {} if cfg["init"] else {"backbone_weights": cfg["backbone_weights"]}
    model, info = create_detector(parse_detector_spec(cfg["init"] or cfg["model"], "hybrid"), device="cpu",
                                  **pretrained)
    attacker: torch.nn.Module | None = UNetAttacker() if cfg["mode"] == "adversarial" else None
    # A boundary head learns where the blend alphas are known, from self-blends. Elsewhere it is
    # frozen, or DDP would wait for gradients that never come.
    boundary = getattr(model, "boundary", None)
    learns_boundary = boundary is not None and cfg["fakes"] == "self-blend"
    if boundary is not None and not learns_boundary:
        boundary.requires_grad_(False)
    start_epoch, state = load_checkpoint(model)
    model = ray.train.torch.prepare_model(model)
    # DDP on the attacker too, so that every worker's attacker takes the same steps.
    attacker = ray.train.torch.prepare_model(attacker) if attacker is not None else None
    step = TrainStep(model, attacker, StepConfig(cfg["mode"], PGDConfig(iterations=cfg["pgd_steps"]),
                                                 boundary_weight=cfg["boundary_weight"]), cfg["lr"])
    if state is not None:
        step.load_state_dict(state["step"])
    device = ray.train.torch.get_device()
    metadata = weights_metadata("hybrid", info.config, cfg["register_as"], cfg["mlflow_run_id"][:8], cfg["run_name"],
                                mode=cfg["mode"])
    reporter = EpochReporter(cfg, start_epoch)
    pgd = PGDConfig(iterations=cfg["pgd_steps"] or PGDConfig().iterations)
    engine = DegradationEngine(DegradationConfig(p_apply=cfg["degrade_share"]))

    def validate(detector: torch.nn.Module, crops: Any, labels: Any) -> dict[str, float]:
        return {f"val_{k}": v for k, v in scenario_metrics(detector, crops, labels, pgd,
                                                             cfg["val_pgd_limit"]).items()}

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg["epochs"]):
        sums: dict[str, float] = defaultdict(float)
        batches = samples = 0
        started = time.perf_counter()
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy"):
            made = training_images(batch, cfg, engine, sample_seed(cfg, epoch, world, rank, samples))
            alphas = torch.from_numpy(made.alphas) if made.alphas is not None and learns_boundary else None
            pixels, alphas = flip_augment(preprocess_crops(made.images, info.img_size), generator, alphas)
            alphas = alphas.to(device) if alphas is not None else None
            for key, value in step(pixels.to(device), torch.as_tensor(made.labels).to(device), alphas).items():
                sums[key] += value
            batches, samples = batches + 1, samples + len(pixels)
        losses = {f"train_{k}" if not k.startswith("train_") else k: v / max(batches, 1) for k, v in sums.items()}
        reporter.report(epoch, losses, samples, time.perf_counter() - started, bare(model),
                        {"step": step.state_dict()}, metadata, validate)


def run_train_hybrid(config: HybridTrainConfig) -> dict[str, Any]:
    notes = [] if config.backbone_weights or config.init else [
        "The EfficientNet backbone started from random weights (no --backbone-weights): it has no ImageNet prior."]
    return run_training(config, train_loop, notes=notes, tags={"mode": config.mode, "model": config.model})
