"""Ensemble stage: an actor with the DINOv2 + CLIP ensemble scores every face and frame.

Faces get the Localized Facial and Hybrid Semantic Fusion logits (one backbone pass);
frames get the Global Texture logit, which every face of that frame carries. The faces of
every video in a call share batches, and so do their frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from detector.ensemble import EnsembleDetector
from detector.factory import DetectorSpec, SpecError
from pipelines.inference import ModelStage, run_batched, split
from pipelines.probes import scored_crops
from pipelines.rows import SCORING_SCHEMA, to_table, unpack_array


@dataclass(frozen=True)
class VideoInputs:
    faces: np.ndarray  # (1 + probes, faces, size, size, 3): clean crops, then each probe's
    frames: np.ndarray  # (frames with a face, scene, scene, 3)
    face_to_frame: np.ndarray  # each face's index into ``frames``

    @property
    def images(self) -> int:
        return self.faces.shape[0] * self.faces.shape[1] + len(self.frames)


class ScoreEnsemble(ModelStage):
    def __init__(self, spec: DetectorSpec, weights: Any = None, batch_size: int = 32, device: str | None = None,
                 autocast: str | None = None, channels_last: bool = False, threads: int | None = None) -> None:
        super().__init__(spec, weights, batch_size, device, autocast, channels_last, threads)
        if not isinstance(self.model, EnsembleDetector):  # the ensemble stage's spec always has kind "ensemble"
            raise SpecError(f"{spec.source} holds a {self.info.kind} detector, not an ensemble")
        self.ensemble: EnsembleDetector = self.model

    def face_logits(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        if not len(crops):
            return {"facial": np.zeros((0,), np.float32), "fusion": np.zeros((0,), np.float32)}
        return self.settings.run(self.ensemble.score_faces, crops, self.info.img_size)

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        if not len(frames):
            return np.zeros((0,), np.float32)
        return self.settings.run(lambda x: {"texture": self.ensemble.score_frames(x)}, frames,
                                 self.info.img_size)["texture"]

    @staticmethod
    def load(row: dict) -> VideoInputs:
        faces = scored_crops(row)
        if row.get("scenes") is None:
            raise ValueError("no frames for the texture stream: the faces stage ran without scene_size")
        scene = row["scene_size"]
        frames = unpack_array(row["scenes"], [-1, scene, scene, 3])
        # Only frames with a face are scored; each face carries its frame's texture logit.
        used, face_to_frame = np.unique(np.asarray(row["face_frame"], np.int64), return_inverse=True)
        return VideoInputs(faces, frames[used], face_to_frame)

    def score_videos(self, videos: list[VideoInputs]) -> list[dict[str, np.ndarray]]:
        faces = self.face_logits(np.concatenate([v.faces.reshape(-1, *v.faces.shape[2:]) for v in videos]))
        texture = self.frame_logits(np.concatenate([v.frames for v in videos]))
        sizes = [v.faces.shape[0] * v.faces.shape[1] for v in videos]
        per_video = zip(videos, split(faces["facial"], sizes), split(faces["fusion"], sizes),
                        split(texture, [len(v.frames) for v in videos]))
        return [{"facial": facial.reshape(v.faces.shape[:2]), "fusion": fusion.reshape(v.faces.shape[:2]),
                 "texture": frame_texture[v.face_to_frame]} for v, facial, fusion, frame_texture in per_video]

    @staticmethod
    def store(row: dict, logits: dict[str, np.ndarray]) -> None:
        row.update(face_texture_logit=logits["texture"].tolist(), face_facial_logit=logits["facial"][0].tolist(),
                   face_fusion_logit=logits["fusion"][0].tolist(),
                   face_facial_logit_probes=[p.tolist() for p in logits["facial"][1:]],
                   face_fusion_logit_probes=[p.tolist() for p in logits["fusion"][1:]])

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            row.update(ensemble_name=self.info.name, ensemble_version=self.info.version,
                       ensemble_trained=self.info.trained, ensemble_calibration=self.calibration)
        run_batched(rows, "ensemble", self.load, self.score_videos, self.store, cost=lambda v: v.images)
        return to_table(rows, SCORING_SCHEMA)
