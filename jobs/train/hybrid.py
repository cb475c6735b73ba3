"""The hybrid detector's training job on Ray Train, recorded and registered in MLflow.

    fakescan train hybrid --data PREPARED --out OUT [--workers 2] [--epochs 5] [--mode adversarial]

- ``TorchTrainer``: DDP over gloo on CPU, NCCL on GPU; each worker reads its own shard of
  the train split through Ray Data.
- Every epoch, rank 0 validates (clean, JPEG 50, PGD), writes a checkpoint to the run's
  storage (local or s3://) and logs to MLflow. A killed worker restarts the worker group
  from the last checkpoint (``FailureConfig``) and keeps logging into the same MLflow run;
  rerunning the same command after the job itself died resumes the same way.
- At the end the model is logged to that run and registered (default ``fakescan-hybrid``).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detector.adversarial import StepConfig, TrainStep, bare
from detector.attacks import PGDConfig, UNetAttacker
from detector.factory import create_detector, parse_detector_spec, weights_metadata
from detector.hybrid import preprocess_crops
from detector.robustness import scenario_metrics
from jobs.train.common import TrainConfig, flip_augment, load_checkpoint, run_training, save_checkpoint
from pipelines.dataset import read_split
from pipelines.sources import arrow_filesystem_for


@dataclass
class HybridTrainConfig(TrainConfig):
    model: str = "hybrid_b0"
    mode: str = "adversarial"  # adversarial | baseline
    pgd_steps: int = 10
    val_pgd_limit: int = 256
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
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    torch.manual_seed(cfg["seed"] + rank)
    torch.set_num_threads(cfg["threads"])
    generator = torch.Generator().manual_seed(cfg["seed"] + 1000 * rank)
    model, info = create_detector(parse_detector_spec(cfg["init"] or cfg["model"], "hybrid"), device="cpu")
    attacker = UNetAttacker() if cfg["mode"] == "adversarial" else None
    start_epoch, state = load_checkpoint(model)
    model = ray.train.torch.prepare_model(model)
    # DDP on the attacker too, so that every worker's attacker takes the same steps.
    attacker = ray.train.torch.prepare_model(attacker) if attacker is not None else None
    step = TrainStep(model, attacker, StepConfig(cfg["mode"], PGDConfig(iterations=cfg["pgd_steps"])), cfg["lr"])
    if state is not None:
        step.load_state_dict(state["step"])
    device = ray.train.torch.get_device()
    metadata = weights_metadata("hybrid", info.config, cfg["register_as"], cfg["mlflow_run_id"][:8], cfg["run_name"],
                                mode=cfg["mode"])
    if rank == 0:
        # A client, not mlflow.start_run: the run belongs to the job, and a worker that exits
        # (or is killed) must not end it.
        client = MlflowClient(cfg["tracking_uri"])
        if start_epoch:
            client.set_tag(cfg["mlflow_run_id"], "fakescan.resumed_from_epoch", str(start_epoch))
        fs = arrow_filesystem_for(cfg["data"], cfg["s3_endpoint"])
        val_crops, val_labels = read_split(f"{cfg['data']}/crops", "val", fs, cfg["val_limit"], cfg["seed"])

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg["epochs"]):
        sums: dict[str, float] = defaultdict(float)
        batches = samples = 0
        started = time.perf_counter()
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy"):
            pixels = flip_augment(preprocess_crops(batch["pixels"], info.config.img_size), generator).to(device)
            for key, value in step(pixels, torch.as_tensor(batch["label"]).to(device)).items():
                sums[key] += value
            batches, samples = batches + 1, samples + len(pixels)
        elapsed = time.perf_counter() - started
        metrics = {f"train_{k}" if not k.startswith("train_") else k: v / max(batches, 1) for k, v in sums.items()}
        # Each worker sees its own shard at about the same pace: the job's rate is world × this one's.
        metrics.update(epoch=epoch, samples_per_s=world * samples / max(elapsed, 1e-9), epoch_seconds=elapsed)
        checkpoint = None
        if rank == 0:
            pgd = PGDConfig(iterations=cfg["pgd_steps"] or PGDConfig().iterations)
            metrics.update({f"val_{k}": v for k, v in scenario_metrics(
                bare(model), val_crops, val_labels, pgd, cfg["val_pgd_limit"]).items()})
            now = int(time.time() * 1000)
            client.log_batch(cfg["mlflow_run_id"], metrics=[Metric(k, float(v), now, epoch)
                                                             for k, v in metrics.items() if v == v])
            folder = Path(tempfile.mkdtemp(prefix="fakescan-ckpt-"))
            save_checkpoint(folder, bare(model), {"step": step.state_dict()}, epoch, metadata)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint is not None:
            shutil.rmtree(folder, ignore_errors=True)


def run_train_hybrid(config: HybridTrainConfig) -> dict[str, Any]:
    return run_training(config, train_loop, {}, notes=[],
                        tags={"mode": config.mode, "model": config.model})
