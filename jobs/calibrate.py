"""``fakescan calibrate``: fit every stream of a detector on a labelled validation split.

    fakescan calibrate --model WEIGHTS|models:/NAME@ALIAS --data PREPARED --out OUT

Per stream: temperature and bias by NLL, ECE and a reliability curve, band thresholds and a
reliability weight from validation AUC (``detector.voting.fit_stream``). The result is
stored in the weights' metadata (what the scan reads), written as ``calibration.json`` and
``reliability.json``, and recorded in MLflow; with ``--register-as`` the calibrated weights
become a new registered version.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.calibration import Calibration
from detector.factory import DetectorSpec, create_detector, stream_logits
from detector.hybrid import preprocess_crops
from detector.metrics import reliability_curve
from detector.voting import DetectorCalibration, fit_stream
from detector.weights import load_weights
from jobs import tracking
from jobs.models import resolve_detector
from jobs.runtime import warn
from pipelines.dataset import read_split
from pipelines.errors import OptionError, SourceError
from pipelines.sources import arrow_filesystem_for

CALIBRATION_FILE = "calibration.json"
RELIABILITY_FILE = "reliability.json"


@dataclass
class CalibrateConfig:
    model: str
    data: str
    out: str
    split: str = "val"
    limit: int = 2000
    target_error: float = 0.1
    seed: int = 0
    tracking_uri: str | None = None
    register_as: str | None = None
    alias: str | None = None
    s3_endpoint: str | None = None


@dataclass(frozen=True)
class CalibrationResult:
    calibration: DetectorCalibration
    reliability: dict[str, dict[str, list]]  # stream → reliability curve


@torch.no_grad()
def crop_logits(spec: DetectorSpec, weights: bytes, crops: np.ndarray, batch_size: int = 32
                ) -> tuple[str, dict[str, np.ndarray]]:
    """The detector's kind and each of its streams' logits on ``crops`` (frames = the crops:
    a crop dataset holds no whole frames)."""
    model, info = create_detector(spec, weights=weights, device="cpu")
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(crops), batch_size):
        for stream, logits in stream_logits(model, preprocess_crops(crops[start : start + batch_size],
                                                                    info.img_size)).items():
            parts.setdefault(stream, []).append(logits.float().numpy())
    return info.kind, {k: np.concatenate(v) for k, v in parts.items()}


def fit_detector(spec: DetectorSpec, weights: bytes, crops: np.ndarray, labels: np.ndarray,
                 target_error: float = 0.1) -> CalibrationResult:
    if len(set(np.asarray(labels).tolist())) < 2:
        raise SourceError("calibration needs real and fake crops in the split; it has only one kind")
    detector, logits = crop_logits(spec, weights, crops)
    streams = {name: fit_stream(name, values, labels, target_error) for name, values in logits.items()}
    reliability = {name: reliability_curve(streams[name].probability(values), labels)
                   for name, values in logits.items()}
    return CalibrationResult(DetectorCalibration(detector, streams), reliability)


def calibrated_weights(weights: bytes, destination: Path, calibration: DetectorCalibration) -> None:
    """Rewrite the weights file with the calibration in its metadata (tensors unchanged)."""
    from safetensors.torch import save as save_safetensors

    state, metadata = load_weights(weights)
    metadata = {**metadata, **calibration.to_metadata()}
    if calibration.detector == "hybrid":
        # The hybrid's own fields (verdict columns calibration_temperature/bias) stay in step.
        only = calibration.streams["hybrid"]
        metadata.update(Calibration(only.temperature, only.bias, only.fitted_on).to_metadata())
    destination.write_bytes(save_safetensors(state, metadata=metadata))


def calibrate_file(weights_path: Path, crops: str, filesystem, limit: int, seed: int, target_error: float = 0.1
                   ) -> CalibrationResult | None:
    """For the training jobs: calibrate ``weights_path`` in place on the val split; None (and a
    warning) when the split cannot calibrate."""
    val_crops, val_labels = read_split(crops, "val", filesystem, limit, seed)
    if len(set(val_labels.tolist())) < 2:
        warn("the val split lacks real or fake crops; the model stays uncalibrated")
        return None
    result = fit_detector(DetectorSpec(str(weights_path)), weights_path.read_bytes(), val_crops, val_labels,
                          target_error)
    calibrated_weights(weights_path.read_bytes(), weights_path, result.calibration)
    return result


def write_reports(result: CalibrationResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CALIBRATION_FILE).write_text(result.calibration.to_json() + "\n")
    (folder / RELIABILITY_FILE).write_text(json.dumps(result.reliability, indent=2, sort_keys=True) + "\n")
    return [folder / CALIBRATION_FILE, folder / RELIABILITY_FILE]


def calibration_metrics(calibration: DetectorCalibration) -> dict[str, float]:
    metrics = {}
    for name, stream in calibration.streams.items():
        for key in ("temperature", "bias", "low", "high", "weight", "auc", "ece"):
            value = getattr(stream, key)
            if value is not None and value == value:
                metrics[f"{name}_{key}"] = float(value)
    return metrics


def run_calibrate(config: CalibrateConfig) -> dict[str, Any]:
    model = resolve_detector(config.model, None, config.tracking_uri, config.s3_endpoint)
    if model.weights is None:
        raise OptionError(f"{config.model} is an architecture config: calibrate trained weights (a .safetensors "
                          "file or models:/NAME@ALIAS)")
    registered_name = model.spec.registered[0] if model.spec.registered else None
    filesystem = arrow_filesystem_for(config.data, config.s3_endpoint)
    try:
        crops, labels = read_split(f"{config.data.rstrip('/')}/crops", config.split, filesystem, config.limit,
                                   config.seed)
    except FileNotFoundError:
        raise SourceError(f"no crop dataset at {config.data}: run fakescan prepare first") from None
    result = fit_detector(model.spec, model.weights, crops, labels, config.target_error)
    out = Path(config.out).absolute()
    reports = write_reports(result, out)
    calibrated = out / tracking.WEIGHTS_ARTIFACT
    calibrated_weights(model.weights, calibrated, result.calibration)

    tracking_uri = tracking.tracking_uri_or_default(config.tracking_uri, out)
    experiment_id = tracking.ensure_experiment(tracking_uri, "fakescan-calibrate", out / "mlartifacts")
    params = {"model": config.model, "data": config.data, "split": config.split, "samples": len(labels),
              "target_error": config.target_error}
    run_id = tracking.start_run(tracking_uri, experiment_id, f"calibrate-{result.calibration.detector}", params)
    tracking.log_files(tracking_uri, run_id, reports, calibration_metrics(result.calibration))
    register_as = config.register_as or registered_name
    version = None
    if register_as:
        card = (f"# {register_as}, calibrated\n\nCalibrated by `fakescan calibrate` from `{config.model}` on "
                f"{len(labels)} crops of the {config.split} split of `{config.data}`.\n\n```json\n"
                f"{result.calibration.to_json()}\n```\n")
        version = tracking.log_and_register_model(tracking_uri, run_id, calibrated, card, register_as, config.alias,
                                                  tags={"calibrated_from": config.model})
    tracking.finish_run(tracking_uri, run_id)
    return {"calibration": result.calibration, "weights": str(calibrated), "run_id": run_id,
            "model": f"models:/{register_as}/{version}" if version else None, "samples": len(labels)}
