"""What both training jobs share on the driver: their config, worker sizing, the train split as
a Ray Dataset, the TorchTrainer with checkpoints and failure handling, and what follows the fit
(calibration, model card, registry). What runs on the workers is in ``jobs.train.worker``."""
from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detector.factory import list_detectors
from jobs import tracking
from jobs.resources import PlanError
from jobs.runtime import cluster_resources, init_ray, quiet_ray_data, warn
from pipelines.dataset import count_split, decode_images
from pipelines.errors import OptionError, SourceError
from pipelines.sources import arrow_filesystem_for


@dataclass
class TrainConfig(ABC):
    """The options of every training job; each detector's job adds its own."""

    data: str
    out: str
    storage: str | None = None  # Ray Train storage for checkpoints, local or s3:// (default OUT/checkpoints)
    name: str | None = None  # the run's name; rerunning a name resumes it
    model: str = ""  # an architecture config of the job's detector
    init: str | None = None  # weights to start from
    workers: int = 2
    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-4
    val_limit: int = 2000
    degrade_share: float = 0.5  # of the training crops passed through the compound degradation engine
    fakes: str = "prepared"  # prepared: the train split as labelled; self-blend: its real crops + fresh SBI each epoch
    use_gpu: bool | None = None
    max_failures: int = 3
    tracking_uri: str | None = None
    experiment: str = ""
    register_as: str = ""
    alias: str | None = None
    s3_endpoint: str | None = None
    seed: int = 0

    kind = ""  # the detector kind the job trains

    @property
    @abstractmethod
    def run_name(self) -> str:
        """The MLflow run's name (and Ray Train's): each detector's job names its own."""

    def check(self) -> None:
        if self.fakes not in TRAINING_FAKES:
            raise OptionError(f"unknown --fakes {self.fakes!r}; choose from {', '.join(TRAINING_FAKES)}")
        if self.model not in list_detectors(self.kind):
            raise OptionError(f"unknown model config {self.model!r}; "
                              f"choose from {', '.join(list_detectors(self.kind))}")

    def params(self) -> dict[str, Any]:
        """The options worth recording (MLflow parameters, the model card)."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "tracking_uri"}


TRAINING_FAKES = ("prepared", "self-blend")
# Ray Data's shuffle tasks ask for a whole CPU each, and a worker needs a little of one.
DATA_CPUS, MIN_WORKER_CPUS = 1.0, 0.25


def worker_resources(workers: int, use_gpu: bool) -> tuple[dict[str, float], int]:
    """Ray CPUs per worker, and torch threads per worker.

    The reservation leaves a whole CPU to Ray Data, whose shuffle tasks each ask for one:
    2 workers at 1 CPU on 2 cores would starve them and hang without an error. Where even the
    least does not fit, the job stops in one line.
    """
    total, _ = cluster_resources()
    needed = DATA_CPUS + workers * MIN_WORKER_CPUS
    if total < needed:
        raise PlanError(f"training with {workers} worker(s) needs at least {needed:g} CPUs ({workers} × "
                        f"{MIN_WORKER_CPUS:g} for the workers, {DATA_CPUS:g} for Ray Data's shuffle) and the cluster "
                        f"has {total:g}; lower --workers or train on more CPUs")
    cpus = max(MIN_WORKER_CPUS, min(4.0, (total - DATA_CPUS) / workers))
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


def train_split(crops: str, data_fs, fakes: str):
    """The shuffled train split as a Ray Dataset of decoded crops: as labelled, or (``self-blend``)
    its real crops with their landmarks, which the workers pair with fresh self-blends."""
    import ray.data

    columns = ["split", "label", "kind", "image"] + (["landmarks"] if fakes == "self-blend" else [])
    train = ray.data.read_parquet(crops.removeprefix("s3://"), filesystem=data_fs, columns=columns)
    wanted = "split == 'train'" + (" and kind == 'real'" if fakes == "self-blend" else "")
    return train.filter(expr=wanted).random_shuffle(seed=None).map_batches(
        decode_images, batch_size=64, batch_format="pyarrow", num_cpus=0.25)


def fit_on_ray(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], crops: str, data_fs, *,
               workers: int, use_gpu: bool | None, storage: str, run_name: str, max_failures: int,
               s3_endpoint: str | None):
    """Run ``loop`` on ``workers`` Ray Train workers over the shuffled train split; returns the Result."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray()
    quiet_ray_data()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu is None and 0 < gpus < workers:
        # A GPU beats any number of CPU workers; say so rather than quietly training on CPU.
        warn(f"{gpus} GPU(s) for {workers} workers: training with {gpus} worker(s), one per GPU")
        workers = gpus
    use_gpu = use_gpu if use_gpu is not None else gpus >= workers > 0
    resources, threads = worker_resources(workers, use_gpu)
    train = train_split(crops, data_fs, loop_config["fakes"])
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


def run_training(config: TrainConfig, loop: Callable[[dict[str, Any]], None], notes: list[str],
                 tags: dict[str, str]) -> dict[str, Any]:
    """What every training job does around its loop: check the options and the data, open (or
    resume) the MLflow run, fit on Ray, then copy the last checkpoint's weights to OUT/model,
    calibrate them on the val split, write the model card, register the model and close the
    run (as FAILED when training fails). ``notes`` go into the model card."""
    from mlflow.tracking import MlflowClient

    from jobs.calibrate import calibrate_file, calibration_metrics, write_reports

    config.check()
    out = Path(config.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    crops, data_fs = check_train_split(config.data, config.s3_endpoint)
    tracking_uri = tracking.tracking_uri_or_default(config.tracking_uri, out)
    experiment_id = tracking.ensure_experiment(tracking_uri, config.experiment, out / "mlartifacts")
    run_id = tracking.start_or_resume_run(tracking_uri, experiment_id, config.run_name, config.params())
    loop_config = asdict(config) | config.params() | {"mlflow_run_id": run_id, "tracking_uri": tracking_uri,
                                                 "run_name": config.run_name}
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
        shutil.copy(Path(folder) / tracking.WEIGHTS_ARTIFACT, model_dir / tracking.WEIGHTS_ARTIFACT)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    calibration = calibrate_file(model_dir / tracking.WEIGHTS_ARTIFACT, crops, data_fs, config.val_limit, config.seed)
    if calibration is not None:
        metrics.update(calibration_metrics(calibration.calibration))
        tracking.log_files(tracking_uri, run_id, write_reports(calibration, model_dir),
                           calibration_metrics(calibration.calibration))
    text = model_card(config, metrics, run_id, notes)
    (model_dir / "MODEL_CARD.md").write_text(text)
    version = tracking.log_and_register_model(tracking_uri, run_id, model_dir / tracking.WEIGHTS_ARTIFACT, text,
                                              config.register_as, config.alias,
                                              tags=tags | {k: f"{v:.4f}" for k, v in metrics.items()
                                                           if k.startswith("val_")})
    client.set_terminated(run_id, status="FINISHED")
    return {"run_id": run_id, "tracking_uri": tracking_uri, "model": f"models:/{config.register_as}/{version}",
            "weights": str(model_dir / tracking.WEIGHTS_ARTIFACT), "metrics": metrics}


def model_card(config: TrainConfig, metrics: dict[str, float], run_id: str, notes: list[str]) -> str:
    lines = [f"# {config.register_as} ({config.run_name})", "",
             f"Trained by `fakescan train {config.kind}` on `{config.data}`; MLflow run `{run_id}`.", ""]
    lines += [line for note in notes for line in (note, "")]
    lines += ["| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in config.params().items()]
    lines += ["", "Final epoch, validation split:", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) + "\n"
