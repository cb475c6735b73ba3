"""Score stage: a hybrid-detector actor scores every face crop of its videos, and their probes,
in batches across the videos of each call."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.inference import ModelStage, run_batched, split
from pipelines.probes import scored_crops
from pipelines.rows import SCORING_SCHEMA, to_table


class ScoreFaces(ModelStage):

    def score_crops(self, crops: np.ndarray) -> np.ndarray:
        if not len(crops):
            return np.zeros((0,), np.float32)
        return self.settings.run(lambda x: {"logit": self.model(x)}, crops, self.info.img_size)["logit"]

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
        run_batched(rows, "score", scored_crops, self.score_videos, self.store, cost=lambda v: v.shape[0] * v.shape[1])
        return to_table(rows, SCORING_SCHEMA)
