"""What decoding N sampled frames costs: the scan's PyAV path against the old whole-file decord path.

    .venv/bin/python bench/read_cost.py --frames 32 --repeats 3
    .venv/bin/python bench/read_cost.py --s3-endpoint http://127.0.0.1:7480 --bucket bench  # also over S3

For every video, on the same machine in the same run (medians of --repeats):
  - ``pyav``: the scan's decode (``pipelines.decode.sample_frames`` on a ``VideoFile``): only the
    blocks the sampled frames need are fetched;
  - ``decord bytes``: what the scan did before: fetch the whole file, then decord2 on the bytes;
  - ``decord path``: decord2 on the local path (its own reader, whose reads are not counted),
    the best case decord has.
It prints wall and CPU seconds per video, the CPU ratio to ``pyav``, and bytes fetched per video.
The media: the sample clips (short, local), 10-s 720p clips, and a long 360p video at about
3 Mbit/s (moov at the end, 2-s GOPs) of --long-minutes.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: F401, I001 - decord2's native libraries must load after torch's

import decord

from jobs.samples import default_cache_dir, fetch_sample_media
from pipelines.decode import DecodeConfig, sample_frames, sample_indices
from pipelines.sources import filesystem_for, open_video, storage_options_for
from tests.support.media import clip_frames, encode_video, long_frames

Method = Callable[[str, int, dict, DecodeConfig], int]  # → bytes fetched


def pyav(uri: str, size: int, options: dict, config: DecodeConfig) -> int:
    video = open_video(uri, size, options)
    sample_frames(video, config)
    return video.bytes_read


def decord_bytes(uri: str, size: int, options: dict, config: DecodeConfig) -> int:
    data = filesystem_for(uri, options).cat_file(uri)
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    reader.get_batch(sample_indices(len(reader), config.n_frames)).asnumpy()
    return len(data)


def decord_path(uri: str, size: int, options: dict, config: DecodeConfig) -> int:
    reader = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=1)
    reader.get_batch(sample_indices(len(reader), config.n_frames)).asnumpy()
    return -1  # decord's own reader: not counted


def make_media(folder: Path, long_minutes: float) -> dict[str, list[Path]]:
    samples = fetch_sample_media(default_cache_dir() / "samples")
    short = []
    for path in sorted(p for p in samples if p.suffix in (".mp4", ".mov")):
        try:  # the comparison needs clips both decoders read; the scan fell back to PyAV for the others
            decord_path(str(path), 0, {}, DecodeConfig(n_frames=32))
            short.append(path)
        except decord.DECORDError:
            print(f"left out: {path.name} (decord2 fails on it)")
    hd = []
    for source in short[:3]:
        path = folder / f"720p-{source.stem}.mp4"
        if not path.exists():
            clip = clip_frames(source, 10.0, 25, 1280)
            encode_video(path, [clip[i % len(clip)] for i in range(250)], x264={"g": "50"})
        hd.append(path)
    long = folder / f"long-{long_minutes:g}min.mp4"
    if not long.exists():
        encode_video(long, long_frames(short[-1], int(long_minutes * 60)), x264={"g": "50", "crf": "20"})
    return {"sample clips": short, "10-s 720p": hd, f"{long_minutes:g}-min 360p": [long]}


def measure(method: Method, uris: list[tuple[str, int]], options: dict, config: DecodeConfig,
            repeats: int) -> tuple[float, float, float]:
    """Median wall seconds and CPU seconds (every thread of this process) per video, and bytes
    fetched per video. CPU time is what a pipeline's stage pays; wall time is what one video waits."""
    wall, cpu, fetched = [], [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fetched = [method(uri, size, options, config) for uri, size in uris]
        wall.append((time.perf_counter() - started) / len(uris))
        cpu.append((time.process_time() - started_cpu) / len(uris))
    return statistics.median(wall), statistics.median(cpu), statistics.mean(fetched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "fakescan-read-cost")
    parser.add_argument("--s3-endpoint", help="also read the media from this S3 server (credentials: AWS_*)")
    parser.add_argument("--bucket", default="fakescan-bench")
    args = parser.parse_args()
    args.media.mkdir(parents=True, exist_ok=True)
    config = DecodeConfig(n_frames=args.frames)
    sets = make_media(args.media, args.long_minutes)
    places: list[tuple[str, Callable[[Path], str], dict]] = [("local", str, {})]
    if args.s3_endpoint:
        options = storage_options_for("s3://", args.s3_endpoint)
        fs = filesystem_for("s3://", options)
        fs.mkdirs(args.bucket, exist_ok=True)
        for paths in sets.values():
            for path in paths:
                fs.put(str(path), f"{args.bucket}/{path.name}")
        places.append(("s3", lambda p: f"s3://{args.bucket}/{p.name}", options))
    print(f"decode {args.frames} frames per video, median of {args.repeats}\n")
    print("| media | where | method | wall s/video | CPU s/video | CPU × pyav | MB fetched/video | % of file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, paths in sets.items():
        size = sum(p.stat().st_size for p in paths) / len(paths)
        for where, uri_of, options in places:
            uris = [(uri_of(p), p.stat().st_size) for p in paths]
            methods: dict[str, Method] = {"pyav": pyav, "decord bytes": decord_bytes}
            if where == "local":
                methods["decord path"] = decord_path
            base = None
            for label, method in methods.items():
                seconds, cpu, fetched = measure(method, uris, options, config, args.repeats)
                base = base or cpu
                shown = f"{fetched / 1e6:.1f} | {100 * fetched / size:.0f}%" if fetched >= 0 else "n/a | n/a"
                print(f"| {name} | {where} | {label} | {seconds:.3f} | {cpu:.3f} | {cpu / base:.2f} | {shown} |",
                      flush=True)


if __name__ == "__main__":
    main()
