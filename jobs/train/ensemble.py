"""The ensemble's fine-tune job on Ray Train, recorded and registered in MLflow.

    fakescan train ensemble --data PREPARED --out OUT [--model ensemble_giant]
        [--dinov2-weights model.safetensors --clip-weights open_clip_model.safetensors]
        [--finetune lora|full|frozen]

Half of the training crops pass through the compound degradation engine (seeded per
sample); every stream learns on the same images, and the loss is the mean of the streams'
losses. CLIP stays frozen. Checkpoints, failure handling and the MLflow run work as in the
hybrid's job; at the end every stream is calibrated on the val split and the model is
registered (default ``fakescan-ensemble``) with its calibration.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detector.degrade import DegradationConfig, DegradationEngine, apply_probe
from detector.ensemble import STREAMS, EnsembleDetector
from detector.factory import create_detector, parse_detector_spec, weights_metadata
from detector.hybrid import preprocess_crops
from detector.metrics import roc_auc
from jobs.train.common import TrainConfig, run_training
from jobs.train.worker import EpochReporter, flip_augment, load_checkpoint, sample_seed, training_images
from pipelines.errors import OptionError

FINETUNE_MODES = ("lora", "full", "frozen")


@dataclass
class EnsembleTrainConfig(TrainConfig):
    model: str = "ensemble_giant"
    finetune: str | None = None  # default: lora on a published backbone, full on a random one
    # Recompute the backbone blocks' activations in the backward pass (one more forward pass per
    # step) instead of keeping them: for a Giant fine-tune whose batch does not fit otherwise.
    grad_checkpointing: bool = False
    dinov2_weights: str | None = None
    clip_weights: str | None = None
    experiment: str = "fakescan-ensemble"
    register_as: str = "fakescan-ensemble"

    kind = "ensemble"

    def check(self) -> None:
        super().check()
        if self.finetune_mode not in FINETUNE_MODES:
            raise OptionError(f"unknown --finetune {self.finetune_mode!r}; choose from {', '.join(FINETUNE_MODES)}")

    def params(self) -> dict[str, Any]:
        return super().params() | {"finetune": self.finetune_mode}

    @property
    def finetune_mode(self) -> str:
        # LoRA keeps a published DINOv2's prior with few trainable weights; a random backbone
        # has no prior to keep, so it must train in full.
        return self.finetune or ("lora" if self.dinov2_weights or self.init else "full")

    @property
    def run_name(self) -> str:
        return self.name or f"ensemble-{self.model}-{self.finetune_mode}"


def build_model(cfg: dict[str, Any]):
    """The model to fine-tune: our weights to continue from, or a config with published DINOv2
    and CLIP checkpoints (or random weights)."""
    pretrained = {} if cfg["init"] else {"dinov2_weights": cfg["dinov2_weights"], "clip_weights": cfg["clip_weights"]}
    model, info = create_detector(parse_detector_spec(cfg["init"] or cfg["model"], "ensemble"), device="cpu",
                                  finetune=cfg["finetune"], **pretrained)
    assert isinstance(model, EnsembleDetector)  # the spec's kind is "ensemble": create_detector checks it
    model.backbone.set_grad_checkpointing(cfg.get("grad_checkpointing", False))
    return model, info


def stream_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    losses = {name: F.binary_cross_entropy_with_logits(logits[name].float(), labels) for name in STREAMS}
    return torch.stack(list(losses.values())).mean(), {f"train_loss_{k}": float(v) for k, v in losses.items()}


@torch.no_grad()
def validate(model: EnsembleDetector, crops: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Per-stream AUC on clean and on compound-degraded val crops."""
    was_training = model.training
    model.eval()
    metrics = {}
    device = next(model.parameters()).device
    for scenario, images in (("clean", crops), ("compound", apply_probe("compound", crops))):
        parts: dict[str, list[np.ndarray]] = defaultdict(list)
        for start in range(0, len(images), batch_size):
            x = preprocess_crops(images[start : start + batch_size], model.config.img_size).to(device)
            for name, value in model(x).items():
                parts[name].append(value.float().cpu().numpy())
        for name, chunks in parts.items():
            metrics[f"val_{scenario}_{name}_auc"] = roc_auc(labels, np.concatenate(chunks))
    model.train(was_training)
    return metrics


def train_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from detector.adversarial import bare

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(cfg["seed"] + rank)
    torch.set_num_threads(cfg["threads"])
    generator = torch.Generator().manual_seed(cfg["seed"] + 1000 * rank)
    model, info = build_model(cfg)
    start_epoch, state = load_checkpoint(model)
    model = ray.train.torch.prepare_model(model)
    ensemble = bare(model)
    assert isinstance(ensemble, EnsembleDetector)  # build_model's, inside Ray Train's DDP wrapper
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=0.05)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    device = ray.train.torch.get_device()
    engine = DegradationEngine(DegradationConfig(p_apply=cfg["degrade_share"]))
    metadata = weights_metadata("ensemble", ensemble.config, cfg["register_as"], cfg["mlflow_run_id"][:8],
                                cfg["run_name"])
    reporter = EpochReporter(cfg, start_epoch)
    shard = ray.train.get_dataset_shard("train")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for epoch in range(start_epoch, cfg["epochs"]):
        sums: dict[str, float] = defaultdict(float)
        batches = samples = 0
        started = time.perf_counter()
        model.train()
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy"):
            made = training_images(batch, cfg, engine, sample_seed(cfg, epoch, world, rank, samples))
            pixels = flip_augment(preprocess_crops(made.images, info.img_size), generator)[0].to(device)
            labels = torch.as_tensor(made.labels, dtype=torch.float32).to(device)
            with autocast:
                loss, parts = stream_loss(model(pixels), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            for key, value in parts.items():
                sums[key] += value
            batches, samples = batches + 1, samples + len(pixels)
        reporter.report(epoch, {k: v / max(batches, 1) for k, v in sums.items()}, samples,
                        time.perf_counter() - started, ensemble, {"optimizer": optimizer.state_dict()}, metadata,
                        validate)


def run_train_ensemble(config: EnsembleTrainConfig) -> dict[str, Any]:
    notes = []
    if not config.clip_weights and not config.init:
        notes.append("CLIP was randomly initialised (no published CLIP checkpoint was given): the Hybrid Semantic "
                     "Fusion stream has no semantic prior, and its text prompts are just fixed random vectors.")
    if not config.dinov2_weights and not config.init:
        notes.append("The DINOv2 backbone started from random weights, not from DINOv2's self-supervised "
                     "pre-training: none of the paper's robustness prior is present.")
    return run_training(config, train_loop, notes,
                        tags={"model": config.model, "finetune": config.finetune_mode})
