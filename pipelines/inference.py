"""What the model stages share: batches across videos, and inference on the stage's device.

A stage call receives several videos; their crops (or frames) are scored as one batch so that
a GPU sees large batches, and each video still gets its own error row when it alone is bad.
On a GPU, pixels travel as pinned uint8 and are converted and normalised there; bf16 autocast
and channels_last are the stage's settings, off on a CPU.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from detector.device import resolve_device, use_threads
from detector.faces import upload_frames
from detector.factory import DetectorInfo, DetectorSpec, create_detector
from detector.hybrid import preprocess_crops
from pipelines.rows import one_line, stage_guard

log = logging.getLogger("fakescan.inference")
Loaded = TypeVar("Loaded")
Result = TypeVar("Result")
ModuleT = TypeVar("ModuleT", bound=nn.Module)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceSettings:
    device: str = "cpu"
    batch_size: int = 64  # images per forward pass
    autocast: str | None = None  # bf16 | fp16 | None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: str | None, batch_size: int, autocast: str | None = None,
                   channels_last: bool = False) -> InferenceSettings:
        device = resolve_device(device)
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast {autocast!r}; choose from {', '.join(AUTOCAST_DTYPES)}")
        return cls(device, batch_size, autocast, channels_last)

    def prepare(self, model: ModuleT) -> ModuleT:
        model = model.to(self.device).eval()
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def autocast_context(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=AUTOCAST_DTYPES[self.autocast])

    def pixels(self, images: np.ndarray, img_size: int) -> torch.Tensor:
        """(N, H, W, 3) uint8 → (N, 3, img_size, img_size) float in [0, 1] on the device; the
        conversion and any resize run there (the model normalises inside)."""
        x = preprocess_crops(upload_frames(images, self.device), img_size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def run(self, forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], images: np.ndarray,
            img_size: int) -> dict[str, np.ndarray]:
        """``forward`` over ``images`` in batches of ``batch_size``; each output as float32 numpy."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), self.batch_size):
            pixels = self.pixels(images[start : start + self.batch_size], img_size)
            with self.autocast_context():
                outputs = forward(pixels)
            for name, value in outputs.items():
                parts.setdefault(name, []).append(value.float().cpu().numpy())
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def load_detector(spec: DetectorSpec, weights: Any, device: str) -> tuple[nn.Module, DetectorInfo]:
    """A stage's model. ``weights`` are the file's bytes, or (what a job passes, so that actor
    arguments stay small) an object ref to them that the job put once; None for a config."""
    if weights is not None and not isinstance(weights, bytes):
        import ray

        weights = ray.get(weights)
    return create_detector(spec, weights=weights, device=device)


class ModelStage:
    """What every model stage's actor holds: its device settings and its detector, loaded once,
    with the calibration that travels with each row it scores, for the verdict."""

    def __init__(self, spec: DetectorSpec, weights: Any = None, batch_size: int = 64, device: str | None = None,
                 autocast: str | None = None, channels_last: bool = False, threads: int | None = None) -> None:
        use_threads(threads)
        self.settings = InferenceSettings.for_device(device, batch_size, autocast, channels_last)
        model, self.info = load_detector(spec, weights, self.settings.device)
        self.model = self.settings.prepare(model)
        self.calibration = self.info.calibration.to_json()


def run_batched(rows: Sequence[dict[str, Any]], stage: str, load: Callable[[dict[str, Any]], Loaded],
                run: Callable[[list[Loaded]], list[Result]], store: Callable[[dict[str, Any], Result], None],
                cost: Callable[[Loaded], int]) -> None:
    """Process every pending row of a stage call as one batch, keeping errors per row.

    ``load`` reads a row's input and ``store`` writes its result, both under the row's own
    guard; ``run`` computes all inputs at once. If that batch fails, each row is run alone, so
    one bad video never costs the others their scores. Each row's ``t_<stage>_s`` is its own
    load and store time plus its share of the batch, by ``cost`` (e.g. images): the rows'
    times still add up to the stage's busy time.
    """
    timer = f"t_{stage}_s"
    loaded: list[tuple[dict[str, Any], Loaded]] = []
    for row in rows:
        if row["status"] != "pending":
            continue
        with stage_guard(row, stage):
            item = load(row)
            loaded.append((row, item))
    if not loaded:
        return
    started = time.perf_counter()
    try:
        results = run([item for _, item in loaded])
    except Exception as exc:  # noqa: BLE001 - retried per row below, where errors become verdicts
        log.warning("%s: a batch of %d videos failed (%s); retrying one at a time", stage, len(loaded), one_line(exc))
        results = None
    elapsed = time.perf_counter() - started
    weights = [max(cost(item), 1) for _, item in loaded]
    for index, ((row, item), weight) in enumerate(zip(loaded, weights)):
        spent = row[timer] + (elapsed * weight / sum(weights) if results is not None else 0.0)
        with stage_guard(row, stage):
            store(row, results[index] if results is not None else run([item])[0])
        row[timer] += spent


def split(values: np.ndarray, sizes: Sequence[int]) -> Iterator[np.ndarray]:
    """Consecutive slices of ``values`` with the given lengths."""
    start = 0
    for size in sizes:
        yield values[start : start + size]
        start += size
