"""The scan job: list → read → decode → faces → score → verdict → Parquet.

The job owns the config, Ray's start-up and the sinks; the stages know nothing
of the CLI. Every listed video yields exactly one verdicts row, and a rerun with
the same destination scans only what has no verdict yet.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from detector.faces import FaceCropConfig
from detector.degrade import PROBES
from detector.verdict import AGGREGATIONS
from jobs.scan_gpu import DevicePlan, mps_daemon, plan_devices
from jobs.scan_metrics import ScanRun, ScanTally, StageStats
from jobs.tracking import fetch_registered_weights
from pipelines.decode import DecodeConfig, decode_videos
from pipelines.faces import CropFaces
from pipelines.rows import MANIFEST_SCHEMA
from pipelines.probes import degrade_faces
from pipelines.score import ScoreFaces, load_hybrid
from pipelines.score_ensemble import ScoreEnsemble, load_ensemble
from pipelines.sinks import VerdictWriter, completed_video_ids
from pipelines.sources import SourceError, filesystem_for, list_videos, read_video_bytes, storage_options_for
from pipelines.verdict import build_verdicts

log = logging.getLogger("fakescan.scan")
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "detector" / "weights"
STARTER_MODEL = WEIGHTS_DIR / "hybrid_starter.safetensors"
STARTER_ENSEMBLE = WEIGHTS_DIR / "ensemble_starter.safetensors"
DETECTORS = ("hybrid", "ensemble")
EXPLAINABLE_LABELS = ("fake", "uncertain", "real")  # labels of videos that have faces


def default_model() -> str:
    return str(STARTER_MODEL) if STARTER_MODEL.exists() else "hybrid_b0"


def default_ensemble_model() -> str | None:
    return str(STARTER_ENSEMBLE) if STARTER_ENSEMBLE.exists() else None


def default_detectors(ensemble_model: str | None) -> tuple[str, ...]:
    """Every detector that has a model: the hybrid always (its starter ships), the ensemble
    when its starter ships or a model is named."""
    return ("hybrid", "ensemble") if ensemble_model else ("hybrid",)


@dataclass
class ScanConfig:
    source: str
    out: str
    model: str = field(default_factory=default_model)
    ensemble_model: str | None = field(default_factory=default_ensemble_model)
    detectors: tuple[str, ...] | None = None  # None: default_detectors()
    probes: tuple[str, ...] = ()
    frames: int = 32
    s3_endpoint: str | None = None
    resume: bool = True
    limit: int | None = None
    aggregation: str = "max_face_mean"
    max_side: int = 1280
    detect_long_side: int = 640
    rows_per_file: int = 1000
    flush_seconds: float = 60.0
    max_read_bytes: int = 4 << 30
    decode_cpus: float = 0.5
    faces_cpus: float = 1.0
    score_cpus: float = 0.25
    ensemble_cpus: float = 0.25
    probes_cpus: float = 0.25
    # On a GPU cluster (jobs/scan_gpu.py; ignored without a GPU): each GPU holds two MTCNN actors,
    # one ensemble and one hybrid actor, under CUDA MPS; 0.1 of each is left for other actors.
    faces_gpus: float = 0.2  # per MTCNN actor
    faces_actors_per_gpu: int = 2
    score_gpus: float = 0.1
    ensemble_gpus: float = 0.4
    gpu_detect_batch: int = 128  # frames per MTCNN call (whole videos of the same detection size)
    gpu_hybrid_batch: int = 512  # face crops per forward pass
    gpu_ensemble_batch: int = 64
    gpu_videos_per_call: int = 16  # videos per call of a model actor: their crops share batches
    gpu_autocast: str = "bf16"  # bf16 | off
    channels_last: bool = True
    mps: bool = True  # start CUDA MPS for the scan when actors share a GPU
    progress: bool = True
    tracking_uri: str | None = None
    explain: tuple[str, ...] = ()  # labels whose videos get heatmaps (scan --explain), e.g. ("fake",)
    explain_faces: int = 4  # most suspicious faces explained per flagged video


@dataclass
class ScanSummary:
    out: str
    listed: int
    skipped: int
    scanned: int
    statuses: Counter
    labels: Counter
    elapsed_s: float
    frames: int = 0
    faces: int = 0
    stages: dict[str, StageStats] = field(default_factory=dict)  # throughput per stage, from the rows' timings
    mlflow_run_id: str | None = None

    def line(self) -> str:
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())) or "none"
        label = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())) or "none"
        return (f"fakescan: scanned {self.scanned} of {self.listed} videos ({self.skipped} already done) in "
                f"{self.elapsed_s:.1f}s | status: {status} | label: {label} | output: {self.out}/verdicts, "
                f"{self.out}/faces")


def check_destination(out: str, storage_options: dict[str, Any]) -> None:
    """Fail early, with one line, when the destination cannot be written."""
    fs = filesystem_for(out, storage_options)
    root = out.removeprefix("file://").rstrip("/")
    probe = f"{root}/.fakescan-write-test-{uuid.uuid4().hex[:8]}"
    try:
        if out.startswith("s3://"):
            bucket = root[len("s3://"):].split("/", 1)[0]
            if not fs.exists(bucket):
                raise SourceError(f"destination bucket not found: s3://{bucket}")
        else:
            os.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot write"
        raise SourceError(f"cannot write to destination {out}: {exc}") from exc


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # A laptop or CI run starts its own cluster; RAY_ADDRESS attaches to a running one.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": env} if env else None)


def quiet_ray_data() -> None:
    """The job shows its own progress; Ray Data's per-operator bars and INFO lines would bury
    it. Ray Data's logs stay in the session folder."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def pool_size(per_actor_cpus: float, share: float) -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) * share / per_actor_cpus))


