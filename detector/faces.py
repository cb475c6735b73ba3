"""Face detection and cropping with facenet-pytorch's MTCNN.

Detection runs on a copy of the frames scaled so the long side is at most
``detect_long_side`` (MTCNN's CPU side dominates its cost and grows with pixels),
with ``min_face_size`` scaled to match; crops are cut from the full-resolution
frames so the detectors see every detail. On a GPU the frames travel as uint8 and
are resized there, and frames of several videos share one MTCNN batch.
MTCNN's weights ship inside the facenet-pytorch wheel: nothing is downloaded.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from PIL import Image

# P-Net's window: MTCNN sees no face smaller than this, and a smaller minimum only upsamples.
MTCNN_WINDOW = 12


@dataclass(frozen=True)
class FaceCropConfig:
    detect_long_side: int = 480  # bench/face_recall.py: recall 1.0 against the reference at half the cost of 640
    # At a frame detect_long_side long (20 px there is about 53 px in a 1280-wide frame). A
    # smaller frame is detected at its own size with this scaled down in proportion, so the
    # smallest face found is the same share of the frame at every resolution.
    min_face_size: int = 20
    # The step between the image pyramid's scales: MTCNN's own 0.709 runs P-Net on about half
    # again as many scales as 0.6 (bench/face_recall.py measures what each finds and costs).
    scale_factor: float = 0.6
    # A video with no face at detect_long_side is detected once more with its frames this long
    # (the decoded frames' own size at most), which finds faces half the size: small faces cost
    # that second pass only in the videos that need it. None: no second pass.
    fallback_long_side: int | None = 1280
    # The second pass first looks at this many evenly spaced frames, and at the rest only when
    # it finds a face there: a video with no face at all (most of those the first pass finds
    # nothing in) costs a quarter of a full pass at 32 frames.
    fallback_probe_frames: int = 8
    min_prob: float = 0.90
    # Context around the box on every side, as a fraction of the box's longer side.
    margin: float = 0.2
    crop_size: int = 224
    max_faces_per_frame: int = 16
    # Frames per MTCNN call: one video's on a CPU; on a GPU larger batches (across videos of the
    # same detection size) keep it busy.
    detect_batch_size: int = 32

    def detection_size(self, height: int, width: int, long_side: int | None = None) -> tuple[int, int]:
        scale = min(1.0, (long_side or self.detect_long_side) / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def min_face_at(self, long_side: int) -> int:
        """``min_face_size`` for a detection frame whose long side is ``long_side``."""
        return max(MTCNN_WINDOW, round(self.min_face_size * min(1.0, long_side / self.detect_long_side)))


@dataclass(frozen=True)
class FaceCrop:
    frame_index: int  # index into the frames passed to crop_faces
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in full-resolution pixels
    prob: float
    crop: np.ndarray  # (crop_size, crop_size, 3) uint8
    # MTCNN's five points (eyes, nose, mouth corners) as (x, y) in crop pixels.
    landmarks: np.ndarray  # (5, 2) float32


def upload_frames(frames: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames as a tensor on ``device``: on a GPU through pinned memory, as
    uint8 (a quarter of float's bytes), without blocking the host."""
    frames = np.ascontiguousarray(frames)
    with warnings.catch_warnings():
        # Arrow hands over read-only views. Nothing writes to this tensor: every use of it here
        # (a cast to float, a pinned copy) makes a new one, so the frames are not copied first.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        x = torch.from_numpy(frames)
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x


def resize_pixels(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 tensor → (N, height, width, 3) float, antialiased and rounded to whole
    values, on the tensor's device (a GPU's resize; ``resize_frames`` gives a CPU's)."""
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0, 255).round_().permute(0, 2, 3, 1)


def resize_frames(frames: np.ndarray, height: int, width: int, device: str | torch.device = "cpu") -> np.ndarray:
    """Resize a (N, H, W, 3) uint8 batch with antialiasing, computing on ``device``.

    On a CPU, Pillow's bilinear filter (which widens its support when it shrinks, as
    antialiasing does) on uint8: within 1 of ``resize_pixels`` at every pixel, and 6x faster
    than torch's antialiased float interpolation on one thread (32 720p frames to 480 px:
    0.20 s against 1.21 s), which made this resize a third of the faces stage."""
    if frames.shape[1:3] == (height, width):
        return frames
    if torch.device(device).type == "cpu":
        return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
                         for frame in frames])
    return resize_pixels(upload_frames(frames, device), height, width).to(torch.uint8).cpu().numpy()


