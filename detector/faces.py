"""Face detection and cropping with facenet-pytorch's MTCNN.

Detection runs on a copy of the frames scaled so the long side is near
``detect_long_side`` (MTCNN's CPU side dominates its cost and grows with pixels);
crops are cut from the full-resolution frames so the detectors see every detail.
MTCNN's weights ship inside the facenet-pytorch wheel: nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN


@dataclass(frozen=True)
class FaceCropConfig:
    detect_long_side: int = 640
    # At the detection resolution; 20 px there is about 40 px in a 1280-wide frame.
    min_face_size: int = 20
    min_prob: float = 0.90
    # Context around the box on every side, as a fraction of the box's longer side.
    margin: float = 0.2
    crop_size: int = 224
    max_faces_per_frame: int = 16


@dataclass(frozen=True)
class FaceCrop:
    frame_index: int  # index into the frames passed to crop_faces
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in full-resolution pixels
    prob: float
    crop: np.ndarray  # (crop_size, crop_size, 3) uint8
    # MTCNN's five points (eyes, nose, mouth corners) as (x, y) in crop pixels.
    landmarks: np.ndarray  # (5, 2) float32


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a (N, H, W, 3) uint8 batch with antialiasing."""
    if frames.shape[1:3] == (height, width):
        return frames
    # Arrow hands over read-only views; torch wants a writable buffer.
    frames = np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def square_box(box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """A square around the box's centre, grown by ``margin`` of its longer side per side."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half = side / 2.0
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


def cut_square(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``box`` from ``frame``, padding with black where it leaves the frame."""
    x1, y1, x2, y2 = box
    h, w = frame.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    return out


class FaceCropper:
    """Finds every face in a batch of same-sized frames and returns aligned square crops."""

    def __init__(self, config: FaceCropConfig = FaceCropConfig(), device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.mtcnn = MTCNN(keep_all=True, min_face_size=config.min_face_size, post_process=False, device=device)

    def detect(self, frames: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Boxes and (5, 2) landmarks, in full-resolution pixels, and probabilities per frame."""
        n, h, w = frames.shape[:3]
        scale = min(1.0, self.config.detect_long_side / max(h, w))
        small = resize_frames(frames, max(1, round(h * scale)), max(1, round(w * scale)))
        batch_boxes, batch_probs, batch_points = self.mtcnn.detect(small, landmarks=True)
        boxes_out, probs_out, points_out = [], [], []
        for boxes, probs, points in zip(batch_boxes, batch_probs, batch_points):
            if boxes is None:
                boxes_out.append(np.zeros((0, 4), np.float32))
                probs_out.append(np.zeros((0,), np.float32))
                points_out.append(np.zeros((0, 5, 2), np.float32))
                continue
            probs = np.asarray(probs, dtype=np.float32)
            keep = np.argsort(-probs)[: self.config.max_faces_per_frame]
            keep = keep[probs[keep] >= self.config.min_prob]
            boxes_out.append((np.asarray(boxes, np.float32)[keep] / scale).astype(np.float32))
            probs_out.append(probs[keep])
            points_out.append((np.asarray(points, np.float32)[keep] / scale).astype(np.float32))
        return boxes_out, probs_out, points_out

    def crop_faces(self, frames: np.ndarray) -> list[FaceCrop]:
        if len(frames) == 0:
            return []
        boxes, probs, points = self.detect(frames)
        size = self.config.crop_size
        faces: list[FaceCrop] = []
        for index, (frame_boxes, frame_probs, frame_points) in enumerate(zip(boxes, probs, points)):
            for box, prob, landmarks in zip(frame_boxes, frame_probs, frame_points):
                square = square_box(box, self.config.margin)
                patch = cut_square(frames[index], square)
                crop = resize_frames(patch[None], size, size)[0]
                in_crop = (landmarks - np.array(square[:2], np.float32)) * (size / (square[2] - square[0]))
                faces.append(FaceCrop(index, tuple(float(v) for v in box), float(prob), crop,
                                      in_crop.astype(np.float32)))
        return faces
