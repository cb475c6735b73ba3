"""Faces stage: an MTCNN actor finds and crops every face in the sampled frames of its videos.

Videos of one call share MTCNN batches (on a GPU, where batches matter); each still gets its
own error row when it alone is bad.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from detector.device import resolve_device, use_threads
from detector.faces import FaceCrop, FaceCropConfig, FaceCropper, resize_frames
from pipelines.inference import run_batched
from pipelines.rows import FACES_SCHEMA, pack_array, to_rows, to_table, unpack_array


@dataclass(frozen=True)
class VideoFaces:
    faces: list[FaceCrop]
    scenes: np.ndarray | None  # every sampled frame at scene_size, when there is a face and a scene_size


class CropFaces:
    """``scene_size`` also keeps every sampled frame, squashed to that square size, for the
    ensemble's Global Texture stream; the full frames themselves go no further."""

    def __init__(self, config: FaceCropConfig, device: str | None = None, scene_size: int | None = None,
                 threads: int | None = None) -> None:
        use_threads(threads)
        self.device = resolve_device(device)
        self.cropper = FaceCropper(config, device=self.device)
        self.crop_size = config.crop_size
        self.scene_size = scene_size

    def find_faces(self, videos: list[np.ndarray]) -> list[VideoFaces]:
        found = []
        for frames, faces in zip(videos, self.cropper.crop_faces_many(videos)):
            scenes = resize_frames(frames, self.scene_size, self.scene_size, self.device) \
                if self.scene_size and faces else None
            found.append(VideoFaces(faces, scenes))
        return found

    def store(self, row: dict, found: VideoFaces) -> None:
        faces, size = found.faces, self.crop_size
        if found.scenes is not None:
            row["scenes"], _ = pack_array(found.scenes)
            row["scene_size"] = self.scene_size
        crops = np.stack([f.crop for f in faces]) if faces else np.zeros((0, size, size, 3), np.uint8)
        row["crops"], _ = pack_array(crops)
        row.update(
            crop_size=size,
            face_frame=[f.frame_index for f in faces],
            face_box=[list(f.box) for f in faces],
            face_det_prob=[f.prob for f in faces],
            face_landmarks=[f.landmarks.reshape(-1).tolist() for f in faces],
        )
        if not faces:
            row["status"] = "no_face"

    def __call__(self, batch: pa.Table) -> pa.Table:
        # The full frames are read in place, and go no further than this stage.
        rows, arrays = to_rows(batch, "frames")
        frames = {id(row): (view, row.pop("frame_shape", None)) for row, view in zip(rows, arrays["frames"])}

        def load(row: dict) -> np.ndarray:
            view, shape = frames[id(row)]
            if view is None:
                raise ValueError("the decode stage passed on no frames")
            return unpack_array(view, shape)

        run_batched(rows, "faces", load, self.find_faces, self.store, cost=len)
        return to_table(rows, FACES_SCHEMA)
