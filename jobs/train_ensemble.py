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

import json
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detector.degrade import DegradationConfig, DegradationEngine, apply_probe
from detector.ensemble import ENSEMBLE_CONFIGS, STREAMS, create_ensemble
from detector.hybrid import preprocess_crops
from detector.metrics import roc_auc
from jobs import tracking
from jobs.training import check_train_split, flip_augment, load_checkpoint, save_checkpoint, train_and_register
from pipelines.dataset import read_split
from pipelines.sources import SourceError, arrow_filesystem_for


@dataclass
class EnsembleTrainConfig:
    data: str
    out: str
    storage: str | None = None
    name: str | None = None
    model: str = "ensemble_giant"
    finetune: str | None = None  # default: lora on a published backbone, full on a random one
    # Recompute the backbone blocks' activations in the backward pass (one more forward pass per
    # step) instead of keeping them: for a Giant fine-tune whose batch does not fit otherwise.
    grad_checkpointing: bool = False
    dinov2_weights: str | None = None
    clip_weights: str | None = None
    init: str | None = None  # our own ensemble weights to continue from
    workers: int = 2
    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-4
    degrade_share: float = 0.5
    val_limit: int = 2000
    use_gpu: bool | None = None
    max_failures: int = 3
    tracking_uri: str | None = None
    experiment: str = "fakescan-ensemble"
    register_as: str = "fakescan-ensemble"
    alias: str | None = None
    s3_endpoint: str | None = None
    seed: int = 0

    @property
    def finetune_mode(self) -> str:
        # LoRA keeps a published DINOv2's prior with few trainable weights; a random backbone
        # has no prior to keep, so it must train in full.
        return self.finetune or ("lora" if self.dinov2_weights or self.init else "full")

    @property
    def run_name(self) -> str:
        return self.name or f"ensemble-{self.model}-{self.finetune_mode}"


def build_model(cfg: dict[str, Any]):
    config = replace(ENSEMBLE_CONFIGS[cfg["model"]], finetune=cfg["finetune_mode"])
    if cfg["init"]:
        model, info = create_ensemble(weights=cfg["init"])
        model.set_finetune(cfg["finetune_mode"])
    else:
        model, info = create_ensemble(config, dinov2_weights=cfg["dinov2_weights"], clip_weights=cfg["clip_weights"])
    model.backbone.set_grad_checkpointing(cfg.get("grad_checkpointing", False))
    return model, info


def degrade(images: np.ndarray, engine: DegradationEngine, first_seed: int) -> np.ndarray:
    """Each image through the engine with its own seed: reproducible per sample and epoch."""
    return np.stack([engine(image, first_seed + i) for i, image in enumerate(np.asarray(images))])


def stream_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    losses = {name: F.binary_cross_entropy_with_logits(logits[name].float(), labels) for name in STREAMS}
    return torch.stack(list(losses.values())).mean(), {f"train_loss_{k}": float(v) for k, v in losses.items()}


