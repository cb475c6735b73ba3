"""Score stage: a hybrid-detector actor scores every face crop of its videos, and their probes,
in batches across the videos of each call."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from detector.factory import DetectorSpec
from pipelines.inference import InferenceSettings, load_detector, run_batched, split
from pipelines.probes import probe_crops
from pipelines.rows import SCORING_SCHEMA, to_table, unpack_array


class ScoreFaces:
    def __init__(self, spec: DetectorSpec, weights: Any = None, batch_size: int = 64, device: str | None = None,
                 autocast: str | None = None, channels_last: bool = False) -> None:
        self.settings = InferenceSettings.for_device(device, batch_size, autocast, channels_last)
        model, self.info = load_detector(spec, weights, self.settings.device)
        self.model = self.settings.prepare(model)
        self.calibration = self.info.calibration.to_json()

    def score_crops(self, crops: np.ndarray) -> np.ndarray:
        if not len(crops):
            return np.zeros((0,), np.float32)
        return self.settings.run(lambda x: {"logit": self.model(x)}, crops, self.info.img_size)["logit"]

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
        for row in rows:
            row.update(model_name=self.info.name, model_version=self.info.version, model_trained=self.info.trained,
                       hybrid_calibration=self.calibration)
        run_batched(rows, "score", self.load, self.score_videos, self.store, cost=lambda v: v.shape[0] * v.shape[1])
        return to_table(rows, SCORING_SCHEMA)