def square_box(box: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """A square around the box's centre, grown by ``margin`` of its longer side per side."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half = side / 2.0
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def cut_square(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``box`` from ``frame``, padding with black where it leaves the frame."""
    x1, y1, x2, y2 = box
    h, w = frame.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    return out


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # one frame's boxes (k, 4), probs (k,), points (k, 5, 2)


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """Indices of the centres of ``n`` equal segments of ``n_total`` (all of them when ``n`` ≥ ``n_total``)."""
    return np.unique(((np.arange(min(n, n_total)) + 0.5) * n_total / max(min(n, n_total), 1)).astype(int))


class FaceCropper:
    """Finds every face in batches of frames and returns aligned square crops."""

    def __init__(self, config: FaceCropConfig = FaceCropConfig(), device: str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.mtcnn = MTCNN(keep_all=True, min_face_size=config.min_face_size, factor=config.scale_factor,
                           post_process=False, device=self.device)

    def detection_frames(self, frames: np.ndarray, long_side: int | None = None) -> np.ndarray | torch.Tensor:
        """The frames at detection size: on a GPU, a float tensor resized there."""
        height, width = self.config.detection_size(frames.shape[1], frames.shape[2], long_side)
        if self.device.type == "cuda":
            return resize_pixels(upload_frames(frames, self.device), height, width)
        return resize_frames(frames, height, width)

    def run_mtcnn(self, small: np.ndarray | torch.Tensor) -> list[Detections]:
        """MTCNN on same-sized detection frames; boxes and points in detection pixels."""
        self.mtcnn.min_face_size = self.config.min_face_at(max(small.shape[1:3]))
        batch_boxes, batch_probs, batch_points = self.mtcnn.detect(small, landmarks=True)
        found: list[Detections] = []
        for boxes, probs, points in zip(batch_boxes, batch_probs, batch_points):
            if boxes is None:
                found.append((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                              np.zeros((0, 5, 2), np.float32)))
                continue
            probs = np.asarray(probs, dtype=np.float32)
            keep = np.argsort(-probs)[: self.config.max_faces_per_frame]
            keep = keep[probs[keep] >= self.config.min_prob]
            found.append((np.asarray(boxes, np.float32)[keep], probs[keep], np.asarray(points, np.float32)[keep]))
        return found

    def detect_many(self, videos: list[np.ndarray]) -> list[list[Detections]]:
        """Every frame's detections in full-resolution pixels, per video: at ``detect_long_side``,
        then at ``fallback_long_side`` for the videos where that found no face."""
        found = self._detect_at(videos, self.config.detect_long_side)
        fallback = self.config.fallback_long_side
        if fallback and fallback > self.config.detect_long_side:
            faceless = [i for i, (frames, detections) in enumerate(zip(videos, found))
                        if len(frames) and max(frames.shape[1:3]) > self.config.detect_long_side
                        and not any(len(boxes) for boxes, _, _ in detections)]
            probes = [evenly_spaced(len(videos[i]), self.config.fallback_probe_frames) for i in faceless]
            probed = self._detect_at([videos[i][picks] for i, picks in zip(faceless, probes)], fallback)
            with_face = [i for i, detections in zip(faceless, probed) if any(len(b) for b, _, _ in detections)]
            for i, detections in zip(with_face, self._detect_at([videos[i] for i in with_face], fallback)):
                found[i] = detections
        return found

    def _detect_at(self, videos: list[np.ndarray], long_side: int) -> list[list[Detections]]:
        """Frames of videos that share a detection size share MTCNN batches of up to
        ``detect_batch_size`` frames."""
        groups: dict[tuple[int, int], list[tuple[int, np.ndarray | torch.Tensor]]] = {}
        for index, frames in enumerate(videos):
            if len(frames):
                small = self.detection_frames(frames, long_side)
                groups.setdefault(tuple(small.shape[1:3]), []).append((index, small))
        in_small: list[list[Detections]] = [[] for _ in videos]
        step = self.config.detect_batch_size
        for members in groups.values():
            owners = [index for index, small in members for _ in range(len(small))]
            # detection_frames gives tensors on a GPU and arrays elsewhere.
            stacked = torch.cat([cast(torch.Tensor, s) for _, s in members]) if self.device.type == "cuda" else \
                np.concatenate([s for _, s in members])
            for start in range(0, len(stacked), step):
                chunk = stacked[start : start + step]
                for index, frame_detections in zip(owners[start : start + step], self.run_mtcnn(chunk)):
                    in_small[index].append(frame_detections)
        found: list[list[Detections]] = []
        for frames, detections in zip(videos, in_small):
            if not len(frames):
                found.append([])
                continue
            height, width = self.config.detection_size(frames.shape[1], frames.shape[2], long_side)
            to_full = np.array([frames.shape[2] / width, frames.shape[1] / height], np.float32)
            found.append([((boxes.reshape(-1, 2, 2) * to_full).reshape(-1, 4), probs, points * to_full)
                          for boxes, probs, points in detections])
        return found

    def detect(self, frames: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Boxes and (5, 2) landmarks, in full-resolution pixels, and probabilities per frame."""
        found = self.detect_many([frames])[0]
        return [d[0] for d in found], [d[1] for d in found], [d[2] for d in found]

    def cut_faces(self, frames: np.ndarray, detections: list[Detections]) -> list[FaceCrop]:
        size = self.config.crop_size
        faces: list[FaceCrop] = []
        for index, (frame_boxes, frame_probs, frame_points) in enumerate(detections):
            for box, prob, landmarks in zip(frame_boxes, frame_probs, frame_points):
                square = square_box(box, self.config.margin)
                patch = cut_square(frames[index], square)
                crop = resize_frames(patch[None], size, size)[0]
                in_crop = (landmarks - np.array(square[:2], np.float32)) * (size / (square[2] - square[0]))
                x1, y1, x2, y2 = (float(v) for v in box)
                faces.append(FaceCrop(index, (x1, y1, x2, y2), float(prob), crop, in_crop.astype(np.float32)))
        return faces

    def crop_faces_many(self, videos: list[np.ndarray]) -> list[list[FaceCrop]]:
        """``crop_faces`` for several videos, detected together."""
        return [self.cut_faces(frames, found) for frames, found in zip(videos, self.detect_many(videos))]

    def crop_faces(self, frames: np.ndarray) -> list[FaceCrop]:
        return self.crop_faces_many([frames])[0]