@torch.no_grad()
def validate(model: torch.nn.Module, crops: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> dict[str, float]:
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
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from detector.adversarial import bare

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(cfg["seed"] + rank)
    torch.set_num_threads(cfg["threads"])
    generator = torch.Generator().manual_seed(cfg["seed"] + 1000 * rank)
    model, info = build_model(cfg)
    start_epoch, state = load_checkpoint(model)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=0.05)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    device = ray.train.torch.get_device()
    engine = DegradationEngine(DegradationConfig(p_apply=cfg["degrade_share"]))
    metadata = {"detector": "ensemble", "name": cfg["register_as"], "version": cfg["mlflow_run_id"][:8],
                "trained": "true", "config": json.dumps(bare(model).config.to_dict()), "source": cfg["run_name"]}
    if rank == 0:
        client = MlflowClient(cfg["tracking_uri"])  # the run belongs to the job, not to this worker
        if start_epoch:
            client.set_tag(cfg["mlflow_run_id"], "fakescan.resumed_from_epoch", str(start_epoch))
        fs = arrow_filesystem_for(cfg["data"], cfg["s3_endpoint"])
        val_crops, val_labels = read_split(f"{cfg['data']}/crops", "val", fs, cfg["val_limit"], cfg["seed"])
    shard = ray.train.get_dataset_shard("train")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for epoch in range(start_epoch, cfg["epochs"]):
        sums: dict[str, float] = defaultdict(float)
        batches = samples = 0
        started = time.perf_counter()
        model.train()
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy"):
            first_seed = ((cfg["seed"] * 1000 + epoch) * world + rank) * 1_000_000 + samples
            images = degrade(batch["pixels"], engine, first_seed)
            pixels = flip_augment(preprocess_crops(images, info.config.img_size), generator).to(device)
            labels = torch.as_tensor(batch["label"], dtype=torch.float32).to(device)
            with autocast:
                loss, parts = stream_loss(model(pixels), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            for key, value in parts.items():
                sums[key] += value
            batches, samples = batches + 1, samples + len(pixels)
        elapsed = time.perf_counter() - started
        metrics = {k: v / max(batches, 1) for k, v in sums.items()}
        metrics.update(epoch=epoch, samples_per_s=world * samples / max(elapsed, 1e-9), epoch_seconds=elapsed)
        checkpoint = None
        if rank == 0:
            metrics.update(validate(bare(model), val_crops, val_labels))
            now = int(time.time() * 1000)
            client.log_batch(cfg["mlflow_run_id"], metrics=[Metric(k, float(v), now, epoch)
                                                             for k, v in metrics.items() if v == v])
            folder = Path(tempfile.mkdtemp(prefix="fakescan-ckpt-"))
            save_checkpoint(folder, bare(model), {"optimizer": optimizer.state_dict()}, epoch, metadata)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint is not None:
            shutil.rmtree(folder, ignore_errors=True)


def run_train_ensemble(config: EnsembleTrainConfig) -> dict[str, Any]:
    if config.model not in ENSEMBLE_CONFIGS:
        raise SourceError(f"unknown model config {config.model!r}; choose from {', '.join(ENSEMBLE_CONFIGS)}")
    if config.finetune_mode not in ("lora", "full", "frozen"):
        raise SourceError(f"unknown --finetune {config.finetune_mode!r}; choose lora, full or frozen")
    out = Path(config.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    crops, data_fs = check_train_split(config.data, config.s3_endpoint)
    tracking_uri = tracking.tracking_uri_or_default(config.tracking_uri, out)
    experiment_id = tracking.ensure_experiment(tracking_uri, config.experiment, out / "mlartifacts")
    params = {k: v for k, v in asdict(config).items() if v is not None and k != "tracking_uri"}
    run_id = tracking.start_or_resume_run(tracking_uri, experiment_id, config.run_name,
                                          dict(params, finetune=config.finetune_mode))
    loop_config = dict(asdict(config), finetune_mode=config.finetune_mode, mlflow_run_id=run_id,
                       tracking_uri=tracking_uri, run_name=config.run_name)
    return train_and_register(
        train_loop, loop_config, config, crops, data_fs, out, tracking_uri, run_id,
        card=lambda metrics: model_card(config, metrics, run_id),
        tags=lambda metrics: {"model": config.model, "finetune": config.finetune_mode})


def model_card(config: EnsembleTrainConfig, metrics: dict[str, float], run_id: str) -> str:
    lines = [f"# {config.register_as} ({config.model}, {config.finetune_mode} fine-tune)", "",
             f"Trained by `fakescan train ensemble` on `{config.data}`; MLflow run `{run_id}`.", ""]
    if not config.clip_weights and not config.init:
        lines += ["CLIP was randomly initialised (no published CLIP checkpoint was given): the Hybrid Semantic "
                  "Fusion stream has no semantic prior, and its text prompts are just fixed random vectors.", ""]
    if not config.dinov2_weights and not config.init:
        lines += ["The DINOv2 backbone started from random weights, not from DINOv2's self-supervised "
                  "pre-training: none of the paper's robustness prior is present.", ""]
    lines += ["| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in asdict(config).items() if k != "tracking_uri"]
    lines += ["", "Final epoch, validation split:", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) + "\n"