def cluster_plan(config: ScanConfig, models: dict[str, dict[str, Any]]) -> DevicePlan:
    import ray

    resources = ray.cluster_resources()
    return plan_devices(config, resources.get("CPU", 1), resources.get("GPU", 0), tuple(models))


def build_dataset(config: ScanConfig, todo: pa.Table, storage_options: dict[str, Any], run_id: str,
                  models: dict[str, dict[str, Any]], plan: DevicePlan | None = None):
    """``models`` maps each enabled detector to its stage's constructor arguments; ``plan``
    defaults to the cluster's (``cluster_plan``)."""
    import ray

    quiet_ray_data()
    plan = plan or cluster_plan(config, models)
    per_block = max(1, math.ceil(todo.num_rows / 1000))
    blocks = [todo.slice(i, per_block) for i in range(0, todo.num_rows, per_block)]
    common = {"batch_format": "pyarrow", "zero_copy_batch": True}
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(read_video_bytes, fn_kwargs={"storage_options": storage_options,
                        "max_bytes": config.max_read_bytes}, batch_size=1, num_cpus=config.decode_cpus, **common)
    ds = ds.map_batches(decode_videos, fn_kwargs={"config": DecodeConfig(config.frames, config.max_side)},
                        batch_size=1, num_cpus=config.decode_cpus, **common)
    faces_config = FaceCropConfig(detect_long_side=config.detect_long_side, detect_batch_size=plan.faces.batch_size)
    scene_size = models["ensemble"]["scene_size"] if "ensemble" in models else None
    ds = ds.map_batches(CropFaces, fn_constructor_kwargs={"config": faces_config, "scene_size": scene_size,
                                                          "device": plan.device},
                        **plan.faces.map_batches_args(), **common)
    if config.probes:
        ds = ds.map_batches(degrade_faces, fn_kwargs={"probes": config.probes}, batch_size=1,
                            num_cpus=config.probes_cpus, **common)
    stages = {"hybrid": ScoreFaces, "ensemble": ScoreEnsemble}
    for detector, kwargs in models.items():
        kwargs = {k: v for k, v in kwargs.items() if k != "scene_size"} | plan.stage_kwargs(detector)
        ds = ds.map_batches(stages[detector], fn_constructor_kwargs=kwargs,
                            **getattr(plan, detector).map_batches_args(), **common)
    ds = ds.map_batches(build_verdicts, fn_kwargs={"aggregation": config.aggregation, "run_id": run_id,
                        "keep_crops": bool(config.explain)}, batch_size=4, num_cpus=0.1, **common)
    return add_explain_stage(ds, config, models, plan) if config.explain else ds


def add_explain_stage(ds, config: ScanConfig, models: dict[str, dict[str, Any]], plan: DevicePlan):
    """Heatmaps for flagged videos, from the hybrid (or the ensemble's facial stream): one actor
    with that detector pool's resources."""
    from ray.data import ActorPoolStrategy

    from pipelines.explain import ExplainFaces

    detector = "hybrid" if "hybrid" in models else "ensemble"
    out = config.out if "://" in config.out else str(Path(config.out).absolute())
    kwargs = {"detector": detector, "model_kwargs": {k: v for k, v in models[detector].items() if k != "scene_size"},
              "out": out, "storage_options": storage_options_for(config.out, config.s3_endpoint),
              "labels": config.explain, "max_faces": config.explain_faces}
    return ds.map_batches(ExplainFaces, fn_constructor_kwargs=kwargs, batch_size=4, batch_format="pyarrow",
                          zero_copy_batch=True, compute=ActorPoolStrategy(min_size=1, max_size=1),
                          num_cpus=getattr(plan, detector).num_cpus, num_gpus=getattr(plan, detector).num_gpus)


