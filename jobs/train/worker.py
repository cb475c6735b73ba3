"""What both training loops share on the Ray Train workers: augmentation, checkpoint files, and
each epoch's report (metrics to Ray Train and, from rank 0, to the job's MLflow run)."""
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from detector.degrade import DegradationEngine
from detector.pseudofakes import self_blend_with_alpha
from detector.weights import load_state, load_weights, save_weights
from jobs.tracking import WEIGHTS_ARTIFACT
from pipelines.dataset import read_split
from pipelines.sources import arrow_filesystem_for

STATE_FILE = "train_state.pt"
Model = TypeVar("Model", bound=torch.nn.Module)


@dataclass
class TrainingBatch:
    """A shard batch as the step sees it. ``alphas`` are every image's (H, W) blend alphas where
    all are known (self-blends; zero for real crops), else None."""

    images: np.ndarray
    labels: np.ndarray
    alphas: np.ndarray | None = None


def with_self_blends(batch: dict[str, np.ndarray], first_seed: int) -> TrainingBatch:
    """Each real crop and a fresh self-blend of it (SBI's training batch: every fake beside its
    own source), seeded per sample and epoch."""
    made = [self_blend_with_alpha(crop, landmarks, np.random.default_rng(first_seed + i))
            for i, (crop, landmarks) in enumerate(zip(batch["pixels"], batch["landmarks"]))]
    if not made:
        return TrainingBatch(batch["pixels"], batch["label"])
    fakes, alphas = (np.stack(parts) for parts in zip(*made))
    return TrainingBatch(np.concatenate([batch["pixels"], fakes]),
                         np.concatenate([batch["label"], np.ones(len(fakes), np.float32)]),
                         np.concatenate([np.zeros_like(alphas), alphas]))


def training_images(batch: dict[str, np.ndarray], cfg: dict[str, Any], engine: DegradationEngine,
                    first_seed: int) -> TrainingBatch:
    """A shard batch paired with self-blends (``--fakes self-blend``), then through the
    degradation engine, which keeps every pixel where it was, so the alphas still hold."""
    made = with_self_blends(batch, first_seed) if cfg["fakes"] == "self-blend" else TrainingBatch(
        batch["pixels"], batch["label"])
    made.images = degrade(made.images, engine, first_seed)
    return made


def degrade(images: np.ndarray, engine: DegradationEngine, first_seed: int) -> np.ndarray:
    """Each image through the compound degradation engine with its own seed: reproducible per
    sample and epoch (the engine passes a share of them through untouched)."""
    return np.stack([engine(image, first_seed + i) for i, image in enumerate(np.asarray(images))])


def sample_seed(cfg: dict[str, Any], epoch: int, world: int, rank: int, samples: int) -> int:
    """The first sample seed of a batch: distinct per seed, epoch, worker and position."""
    return ((cfg["seed"] * 1000 + epoch) * world + rank) * 1_000_000 + samples


def flip_augment(pixels: torch.Tensor, generator: torch.Generator, alphas: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random half of the images mirrored, in place, with their alphas where there are some."""
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels[flip] = pixels[flip].flip(-1)
    if alphas is not None:
        alphas[flip] = alphas[flip].flip(-1)
    return pixels, alphas


def load_checkpoint(model: torch.nn.Module) -> tuple[int, dict | None]:
    """The epoch to start from and the saved training state, from Ray Train's latest checkpoint."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as folder:
        load_state(model, load_weights(str(Path(folder) / WEIGHTS_ARTIFACT))[0], source="checkpoint")
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    return state["epoch"] + 1, state


def save_checkpoint(folder: Path, model: torch.nn.Module, state: dict[str, Any], epoch: int,
                    metadata: dict[str, str]) -> None:
    save_weights(model, folder / WEIGHTS_ARTIFACT, dict(metadata, epoch=str(epoch)))
    torch.save({"epoch": epoch, **state}, folder / STATE_FILE)


class EpochReporter:
    """Every worker reports each epoch's metrics to Ray Train. Rank 0 also validates, logs to the
    job's MLflow run and reports a checkpoint: through a client, not ``mlflow.start_run``, since
    the run belongs to the job, and a worker that exits (or is killed) must not end it."""

    def __init__(self, cfg: dict[str, Any], start_epoch: int) -> None:
        import ray.train

        context = ray.train.get_context()
        self.cfg, self.world = cfg, context.get_world_size()
        self.lead = context.get_world_rank() == 0
        if self.lead:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(cfg["tracking_uri"])
            if start_epoch:
                self.client.set_tag(cfg["mlflow_run_id"], "fakescan.resumed_from_epoch", str(start_epoch))
            fs = arrow_filesystem_for(cfg["data"], cfg["s3_endpoint"])
            self.val_crops, self.val_labels = read_split(f"{cfg['data']}/crops", "val", fs, cfg["val_limit"],
                                                         cfg["seed"])

    def report(self, epoch: int, losses: dict[str, float], samples: int, seconds: float, model: Model,
               state: dict[str, Any], metadata: dict[str, str],
               validate: Callable[[Model, np.ndarray, np.ndarray], dict[str, float]]) -> None:
        """``losses`` are this worker's means over the epoch; ``validate(model, crops, labels)``
        gives rank 0's validation metrics."""
        import ray.train
        from mlflow.entities import Metric

        # Each worker sees its own shard at about the same pace: the job's rate is world × this one's.
        metrics = dict(losses, epoch=epoch, samples_per_s=self.world * samples / max(seconds, 1e-9),
                       epoch_seconds=seconds)
        checkpoint, folder = None, None
        if self.lead:
            metrics.update(validate(model, self.val_crops, self.val_labels))
            now = int(time.time() * 1000)
            self.client.log_batch(self.cfg["mlflow_run_id"], metrics=[
                Metric(k, float(v), now, epoch) for k, v in metrics.items() if v == v])
            folder = Path(tempfile.mkdtemp(prefix="fakescan-ckpt-"))
            save_checkpoint(folder, model, state, epoch, metadata)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=checkpoint)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
