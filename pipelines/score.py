"""Score stage: a hybrid-detector actor scores every face crop of a video, and its probes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import torch

from detector.hybrid import HYBRID_CONFIGS, HybridDetector, ModelInfo, create_hybrid, preprocess_crops
from detector.voting import DetectorCalibration
from pipelines.probes import probe_crops
from pipelines.rows import SCORING_SCHEMA, stage_guard, to_table, unpack_array


def load_hybrid(spec: str, device: str = "cpu", weights: bytes | None = None, name: str | None = None,
                version: str | None = None) -> tuple[HybridDetector, ModelInfo]:
    """``spec`` is a config name (random weights, marked untrained), a safetensors path/URI, or a
    registry URI whose ``weights`` bytes, ``name`` and ``version`` the job fetched once for
    every actor."""
    if weights is not None:
        model, info = create_hybrid("hybrid_b0", weights=weights, device=device)
        return model, replace(info, name=name or info.name, version=version or info.version, source=spec)
    if spec in HYBRID_CONFIGS:
        return create_hybrid(spec, device=device)
    return create_hybrid("hybrid_b0", weights=spec, device=device)


class ScoreFaces:
    def __init__(self, model_spec: str, weights: bytes | None = None, name: str | None = None,
                 version: str | None = None, batch_size: int = 64, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.info = load_hybrid(model_spec, self.device, weights, name, version)
        self.model.eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def score_crops(self, crops: np.ndarray) -> np.ndarray:
        logits = []
        for start in range(0, len(crops), self.batch_size):
            x = preprocess_crops(crops[start : start + self.batch_size], self.model.config.img_size)
            logits.append(self.model(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(logits) if logits else np.zeros((0,), np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        calibration = hybrid_calibration(self.info).to_json()
        for row in rows:
            row.update(model_name=self.info.name, model_version=self.info.version, model_trained=self.info.trained,
                       calibration_temperature=self.info.calibration.temperature,
                       calibration_bias=self.info.calibration.bias, hybrid_calibration=calibration)
            if row["status"] != "pending":
                continue
            with stage_guard(row, "score"):
                n, size = len(row["face_frame"]), row["crop_size"]
                row["face_logit"] = self.score_crops(unpack_array(row["crops"], [n, size, size, 3])).tolist()
                row["face_logit_probes"] = [self.score_crops(p).tolist() for p in probe_crops(row, n, size)]
        return to_table(rows, SCORING_SCHEMA)


def hybrid_calibration(info: ModelInfo) -> DetectorCalibration:
    """The hybrid as a one-stream detector for the vote: the calibration ``fakescan calibrate``
    stored with the weights, else the training job's temperature and bias with default bands."""
    return info.voting or DetectorCalibration.from_temperature("hybrid", "hybrid", info.calibration.temperature,
                                                               info.calibration.bias, info.calibration.fitted_on)
