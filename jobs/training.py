"""What both training jobs share: worker sizing, the train split as a Ray Dataset, the
TorchTrainer with checkpoints and failure handling, and the checkpoint files."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from detector.weights import load_state, load_weights, save_weights
from jobs import tracking
from pipelines.dataset import count_split, decode_images
from pipelines.sources import SourceError, arrow_filesystem_for

WEIGHTS_FILE = tracking.WEIGHTS_ARTIFACT
STATE_FILE = "train_state.pt"


def flip_augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels[flip] = pixels[flip].flip(-1)
    return pixels


def load_checkpoint(model: torch.nn.Module) -> tuple[int, dict | None]:
    """The epoch to start from and the saved training state, from Ray Train's latest checkpoint."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as folder:
        load_state(model, load_weights(str(Path(folder) / WEIGHTS_FILE))[0], source="checkpoint")
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
    return state["epoch"] + 1, state


def save_checkpoint(folder: Path, model: torch.nn.Module, state: dict[str, Any], epoch: int,
                    metadata: dict[str, str]) -> None:
    save_weights(model, folder / WEIGHTS_FILE, dict(metadata, epoch=str(epoch)))
    torch.save({"epoch": epoch, **state}, folder / STATE_FILE)


def worker_resources(workers: int, use_gpu: bool) -> tuple[dict[str, float], int]:
    """Ray CPUs per worker, and torch threads per worker.

    The reservation leaves a whole CPU to Ray Data, whose shuffle tasks each ask for one:
    2 workers at 1 CPU on 2 cores would starve them and hang without an error.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 1)
    cpus = max(0.25, min(4.0, (total - 1) / workers))
    resources = {"CPU": cpus}
    if use_gpu:
        resources["GPU"] = 1
    return resources, max(1, int(total // workers))


def check_train_split(data: str, s3_endpoint: str | None):
    """The crops folder and its filesystem; fails in one line when there is nothing to train on."""
    data_fs = arrow_filesystem_for(data, s3_endpoint)
    crops = f"{data.rstrip('/')}/crops"
    try:
        n_train = count_split(crops, "train", data_fs)
    except FileNotFoundError:
        n_train = 0
    if not n_train:
        raise SourceError(f"no training crops in {crops}: run fakescan prepare first")
    return crops, data_fs


def fit_on_ray(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], crops: str, data_fs, *,
               workers: int, use_gpu: bool | None, storage: str, run_name: str, max_failures: int,
               s3_endpoint: str | None):
    """Run ``loop`` on ``workers`` Ray Train workers over the shuffled train split; returns the Result."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.scan import init_ray, quiet_ray_data

    init_ray()
    quiet_ray_data()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu is None and 0 < gpus < workers:
        # A GPU beats any number of CPU workers; say so rather than quietly training on CPU.
        print(f"fakescan: {gpus} GPU(s) for {workers} workers: training with {gpus} worker(s), one per GPU",
              file=sys.stderr)
        workers = gpus
    use_gpu = use_gpu if use_gpu is not None else gpus >= workers > 0
    resources, threads = worker_resources(workers, use_gpu)
    train = ray.data.read_parquet(crops.removeprefix("s3://"), filesystem=data_fs, columns=["split", "label", "image"])
    train = train.filter(expr="split == 'train'").random_shuffle(seed=None).map_batches(
        decode_images, batch_size=64, batch_format="pyarrow", num_cpus=0.25)
    trainer = TorchTrainer(
        loop, train_loop_config=dict(loop_config, threads=threads), datasets={"train": train},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        # With an explicit pyarrow filesystem, Ray wants the path without its scheme.
        run_config=RunConfig(name=run_name, storage_path=storage.removeprefix("s3://"),
                             storage_filesystem=arrow_filesystem_for(storage, s3_endpoint),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()


def train_and_register(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], config: Any, crops: str,
                       data_fs, out: Path, tracking_uri: str, run_id: str, card: Callable[[dict[str, float]], str],
                       tags: Callable[[dict[str, float]], dict[str, str]]) -> dict[str, Any]:
    """Fit on Ray, then what both training jobs do with the last checkpoint: copy its weights to
    OUT/model, calibrate them on the val split, write the model card, register the model and
    close the MLflow run (as FAILED when training fails)."""
    from mlflow.tracking import MlflowClient

    from jobs.calibrate import calibrate_file, calibration_metrics, write_reports

    client = MlflowClient(tracking_uri)
    try:
        result = fit_on_ray(loop, loop_config, crops, data_fs, workers=config.workers, use_gpu=config.use_gpu,
                            storage=config.storage or str(out / "checkpoints"), run_name=config.run_name,
                            max_failures=config.max_failures, s3_endpoint=config.s3_endpoint)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        shutil.copy(Path(folder) / WEIGHTS_FILE, model_dir / WEIGHTS_FILE)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    calibration = calibrate_file(model_dir / WEIGHTS_FILE, crops, data_fs, config.val_limit, config.seed)
    if calibration is not None:
        metrics.update(calibration_metrics(calibration.calibration))
        tracking.log_files(tracking_uri, run_id, write_reports(calibration, model_dir),
                           calibration_metrics(calibration.calibration))
    text = card(metrics)
    (model_dir / "MODEL_CARD.md").write_text(text)
    version = tracking.log_and_register_model(tracking_uri, run_id, model_dir / WEIGHTS_FILE, text,
                                              config.register_as, config.alias, tags=tags(metrics))
    client.set_terminated(run_id, status="FINISHED")
    return {"run_id": run_id, "tracking_uri": tracking_uri, "model": f"models:/{config.register_as}/{version}",
            "weights": str(model_dir / WEIGHTS_FILE), "metrics": metrics}
