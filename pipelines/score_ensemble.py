"""Ensemble stage: an actor with the DINOv2 + CLIP ensemble scores every face and frame.

Faces get the Localized Facial and Hybrid Semantic Fusion logits (one backbone pass);
frames get the Global Texture logit, which every face of that frame carries.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import torch

from detector.ensemble import ENSEMBLE_CONFIGS, EnsembleDetector, EnsembleInfo, create_ensemble
from detector.hybrid import preprocess_crops
from pipelines.probes import probe_crops
from pipelines.rows import SCORING_SCHEMA, stage_guard, to_table, unpack_array


def load_ensemble(spec: str, device: str = "cpu", weights: bytes | None = None, name: str | None = None,
                  version: str | None = None) -> tuple[EnsembleDetector, EnsembleInfo]:
    """``spec`` is a config name (random weights, marked untrained), a safetensors path/URI, or
    a registry URI whose ``weights`` bytes the job fetched once for every actor."""
    if weights is not None:
        model, info = create_ensemble(weights=weights, device=device)
        return model, replace(info, name=name or info.name, version=version or info.version, source=spec)
    if spec in ENSEMBLE_CONFIGS:
        return create_ensemble(spec, device=device)
    return create_ensemble(weights=spec, device=device)


class ScoreEnsemble:
    def __init__(self, model_spec: str, weights: bytes | None = None, name: str | None = None,
                 version: str | None = None, batch_size: int = 32, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.info = load_ensemble(model_spec, self.device, weights, name, version)
        self.batch_size = batch_size
        self.calibration = self.info.calibration.to_json()

    @torch.inference_mode()
    def face_logits(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {"facial": [], "fusion": []}
        for start in range(0, len(crops), self.batch_size):
            x = preprocess_crops(crops[start : start + self.batch_size], self.model.config.img_size)
            for stream, logits in self.model.score_faces(x.to(self.device)).items():
                parts[stream].append(logits.float().cpu().numpy())
        return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in parts.items()}

    @torch.inference_mode()
    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        logits = [self.model.score_frames(preprocess_crops(frames[s : s + self.batch_size],
                                                           self.model.config.img_size).to(self.device))
                  .float().cpu().numpy() for s in range(0, len(frames), self.batch_size)]
        return np.concatenate(logits) if logits else np.zeros((0,), np.float32)

    def score_row(self, row: dict) -> None:
        n, size = len(row["face_frame"]), row["crop_size"]
        faces = self.face_logits(unpack_array(row["crops"], [n, size, size, 3]))
        scene = row["scene_size"]
        if row.get("scenes") is None:
            raise ValueError("no frames for the texture stream: the faces stage ran without scene_size")
        frames = unpack_array(row["scenes"], [-1, scene, scene, 3])
        # Only frames with a face are scored; each face carries its frame's texture logit.
        used, face_to_used = np.unique(np.asarray(row["face_frame"], np.int64), return_inverse=True)
        texture = self.frame_logits(frames[used])[face_to_used]
        probes = [self.face_logits(p) for p in probe_crops(row, n, size)]
        row.update(face_texture_logit=texture.tolist(), face_facial_logit=faces["facial"].tolist(),
                   face_fusion_logit=faces["fusion"].tolist(),
                   face_facial_logit_probes=[p["facial"].tolist() for p in probes],
                   face_fusion_logit_probes=[p["fusion"].tolist() for p in probes])

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            row.update(ensemble_name=self.info.name, ensemble_version=self.info.version,
                       ensemble_trained=self.info.trained, ensemble_calibration=self.calibration)
            if row["status"] != "pending":
                continue
            with stage_guard(row, "ensemble"):
                self.score_row(row)
        return to_table(rows, SCORING_SCHEMA)
