"""Evaluation stages: an actor scores batches of labelled crops under every scenario of the
robustness protocol; tasks fit a detector's U-Net attacker and draw gallery heatmaps.

Rows come out long: one per crop × scenario × stream, so any number of models and streams
lands in the same Parquet shape.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from detector.attacks import PGDConfig
from detector.device import resolve_device
from detector.evaluation import (
    OVERALL,
    SCENARIOS,
    EvaluatedDetector,
    attacker_bytes,
    attacker_from_bytes,
    evaluate_crops,
    fit_unet_attacker,
)
from detector.explain import explain, heatmap_png
from detector.factory import DetectorSpec
from detector.hybrid import preprocess_crops
from pipelines.dataset import CROP_SCHEMA, png_array
from pipelines.inference import load_detector
from pipelines.stages import Resources, StageSpec

PREDICTION_SCHEMA = pa.schema([
    pa.field("crop_id", pa.string()),
    pa.field("label", pa.int8()),
    pa.field("scenario", pa.string()),
    pa.field("stream", pa.string()),  # a stream's name, or "all" for the detector's overall p_fake
    pa.field("logit", pa.float32()),  # null for "all"
    pa.field("p_fake", pa.float32()),
    pa.field("feature_cosine", pa.float32()),  # to the same crop's clean features; null for clean and "all"
    pa.field("entropy", pa.float32()),  # the stream's heatmap entropy in nats; null for "all"
])


def load_evaluated(spec: DetectorSpec, weights: Any, name: str, device: str = "cpu") -> EvaluatedDetector:
    """The detector (hybrid or ensemble, as its weights say), ready for the protocol."""
    model, info = load_detector(spec, weights, device)
    return EvaluatedDetector(name, model, info.calibration, info.img_size)


def decode_batch(batch: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    images = [png_array(data) for data in batch["image"].to_pylist()]
    return (batch["crop_id"].to_pylist(), np.stack(images),
            np.asarray(batch["label"].to_pylist(), np.float32))


def _optional(values: dict[str, np.ndarray] | None, stream: str, i: int) -> float | None:
    if values is None or stream not in values:
        return None
    return float(values[stream][i])


class ScoreScenarios:
    """Ray Data actor: ``__init__`` loads the detector and its fitted attacker once;
    ``__call__`` turns a batch of (crop_id, label, image) rows into prediction rows."""

    def __init__(self, spec: DetectorSpec, weights: Any, name: str, attacker: bytes | None,
                 scenarios: tuple[str, ...] = SCENARIOS, pgd_iterations: int = 10, analysis: str | None = "gradcam",
                 device: str | None = None) -> None:
        self.device = resolve_device(device)
        self.detector = load_evaluated(spec, weights, name, self.device)
        self.attacker = attacker_from_bytes(attacker).to(self.device) if attacker else None
        self.scenarios, self.analysis = scenarios, analysis
        self.pgd = PGDConfig(iterations=pgd_iterations)

    def __call__(self, batch: pa.Table) -> pa.Table:
        crop_ids, crops, labels = decode_batch(batch)
        # Each batch seeds PGD's random start from its first crop, so reruns give the same rows.
        torch.manual_seed(int.from_bytes(crop_ids[0].encode()[:4].ljust(4, b"\0"), "little") if crop_ids else 0)
        results = evaluate_crops(self.detector, crops, labels, self.scenarios, self.attacker, self.pgd, self.analysis)
        rows = []
        for scenario, scores in results.items():
            for stream, p in scores.p_fake.items():
                for i, crop_id in enumerate(crop_ids):
                    rows.append({
                        "crop_id": crop_id, "label": int(labels[i]), "scenario": scenario, "stream": stream,
                        "logit": None if stream == OVERALL else float(scores.logits[stream][i]),
                        "p_fake": float(p[i]),
                        "feature_cosine": _optional(scores.feature_cosine, stream, i),
                        "entropy": _optional(scores.entropy, stream, i),
                    })
        return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def fit_attacker(spec: DetectorSpec, weights: Any, name: str, crops: np.ndarray, labels: np.ndarray, steps: int,
                 seed: int = 0) -> bytes:
    """A U-Net attacker fitted against one detector, as bytes for the scoring actors."""
    detector = load_evaluated(spec, weights, name, resolve_device())
    return attacker_bytes(fit_unet_attacker(detector, crops, labels, steps, seed=seed))


def gallery_heatmaps(spec: DetectorSpec, weights: Any, name: str, crops: np.ndarray, method: str = "scorecam",
                     top_k: int = 16) -> dict[str, list[bytes]]:
    """Per stream, a PNG (crop | heatmap overlay) for each crop: the galleries' images."""
    device = resolve_device()
    detector = load_evaluated(spec, weights, name, device)
    if not len(crops):
        return {}
    pixels = preprocess_crops(crops, detector.img_size).to(device)
    maps = explain(detector.model, pixels, method=method, top_k=top_k)
    return {stream: [heatmap_png(crop, heat) for crop, heat in zip(crops, heats)] for stream, heats in maps.items()}


EVALUATED_CROPS = pa.schema([CROP_SCHEMA.field(name) for name in ("crop_id", "label", "image")])
# One actor pool per model; the attacks make it CPU-heavy, so it may grow to the whole cluster.
SCORE_SCENARIOS = StageSpec("evaluate", ScoreScenarios, EVALUATED_CROPS, PREDICTION_SCHEMA,
                            Resources(1.0, min_cpus=0.25), batch_size=16, cpu_share=1.0)
