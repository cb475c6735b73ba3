"""Inference throughput of the ensemble, per stream and whole, against the hybrid in the same run.

    .venv/bin/python bench/ensemble_throughput.py [--configs ensemble_tiny,ensemble_small] [--faces 64]

Random weights (speed does not depend on them). Each stream is timed as the scan runs it:
texture = backbone + texture head on frames; facial = backbone + facial head; fusion =
backbone + CLIP + fusion block; the whole ensemble = one backbone pass on the faces (facial
and fusion share it) plus one on the frames. Giant is not run on CPU: its cost is computed
(FLOPs counted on the meta device, no memory used) and scaled from the small config's
measured time.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from detector.ensemble import ENSEMBLE_CONFIGS, EnsembleDetector
from detector.factory import create_detector


def rate(run: Callable[[], object], n: int, repeats: int) -> float:
    run()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return n * repeats / (time.perf_counter() - started)


def stream_runs(model: EnsembleDetector, faces: torch.Tensor) -> dict[str, Callable[[], object]]:
    def fusion() -> torch.Tensor:
        tokens = model.backbone_tokens(faces)
        image, text = model.clip_features(faces)
        return model.fusion_head(tokens, model.prefix, image, text)

    return {
        "texture": lambda: model.score_frames(faces),
        "facial": lambda: model.facial_head(model.token_map(model.backbone_tokens(faces))),
        "fusion": fusion,
        "ensemble": lambda: (model.score_faces(faces), model.score_frames(faces)),
    }


def gflops_per_face(name: str) -> float:
    """Forward GFLOPs for one face and its frame: two backbone passes and CLIP's image tower,
    counted on the meta device (nothing computed, nothing allocated). The heads are left
    out: they are under 1% of the total at every size."""
    import open_clip
    import timm

    config = ENSEMBLE_CONFIGS[name]
    with torch.device("meta"):
        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, img_size=config.img_size,
                                     **config.backbone_kwargs)
    clip = open_clip.create_model(config.clip_model, pretrained=None, load_weights=False, device="meta",
                                  **config.clip_kwargs)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone.forward_features(torch.empty(2, 3, config.img_size, config.img_size, device="meta"))
        clip.encode_image(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="ensemble_tiny,ensemble_small")
    parser.add_argument("--faces", type=int, default=64, help="faces per batch (default 64)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.inference_mode():
        hybrid, _ = create_detector("hybrid_b0")
        baseline = rate(lambda: hybrid(torch.rand(args.faces, 3, 224, 224)), args.faces, args.repeats)
        print(f"baseline hybrid_b0: {baseline:.1f} faces/s ({torch.get_num_threads()} threads)")
        measured = {}
        for name in args.configs.split(","):
            model, info = create_detector(name)
            faces = torch.rand(args.faces, 3, info.config.img_size, info.config.img_size)
            for stream, run in stream_runs(model, faces).items():
                value = rate(run, args.faces, args.repeats)
                measured[(name, stream)] = value
                print(f"{name:15s} {stream:9s} {value:8.1f} faces/s  ratio to hybrid {value / baseline:6.3f}")
    flops = {name: gflops_per_face(name) for name in ("ensemble_tiny", "ensemble_small", "ensemble_giant")}
    for name, value in flops.items():
        print(f"{name:15s} {value:8.1f} GFLOPs per face (two backbone passes + CLIP image tower)")
    if ("ensemble_small", "ensemble") in measured:
        small = measured[("ensemble_small", "ensemble")]
        giant = small * flops["ensemble_small"] / flops["ensemble_giant"]
        ratio = flops["ensemble_giant"] / flops["ensemble_small"]
        print(f"ensemble_giant  computed {giant:.2f} faces/s on this CPU ({ratio:.0f}x "
              f"the small config's FLOPs), ratio to hybrid {giant / baseline:.4f}")


if __name__ == "__main__":
    main()