def resolve_models(config: ScanConfig) -> dict[str, dict[str, Any]]:
    """Each enabled detector's stage arguments. Registry weights are fetched once here and
    shipped to every actor (workers need no access to MLflow); every model is built once here
    too, so that a bad --model fails in one line before Ray starts."""
    detectors = config.detectors or default_detectors(config.ensemble_model)
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise SourceError(f"unknown detector {unknown[0]!r}; choose from {', '.join(DETECTORS)}")
    if "ensemble" in detectors and not config.ensemble_model:
        raise SourceError("the ensemble needs a model: pass --ensemble-model (no starter ensemble is installed)")
    unknown_probes = sorted(set(config.probes) - set(PROBES))
    if unknown_probes:
        raise SourceError(f"unknown probe {unknown_probes[0]!r}; choose from {', '.join(PROBES)}")
    specs = {"hybrid": (config.model, load_hybrid), "ensemble": (config.ensemble_model, load_ensemble)}
    models: dict[str, dict[str, Any]] = {}
    for detector in detectors:
        spec, load = specs[detector]
        kwargs: dict[str, Any] = {"model_spec": spec}
        if spec.startswith("models:/"):
            found = fetch_registered_weights(spec, config.tracking_uri)
            kwargs.update(weights=found.data, name=found.name, version=found.version)
        try:
            model, info = load(spec, **{k: v for k, v in kwargs.items() if k != "model_spec"})
        except (ValueError, KeyError) as exc:
            raise SourceError(f"cannot load the {detector} model {spec}: {exc}") from None
        if detector == "ensemble":
            kwargs["scene_size"] = info.config.img_size
        if not info.trained:
            print(f"fakescan: warning: {detector} model {info.name} has no trained weights; it does not vote, and "
                  "without a trained detector every verdict is 'uncertain' with no p_fake", file=sys.stderr)
        del model
        models[detector] = kwargs
    return models


def run_scan(config: ScanConfig) -> ScanSummary:
    started = time.monotonic()
    if config.aggregation not in AGGREGATIONS:
        raise SourceError(f"unknown aggregation {config.aggregation!r}; choose from {', '.join(AGGREGATIONS)}")
    unknown_labels = sorted(set(config.explain) - set(EXPLAINABLE_LABELS))
    if unknown_labels:
        raise SourceError(f"cannot explain label {unknown_labels[0]!r}; choose from {', '.join(EXPLAINABLE_LABELS)}")
    src_options = storage_options_for(config.source, config.s3_endpoint)
    out_options = storage_options_for(config.out, config.s3_endpoint)
    manifest = list_videos(config.source, src_options)
    models = resolve_models(config)
    check_destination(config.out, out_options)

    out_fs = filesystem_for(config.out, out_options)
    root = config.out.removeprefix("file://").rstrip("/")
    done = completed_video_ids(out_fs, root) if config.resume else set()
    todo = manifest.filter(pc.invert(pc.is_in(manifest["video_id"], pa.array(sorted(done), pa.string()))))
    if config.limit is not None:
        todo = todo.slice(0, config.limit)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    skipped = len(done & set(manifest["video_id"].to_pylist()))
    # Opened before Ray starts, so that a tracking server that cannot be reached fails in one line.
    params = {k: v for k, v in asdict(config).items() if k not in ("tracking_uri", "progress")}
    record = ScanRun(config.tracking_uri, config.out, f"scan-{run_id}",
                     dict(params, scan_run_id=run_id, detectors=",".join(models)))
    writer = VerdictWriter(out_fs, root, run_id, config.rows_per_file, config.flush_seconds)
    tally = ScanTally()

    try:
        if todo.num_rows:
            from tqdm import tqdm

            init_ray()
            plan = cluster_plan(config, models)
            record.log_params(plan.params())
            # MPS must run before the actors create their CUDA contexts: the dataset starts them lazily.
            with mps_daemon(plan.mps), tqdm(total=todo.num_rows, unit="video", desc="scan", file=sys.stderr,
                                            disable=not config.progress,
                                            mininterval=1.0 if sys.stderr.isatty() else 10.0) as bar:
                ds = build_dataset(config, todo.cast(MANIFEST_SCHEMA), src_options, run_id, models, plan)
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.add(batch)
                    tally.add(batch)
                    bar.update(batch.num_rows)
        writer.close()
    except BaseException:
        record.finish(tally.metrics(manifest.num_rows, skipped, todo.num_rows, time.monotonic() - started), failed=True)
        raise
    elapsed = time.monotonic() - started
    if todo.num_rows:
        print(tally.stage_line(), file=sys.stderr)
    record.finish(tally.metrics(manifest.num_rows, skipped, todo.num_rows, elapsed))
    return ScanSummary(config.out, manifest.num_rows, skipped, todo.num_rows, tally.statuses, tally.labels, elapsed,
                       tally.frames, tally.faces, tally.stages, record.run_id)
