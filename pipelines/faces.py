"""Faces stage: an MTCNN actor per worker finds and crops every face in the sampled frames."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from detector.faces import FaceCropConfig, FaceCropper, resize_frames
from pipelines.rows import FACES_SCHEMA, pack_array, stage_guard, to_table, unpack_array


class CropFaces:
    """``scene_size`` also keeps every sampled frame, squashed to that square size, for the
    ensemble's Global Texture stream; the full frames themselves go no further."""

    def __init__(self, config: FaceCropConfig, device: str | None = None, scene_size: int | None = None) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cropper = FaceCropper(config, device=device)
        self.crop_size = config.crop_size
        self.scene_size = scene_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            data, shape = row.pop("frames", None), row.pop("frame_shape", None)
            if row["status"] != "pending":
                continue
            with stage_guard(row, "faces"):
                frames = unpack_array(data, shape)
                faces = self.cropper.crop_faces(frames)
                if self.scene_size and faces:
                    row["scenes"], _ = pack_array(resize_frames(frames, self.scene_size, self.scene_size))
                    row["scene_size"] = self.scene_size
                crops = np.stack([f.crop for f in faces]) if faces else np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
                row["crops"], _ = pack_array(crops)
                row.update(
                    crop_size=self.crop_size,
                    face_frame=[f.frame_index for f in faces],
                    face_box=[list(f.box) for f in faces],
                    face_det_prob=[f.prob for f in faces],
                    face_landmarks=[f.landmarks.reshape(-1).tolist() for f in faces],
                )
                if not faces:
                    row["status"] = "no_face"
        return to_table(rows, FACES_SCHEMA)
