"""Score stage: a hybrid-detector actor scores every face crop of a video."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import torch

from detector.hybrid import HYBRID_CONFIGS, HybridDetector, ModelInfo, create_hybrid, preprocess_crops
from pipelines.rows import SCORED_SCHEMA, stage_guard, to_table, unpack_array


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
        for row in rows:
            crops, size = row.pop("crops", None), row.pop("crop_size", None)
            row.update(model_name=self.info.name, model_version=self.info.version, model_trained=self.info.trained,
                       calibration_temperature=self.info.calibration.temperature,
                       calibration_bias=self.info.calibration.bias)
            if row["status"] != "pending":
                continue
            with stage_guard(row, "score"):
                n = len(row["face_frame"])
                row["face_logit"] = self.score_crops(unpack_array(crops, [n, size, size, 3])).tolist()
        return to_table(rows, SCORED_SCHEMA)
