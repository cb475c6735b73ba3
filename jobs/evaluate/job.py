"""``fakescan evaluate``: the robustness protocol for any number of detectors side by side.

    fakescan evaluate --model baseline=WEIGHTS --model robust=models:/NAME@ALIAS --data PREPARED --out OUT

Each model is scored on the same labelled crops under seven scenarios (``SCENARIOS``) on
Ray Data; a U-Net attacker is first fitted against each model on the attack split. Writes
``evaluation.json``, ``metrics.parquet`` (accuracy, ROC AUC, ECE per model, stream and
scenario), ``methods.parquet`` (the same per fake method: each kind of fake against the real
crops, the cross-method protocol), ``predictions.parquet``, ``analysis.parquet`` (feature cosine and heatmap
entropy), galleries with Score-CAM heatmaps, and one MLflow run. ``fakescan report OUT``
renders it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from detector.evaluation import overall_rule
from detector.protocol import ATTACKS, OVERALL, SCENARIOS
from jobs import tracking
from jobs.evaluate.outputs import (
    EVALUATION_FILE,
    analysis_table,
    gallery_picks,
    methods_table,
    metrics_table,
    mlflow_metrics,
    png_bytes_of,
    put_bytes,
    write_table,
)
from jobs.models import put_weights, resolve_detector, warn_if_untrained
from jobs.resources import fit_stages
from jobs.runtime import cluster_resources, init_ray, pool_size, quiet_ray_data, warn
from jobs.watchdog import StallWatchdog
from pipelines.dataset import decode_images, sample_split
from pipelines.errors import OptionError, SourceError
from pipelines.evaluate import SCORE_SCENARIOS
from pipelines.execution import build_dataset
from pipelines.sources import arrow_filesystem_for, filesystem_for, storage_options_for
from pipelines.stages import Pool, ResolvedDetector, StageSpec

STALL_WARNING_S = 180.0  # no crop scored for this long: say what the job waits for


@dataclass
class EvaluateConfig:
    models: tuple[str, ...]  # "NAME=SPEC" or "SPEC": weights path/URI or models:/NAME@ALIAS
    data: str  # a prepared crop dataset, or a labelled video set (prepared into OUT/prepared)
    out: str
    split: str = "test"
    scenarios: tuple[str, ...] = SCENARIOS
    limit: int = 2000
    pgd_iterations: int = 10
    unet_steps: int = 200
    attack_split: str = "train"
    analysis: str | None = "gradcam"
    gallery: int = 6
    batch_size: int = 16
    seed: int = 0
    tracking_uri: str | None = None
    s3_endpoint: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelUnderTest:
    name: str
    detector: ResolvedDetector

    def record(self) -> dict[str, Any]:
        """What evaluation.json says of the model."""
        info = self.detector.info
        return {"name": self.name, "uri": self.detector.spec.source, "detector": info.kind,
                "config": info.config.name, "version": info.version, "trained": info.trained,
                "overall": overall_rule(info.calibration)}


def parse_model(text: str) -> tuple[str, str]:
    """``NAME=SPEC`` or a bare SPEC, named after its file or registry name."""
    name, sep, spec = text.partition("=")
    if sep and name and "/" not in name and ":" not in name:
        return name, spec
    spec = text
    if spec.startswith("models:/"):
        return spec.removeprefix("models:/").replace("/", "-").replace("@", "-"), spec
    return Path(spec.rstrip("/")).stem or spec, spec


def load_models(config: EvaluateConfig) -> list[ModelUnderTest]:
    models, seen = [], set()
    for text in config.models:
        name, spec = parse_model(text)
        if name in seen:
            raise OptionError(f"two models are named {name!r}: name them, e.g. --model baseline=PATH")
        seen.add(name)
        model = ModelUnderTest(name, resolve_detector(spec, None, config.tracking_uri, config.s3_endpoint))
        warn_if_untrained(model.detector, "its figures describe random weights")
        models.append(model)
    return models


def prepared_data(config: EvaluateConfig) -> tuple[str, str]:
    """The crop dataset and split to evaluate on; a labelled video set is prepared first,
    every video into the test split."""
    data = config.data.rstrip("/")
    fs = filesystem_for(data, storage_options_for(data, config.s3_endpoint))
    if fs.exists(f"{data.removeprefix('file://')}/crops"):
        return data, config.split
    from jobs.prepare import PrepareConfig, run_prepare

    prepared = f"{config.out.rstrip('/')}/prepared"
    if not filesystem_for(prepared, storage_options_for(prepared, config.s3_endpoint)).exists(
            f"{prepared.removeprefix('file://')}/crops"):
        warn(run_prepare(PrepareConfig(source=data, out=prepared, split_ratios=(0.0, 0.0, 1.0),
                                       s3_endpoint=config.s3_endpoint)).line().removeprefix("fakescan: "))
    config.notes.append(f"{data} is a labelled video set: prepared into {prepared}, every video in the test split")
    return prepared, "test"


def read_crops(data: str, split: str, s3_endpoint: str | None, limit: int, seed: int) -> pa.Table:
    """(crop_id, label, kind, image) of one split, a seeded random sample of at most ``limit``."""
    try:
        return sample_split(f"{data}/crops", split, arrow_filesystem_for(data, s3_endpoint), limit, seed)
    except FileNotFoundError:
        raise SourceError(f"no crop dataset at {data}: run fakescan prepare first") from None


def fit_attackers(config: EvaluateConfig, models: list[ModelUnderTest], data: str, task_cpus: float
                  ) -> dict[str, bytes | None]:
    import ray

    from pipelines.evaluate import fit_attacker

    if not ATTACKS.intersection(config.scenarios) - {"pgd"} or config.unet_steps < 1:
        return {m.name: None for m in models}
    table = read_crops(data, config.attack_split, config.s3_endpoint, 512, config.seed)
    if len(set(table["label"].to_pylist())) < 2:
        config.notes.append(f"the {config.attack_split} split lacks real or fake crops: the U-Net attackers were "
                            f"fitted on the evaluated {config.split} split")
        table = read_crops(data, config.split, config.s3_endpoint, 512, config.seed)
    decoded = decode_images(table)
    task = ray.remote(fit_attacker).options(num_cpus=task_cpus)
    refs = {m.name: task.remote(m.detector.spec, m.detector.weights, m.name, decoded["pixels"], decoded["label"],
                                config.unet_steps, config.seed) for m in models}
    return {name: ray.get(ref) for name, ref in refs.items()}


def scoring_stage(config: EvaluateConfig) -> StageSpec:
    """The scoring actors' stage, its pool and reservation fitted to the cluster (``PlanError``
    when even its least does not fit)."""
    cpus, _ = cluster_resources()
    stage = replace(SCORE_SCENARIOS, batch_size=config.batch_size)
    stage = replace(stage, pool=Pool(1, pool_size(cpus, stage.resources.cpus, stage.cpu_share)))
    return fit_stages([stage], cpus, "evaluate")[0]


def score_model(config: EvaluateConfig, stage: StageSpec, model: ModelUnderTest, crops: pa.Table,
                attacker: bytes | None) -> pa.Table:
    stage = stage.bind(spec=model.detector.spec, weights=model.detector.weights, name=model.name, attacker=attacker,
                       scenarios=config.scenarios, pgd_iterations=config.pgd_iterations, analysis=config.analysis)
    parts = []
    part: pa.Table  # iter_batches is typed for every batch format; this one is pyarrow's
    with StallWatchdog(STALL_WARNING_S, stages=[stage]) as watchdog:
        scored = build_dataset(crops.select(stage.input_schema.names), [stage])
        for part in scored.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
            parts.append(part)
            watchdog.progress(part.num_rows)
    table = pa.concat_tables(parts) if parts else pa.table({})
    return table.add_column(0, "model", pa.array([model.name] * table.num_rows, pa.string()))


def draw_galleries(config: EvaluateConfig, models: list[ModelUnderTest], task_cpus: float, predictions: pa.Table,
                   crops: pa.Table, out_fs, root: str) -> pa.Table:
    """Score-CAM heatmaps of the picked crops, one Ray task per model; returns gallery rows."""
    import ray

    from pipelines.evaluate import gallery_heatmaps

    picks = gallery_picks(predictions, config.gallery)
    if not picks:
        return pa.table({})
    ids = sorted({crop_id for crop_id, _ in picks})
    chosen = crops.filter(pc.is_in(crops["crop_id"], pa.array(ids))).sort_by("crop_id")
    pixels = decode_images(chosen)["pixels"]
    labels = dict(zip(chosen["crop_id"].to_pylist(), chosen["label"].to_pylist()))
    for crop_id, image in zip(chosen["crop_id"].to_pylist(), pixels):
        put_bytes(out_fs, f"{root}/gallery/crops/{crop_id}.png", png_bytes_of(image))
    task = ray.remote(gallery_heatmaps).options(num_cpus=task_cpus)
    heatmaps = ray.get([task.remote(m.detector.spec, m.detector.weights, m.name, pixels) for m in models])
    p_clean = predictions.filter(pc.equal(predictions["scenario"], "clean"))
    p_of = {(r["model"], r["stream"], r["crop_id"]): r["p_fake"]
            for r in p_clean.select(["model", "stream", "crop_id", "p_fake"]).to_pylist()}
    rows = []
    for model, per_stream in zip(models, heatmaps):
        paths = {}
        for stream, images in per_stream.items():
            for crop_id, png in zip(ids, images):
                paths[(stream, crop_id)] = f"gallery/heatmaps/{model.name}/{stream}/{crop_id}.png"
                put_bytes(out_fs, f"{root}/{paths[(stream, crop_id)]}", png)
        for crop_id, kind in picks:
            for stream in [OVERALL, *per_stream]:
                rows.append({"crop_id": crop_id, "kind": kind, "label": int(labels[crop_id]), "model": model.name,
                             "stream": stream, "p_fake": p_of.get((model.name, stream, crop_id)),
                             "crop_path": f"gallery/crops/{crop_id}.png", "heatmap_path": paths.get((stream, crop_id))})
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("crop_id", pa.string()), ("kind", pa.string()), ("label", pa.int8()), ("model", pa.string()),
        ("stream", pa.string()), ("p_fake", pa.float32()), ("crop_path", pa.string()),
        ("heatmap_path", pa.string())]))


def record_in_mlflow(config: EvaluateConfig, summary: dict[str, Any], metrics: pa.Table, methods: pa.Table,
                     files: list[Path]) -> str:
    out = config.out if "://" not in config.out else "."
    tracking_uri = tracking.tracking_uri_or_default(config.tracking_uri, out)
    experiment_id = tracking.ensure_experiment(tracking_uri, "fakescan-evaluate", Path(out).absolute() / "mlartifacts")
    params = {"models": ",".join(m["name"] + "=" + m["uri"] for m in summary["models"]), "data": summary["data"],
              "split": summary["split"], "n": summary["n"], "scenarios": ",".join(config.scenarios),
              "pgd_iterations": config.pgd_iterations, "unet_steps": config.unet_steps, "out": config.out}
    run_id = tracking.start_run(tracking_uri, experiment_id, "evaluate", params)
    tracking.log_files(tracking_uri, run_id, files, mlflow_metrics(metrics, methods))
    tracking.finish_run(tracking_uri, run_id)
    return run_id


def run_evaluate(config: EvaluateConfig) -> dict[str, Any]:
    started = time.monotonic()
    unknown = [s for s in config.scenarios if s not in SCENARIOS]
    if unknown:
        raise OptionError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    models = load_models(config)
    data, split = prepared_data(config)
    crops = read_crops(data, split, config.s3_endpoint, config.limit, config.seed)
    if not crops.num_rows:
        raise SourceError(f"the {split} split of {data} has no crops")
    if len(set(crops["label"].to_pylist())) < 2:
        config.notes.append(f"the {split} split has only one class: ROC AUC is undefined")

    init_ray()
    quiet_ray_data()
    stored = put_weights({m.name: m.detector for m in models})
    models = [replace(m, detector=stored[m.name]) for m in models]
    stage = scoring_stage(config)
    # The attackers and galleries are tasks of one model each, as heavy as a scoring actor.
    attackers = fit_attackers(config, models, data, stage.resources.cpus)
    predictions = pa.concat_tables([score_model(config, stage, m, crops, attackers[m.name]) for m in models])
    kind_of = dict(zip(crops["crop_id"].to_pylist(), crops["kind"].to_pylist()))
    predictions = predictions.append_column("kind", pa.array([kind_of[c] for c in predictions["crop_id"].to_pylist()],
                                                             pa.string()))
    detectors = {m.name: m.detector.info.kind for m in models}
    metrics, methods = metrics_table(predictions, detectors), methods_table(predictions, detectors)

    out_fs = filesystem_for(config.out, storage_options_for(config.out, config.s3_endpoint))
    root = config.out.removeprefix("file://").rstrip("/")
    out_fs.makedirs(root, exist_ok=True)
    gallery = (draw_galleries(config, models, stage.resources.cpus, predictions, crops, out_fs, root)
               if config.gallery else pa.table({}))
    summary = {
        "kind": "fakescan-evaluation", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data, "split": split, "n": crops.num_rows, "n_fake": int(pc.sum(crops["label"]).as_py() or 0),
        "scenarios": list(config.scenarios), "models": [m.record() for m in models], "mlflow_run_id": None,
        "settings": {k: v for k, v in asdict(config).items() if k not in ("models", "notes")},
        "notes": config.notes,
    }
    tables = {"metrics": metrics, "methods": methods,
              "predictions": predictions.drop_columns(["feature_cosine", "entropy", "logit"]),
              "analysis": analysis_table(predictions), "gallery": gallery}
    local = Path(config.out).absolute() if "://" not in config.out else None
    files = [write_table(out_fs, f"{root}/{name}.parquet", table)
             for name, table in tables.items() if table.num_columns]
    summary["mlflow_run_id"] = record_in_mlflow(config, summary, metrics, methods,
                                                [Path(f) for f in files] if local else [])
    summary["seconds"] = round(time.monotonic() - started, 1)
    out_fs.pipe(f"{root}/{EVALUATION_FILE}", (json.dumps(summary, indent=2) + "\n").encode())
    return {"summary": summary, "metrics": metrics, "methods": methods}
