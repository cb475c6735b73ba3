"""Score stage: a hybrid-detector actor scores every face crop of its videos, and their probes,
in batches across the videos of each call."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from detector.hybrid import HYBRID_CONFIGS, HybridDetector, ModelInfo, create_hybrid
from detector.voting import DetectorCalibration
from pipelines.inference import InferenceSettings, run_batched, split
from pipelines.probes import probe_crops
from pipelines.rows import SCORING_SCHEMA, to_table, unpack_array


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
                 version: str | None = None, batch_size: int = 64, device: str | None = None,
                 autocast: str | None = None, channels_last: bool = False) -> None:
        self.settings = InferenceSettings.for_device(device, batch_size, autocast, channels_last)
        self.device = self.settings.device
        model, self.info = load_hybrid(model_spec, self.device, weights, name, version)
        self.model = self.settings.prepare(model)

    def score_crops(self, crops: np.ndarray) -> np.ndarray:
        if not len(crops):
            return np.zeros((0,), np.float32)
        return self.settings.run(lambda x: {"logit": self.model(x)}, crops, self.model.config.img_size)["logit"]

    @staticmethod
    def load(row: dict) -> np.ndarray:
        """(1 + probes, faces, size, size, 3): the clean crops, then each probe's."""
        n, size = len(row["face_frame"]), row["crop_size"]
        return np.concatenate([unpack_array(row["crops"], [1, n, size, size, 3]), probe_crops(row, n, size)])

    def score_videos(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.score_crops(np.concatenate([v.reshape(-1, *v.shape[2:]) for v in videos]))
        return [chunk.reshape(v.shape[:2]) for chunk, v in zip(split(logits, [v.shape[0] * v.shape[1] for v in videos]),
                                                               videos)]

    @staticmethod
    def store(row: dict, logits: np.ndarray) -> None:
        row["face_logit"] = logits[0].tolist()
        row["face_logit_probes"] = [probe.tolist() for probe in logits[1:]]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        calibration = hybrid_calibration(self.info).to_json()
        for row in rows:
            row.update(model_name=self.info.name, model_version=self.info.version, model_trained=self.info.trained,
                       calibration_temperature=self.info.calibration.temperature,
                       calibration_bias=self.info.calibration.bias, hybrid_calibration=calibration)
        run_batched(rows, "score", self.load, self.score_videos, self.store, cost=lambda v: v.shape[0] * v.shape[1])
        return to_table(rows, SCORING_SCHEMA)


def hybrid_calibration(info: ModelInfo) -> DetectorCalibration:
    """The hybrid as a one-stream detector for the vote: the calibration ``fakescan calibrate``
    stored with the weights, else the training job's temperature and bias with default bands."""
    return info.voting or DetectorCalibration.from_temperature("hybrid", "hybrid", info.calibration.temperature,
                                                               info.calibration.bias, info.calibration.fitted_on)
