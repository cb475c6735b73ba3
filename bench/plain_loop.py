"""The baseline a team writes today without fakescan: one video at a time, in one process.

decord reads 32 evenly spaced frames; facenet-pytorch's MTCNN, at its own defaults, finds the
faces on a half-scale copy of each frame; every face, cropped from the full frame, is scored by
the same hybrid model the scan runs; a video's score is the mean. torch keeps its default
threads (one per core). A file that fails to open is counted as an error and skipped.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from detector.factory import create_detector


@dataclass
class LoopResult:
    videos: int = 0
    seconds: float = 0.0
    frames: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0


def score_video(path: Path, mtcnn: MTCNN, model: torch.nn.Module, img_size: int, frames: int
                ) -> tuple[int, int, float | None]:
    """(frames read, faces scored, mean fake probability or None)."""
    reader = decord.VideoReader(str(path))
    picks = np.linspace(0, len(reader) - 1, frames).round().astype(int)
    batch = reader.get_batch(picks).asnumpy()
    height, width = batch.shape[1:3]
    half = [Image.fromarray(f).resize((width // 2, height // 2), Image.Resampling.BILINEAR) for f in batch]
    boxes, _ = mtcnn.detect(half)
    crops = []
    for frame, frame_boxes in zip(batch, boxes):
        for x1, y1, x2, y2 in (frame_boxes if frame_boxes is not None else []) * 2:
            face = Image.fromarray(frame).crop((int(x1), int(y1), int(x2), int(y2)))
            crops.append(np.asarray(face.resize((img_size, img_size), Image.Resampling.BILINEAR)))
    if not crops:
        return len(batch), 0, None
    pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        return len(batch), len(crops), float(torch.sigmoid(model(pixels)).mean())


def run_plain_loop(paths: Sequence[Path], model_name: str, frames: int) -> LoopResult:
    """The loop over ``paths``; model loading is outside the timed part, as in the scan's figures."""
    model, info = create_detector(model_name, device="cpu")
    mtcnn = MTCNN(keep_all=True, device="cpu")
    result = LoopResult()
    started = time.perf_counter()
    for path in paths:
        result.videos += 1
        try:
            n_frames, n_faces, score = score_video(path, mtcnn, model, info.img_size, frames)
        except Exception:  # noqa: BLE001 - the loop people write skips what it cannot read
            result.errors += 1
            continue
        result.frames += n_frames
        result.faces += n_faces
        result.no_face += score is None
    result.seconds = time.perf_counter() - started
    return result
