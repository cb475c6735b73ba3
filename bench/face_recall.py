"""Face recall and cost of MTCNN settings against a reference setting, on every face picture at hand.

    .venv/bin/python bench/face_recall.py                       # sample media and synthetic frames
    .venv/bin/python bench/face_recall.py --training-faces      # also the training faces (downloads them)

The reference is MTCNN at its own defaults on the full-resolution frame: pyramid factor 0.709,
``min_face_size`` 20, probability ≥ 0.90. Each setting runs the scan's own ``FaceCropper`` on the
frames the scan decodes (long side at most 1280) and is judged on the reference's faces: recall
(share of reference faces it finds, IoU ≥ 0.5), mean IoU of those found, faces it finds that the
reference does not, and milliseconds per frame (medians of --repeats, this process's torch threads).

The media: 8 frames of each sample video, the sample photos, optionally the training faces, and
synthetic frames at 360p, 720p and 1080p with a small (6% of the height) and a large (40%) face
pasted on a real background.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.faces import FaceCropConfig, FaceCropper
from jobs.samples import NOT_FACE_PHOTOS, default_cache_dir, fetch_sample_media
from pipelines.decode import DecodeConfig, sample_frames, scaled_size
from pipelines.sources import open_video

SCAN_MAX_SIDE = 1280
REFERENCE = FaceCropConfig(detect_long_side=1 << 16, min_face_size=20, scale_factor=0.709, fallback_long_side=None)
SETTINGS = {
    "640, factor 0.709, no second pass (before)": FaceCropConfig(detect_long_side=640, scale_factor=0.709,
                                                                  fallback_long_side=None),
    "640, factor 0.709": FaceCropConfig(detect_long_side=640, scale_factor=0.709),
    "640, factor 0.6": FaceCropConfig(detect_long_side=640),
    "480, factor 0.709": FaceCropConfig(scale_factor=0.709),
    "480, factor 0.6 (default)": FaceCropConfig(),
    "480, factor 0.6, no second pass": FaceCropConfig(fallback_long_side=None),
    "960, factor 0.709": FaceCropConfig(detect_long_side=960, scale_factor=0.709),
    "1280, factor 0.709": FaceCropConfig(detect_long_side=1280, scale_factor=0.709),
}


def video_frames(path: Path, n: int) -> np.ndarray:
    _, sampled = sample_frames(open_video(str(path), path.stat().st_size, {}), DecodeConfig(n, max_side=1 << 16))
    return sampled.frames


def synthetic(face: Image.Image, background: np.ndarray, height: int, face_share: float, seed: int) -> np.ndarray:
    width = height * 16 // 9
    frame = Image.fromarray(background).resize((width, height), Image.Resampling.BILINEAR)
    side = int(height * face_share)
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    frame.paste(face.resize((side, side), Image.Resampling.LANCZOS), (x, y))
    return np.asarray(frame)[None]


def gather_media(frames_per_video: int, training_faces: bool) -> dict[str, list[np.ndarray]]:
    samples = fetch_sample_media(default_cache_dir() / "samples")
    media: dict[str, list[np.ndarray]] = {"sample videos": [], "sample photos": [], "synthetic": []}
    for path in samples:
        if path.suffix in (".mp4", ".mov"):
            media["sample videos"].append(video_frames(path, frames_per_video))
        elif path.name not in NOT_FACE_PHOTOS:
            media["sample photos"].append(video_frames(path, 1))
    face = Image.open(next(p for p in samples if p.name == "single_face.jpg")).convert("RGB")
    background = video_frames(next(p for p in samples if p.name == "no_face.mp4"), 1)[0]
    for height in (360, 720, 1080):
        for share in (0.06, 0.4):
            media["synthetic"] += [synthetic(face, background, height, share, seed) for seed in range(3)]
    if training_faces:
        from jobs.faces import fetch_training_faces

        # labels.csv, not real/: files an older list left in the folder are not training faces any more
        labels = fetch_training_faces(Path(tempfile.gettempdir()) / "fakescan-training-faces")
        with labels.open(encoding="utf-8") as f:
            uris = [row["uri"] for row in csv.DictReader(f)]
        media["training faces"] = [video_frames(labels.parent / uri, frames_per_video) for uri in uris]
    return media


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(reference: list[np.ndarray], found: list[np.ndarray]) -> tuple[int, list[float], int]:
    """Greedy one-to-one matching per frame: (reference faces found, their IoUs, extra faces)."""
    hits, ious, extra = 0, [], 0
    for ref_boxes, boxes in zip(reference, found):
        free = list(range(len(boxes)))
        for ref in ref_boxes:
            best = max(free, key=lambda j: iou(ref, boxes[j]), default=None)
            if best is not None and iou(ref, boxes[best]) >= 0.5:
                hits += 1
                ious.append(iou(ref, boxes[best]))
                free.remove(best)
        extra += len(free)
    return hits, ious, extra


def scan_frames(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """The frames as the scan decodes them (long side ≤ 1280), and the factor back to full size."""
    height, width = frames.shape[1:3]
    small_width, small_height = scaled_size(width, height, SCAN_MAX_SIDE)
    if (small_width, small_height) == (width, height):
        return frames, 1.0
    resized = np.stack([np.asarray(Image.fromarray(f).resize((small_width, small_height), Image.Resampling.BILINEAR))
                        for f in frames])
    return resized, width / small_width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--training-faces", action="store_true")
    args = parser.parse_args()
    media = gather_media(args.frames, args.training_faces)
    videos = [frames for group in media.values() for frames in group]
    n_frames = sum(len(v) for v in videos)
    counts = ", ".join(f"{k} {len(v)}" for k, v in media.items())
    print(f"{len(videos)} videos or photos ({counts}), {n_frames} frames; torch threads {torch.get_num_threads()}\n")
    reference_cropper = FaceCropper(REFERENCE)
    reference = [reference_cropper.detect(frames)[0] for frames in videos]
    n_reference = sum(len(boxes) for video in reference for boxes in video)
    print(f"reference (full resolution, factor 0.709, min_face_size 20): {n_reference} faces\n")
    print("| detection long side, pyramid factor | recall | mean IoU | extra faces | ms/frame | × before |")
    print("| --- | --- | --- | --- | --- | --- |")
    prepared = [scan_frames(frames) for frames in videos]
    base_ms = None
    for name, config in SETTINGS.items():
        cropper = FaceCropper(replace(config, detect_batch_size=args.frames))
        timings, found = [], []
        for frames, _ in prepared[:2]:  # warm-up: the first calls of a new MTCNN pay for allocations
            cropper.detect(frames)
        for _ in range(args.repeats):
            started = time.perf_counter()
            found = [[boxes * factor for boxes in cropper.detect(frames)[0]] for frames, factor in prepared]
            timings.append((time.perf_counter() - started) * 1000 / n_frames)
        hits, ious, extra = 0, [], 0
        for ref, got in zip(reference, found):
            h, i, e = match(ref, got)
            hits, extra = hits + h, extra + e
            ious += i
        ms = statistics.median(timings)
        base_ms = base_ms or ms
        print(f"| {name} | {hits / max(n_reference, 1):.3f} | {statistics.fmean(ious) if ious else 0:.3f} | {extra} | "
              f"{ms:.1f} | {ms / base_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
