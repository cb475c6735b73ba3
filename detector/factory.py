"""One factory for every detector, in the manner of timm's ``create_model``.

A model argument names a detector in one of three forms, parsed once by
``parse_detector_spec`` into a ``DetectorSpec``:

- a registered config (``list_detectors()``): that architecture with random weights, untrained;
- a safetensors file, as a local path or any fsspec URL (``s3://...``);
- a registry entry, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

``create_detector`` builds the model a spec names and describes it in a ``DetectorInfo``: kind,
name, version, whether it was trained, its config and every stream's calibration. The kind
(hybrid or ensemble) of a file comes from its metadata. Registry entries live in MLflow, which
this package does not import: a job fetches their bytes and passes them as ``weights``.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from detector.calibration import Calibration
from detector.device import resolve_device
from detector.ensemble import ENSEMBLE_CONFIGS, STREAMS, EnsembleConfig, EnsembleDetector, build_ensemble
from detector.hybrid import HYBRID_CONFIGS, HybridConfig, HybridDetector
from detector.pretrained import load_timm_checkpoint
from detector.voting import DetectorCalibration
from detector.weights import load_state, load_weights

REGISTRY_PREFIX = "models:/"
DetectorConfig = HybridConfig | EnsembleConfig


class SpecError(ValueError):
    """A model argument that names no detector, or not one of the kind asked for."""


@dataclass(frozen=True)
class _Family:
    config_type: type[HybridConfig] | type[EnsembleConfig]
    configs: Mapping[str, DetectorConfig]
    build: Callable[..., nn.Module]  # (config, **builder_kwargs) → model with random or published weights
    streams: tuple[str, ...]


def _build_hybrid(config: HybridConfig, backbone_weights: str | None = None,
                  storage_options: dict[str, Any] | None = None) -> nn.Module:
    """The hybrid for ``config``; ``backbone_weights`` loads a published timm checkpoint of its
    backbone (e.g. ImageNet EfficientNet-B0) from a path or URL, and the rest starts at random."""
    model = HybridDetector(config)
    if backbone_weights:
        load_timm_checkpoint(model.backbone, backbone_weights, storage_options)
    return model


_FAMILIES: dict[str, _Family] = {
    "hybrid": _Family(HybridConfig, HYBRID_CONFIGS, _build_hybrid, ("hybrid",)),
    "ensemble": _Family(EnsembleConfig, ENSEMBLE_CONFIGS, build_ensemble, STREAMS),
}
KINDS = tuple(_FAMILIES)


def list_detectors(kind: str | None = None, pattern: str = "*") -> list[str]:
    """Registered config names, of one kind or all, matching a shell-style ``pattern`` (as in
    timm's ``list_models``: ``list_detectors(pattern="*_tiny")`` is what CPU tests build)."""
    return sorted(name for family_kind, family in _FAMILIES.items() if kind in (None, family_kind)
                  for name in family.configs if fnmatch.fnmatchcase(name, pattern))


def _kind_of_config(name: str) -> str | None:
    return next((kind for kind, family in _FAMILIES.items() if name in family.configs), None)


@dataclass(frozen=True)
class DetectorSpec:
    """What a model argument names, parsed once. ``kind`` is None for a file or registry entry
    whose kind its metadata will tell; ``registered`` is the (name, version) of a registry
    entry once a job has resolved it."""

    source: str
    kind: str | None = None
    registered: tuple[str, str] | None = None

    @property
    def is_config(self) -> bool:
        return _kind_of_config(self.source) is not None

    @property
    def is_registry(self) -> bool:
        return self.source.startswith(REGISTRY_PREFIX)

    def registry_ref(self) -> tuple[str, str]:
        """``models:/NAME@ALIAS`` → (NAME, ALIAS); ``models:/NAME/VERSION`` → (NAME, VERSION)."""
        rest = self.source.removeprefix(REGISTRY_PREFIX)
        name, _, ref = rest.partition("@") if "@" in rest else rest.partition("/")
        if not name or not ref:
            raise SpecError(f"not a registry URI: {self.source!r}; use models:/NAME@ALIAS or models:/NAME/VERSION")
        return name, ref

    def resolved(self, name: str, version: str) -> DetectorSpec:
        return replace(self, registered=(name, version))


def parse_detector_spec(text: str, kind: str | None = None) -> DetectorSpec:
    """The one parser for every form of model argument; ``kind`` is what the caller expects."""
    text = text.strip()
    if not text:
        raise SpecError("empty model argument")
    if kind is not None and kind not in _FAMILIES:
        raise SpecError(f"unknown detector kind {kind!r}; choose from {', '.join(KINDS)}")
    config_kind = _kind_of_config(text)
    if config_kind is not None:
        if kind is not None and config_kind != kind:
            raise SpecError(f"{text} configures the {config_kind} detector, not the {kind}; choose from "
                            f"{', '.join(list_detectors(kind))}")
        return DetectorSpec(text, config_kind)
    spec = DetectorSpec(text, kind)
    if spec.is_registry:
        spec.registry_ref()
    elif "/" not in text and "." not in text:
        # Neither a config nor anything that looks like a file: most likely a misspelt config.
        raise SpecError(f"unknown model {text!r}: not a config ({', '.join(list_detectors(kind))}), a .safetensors "
                        "file or a models:/ URI")
    return spec


@dataclass(frozen=True)
class DetectorInfo:
    """What a built detector is, for verdict rows, model cards and ``/v1/models``."""

    kind: str
    name: str
    version: str
    trained: bool
    source: str
    config: DetectorConfig
    calibration: DetectorCalibration  # every stream's; identity for a detector never calibrated

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def describe(self) -> dict[str, Any]:
        return {"detector": self.kind, "name": self.name, "version": self.version, "trained": self.trained,
                "source": self.source, "config": self.config.name,
                "calibration": {name: stream.to_dict() for name, stream in self.calibration.streams.items()}}


def stream_logits(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every stream's logits for ``pixels``: the ensemble gives its three, the hybrid is its own
    one stream."""
    out = model(pixels)
    return out if isinstance(out, dict) else {"hybrid": out}


def weights_metadata(kind: str, config: DetectorConfig, name: str, version: str, source: str, trained: bool = True,
                     **extra: str) -> dict[str, str]:
    """The safetensors metadata that ``create_detector`` reads back (calibration is added by
    ``fakescan calibrate``, which fits it)."""
    return {"detector": kind, "name": name, "version": version, "trained": "true" if trained else "false",
            "source": source, "config": json.dumps(config.to_dict()), **extra}


def _calibration(kind: str, metadata: Mapping[str, str]) -> DetectorCalibration:
    stored = DetectorCalibration.from_metadata(dict(metadata))
    if stored is not None:
        return stored
    if kind == "hybrid":
        # Files from before per-stream calibration carry only a temperature and a bias.
        legacy = Calibration.from_metadata(dict(metadata))
        return DetectorCalibration.from_temperature("hybrid", "hybrid", legacy.temperature, legacy.bias,
                                                    legacy.fitted_on)
    return DetectorCalibration.uncalibrated(kind, _FAMILIES[kind].streams)


def _check_finetune(kind: str, finetune: str | None) -> None:
    if finetune is not None and kind != "ensemble":
        raise SpecError(f"finetune={finetune!r} applies to the ensemble's backbone; a {kind} detector has no "
                        "finetune modes")


def create_detector(spec: DetectorSpec | str, *, weights: bytes | None = None, device: str | None = None,
                    storage_options: dict[str, Any] | None = None, **builder_kwargs: Any
                    ) -> tuple[nn.Module, DetectorInfo]:
    """Build the detector ``spec`` names, in eval mode on ``device``, and describe it.

    ``weights`` are the safetensors bytes when the caller already holds them (a registry entry,
    or a file read once for many actors). A file's stored config and calibration win over the
    spec. ``builder_kwargs`` go to the family's builder, e.g. the ensemble's ``dinov2_weights``
    and ``clip_weights``, or ``finetune`` to set what of the backbone trains."""
    spec = parse_detector_spec(spec) if isinstance(spec, str) else spec
    device = resolve_device(device)
    finetune = builder_kwargs.pop("finetune", None)
    if weights is None and spec.is_config:
        _check_finetune(spec.kind or "hybrid", finetune)
        family = _FAMILIES[spec.kind or "hybrid"]
        config = family.configs[spec.source]
        if finetune is not None:
            config = replace(config, finetune=finetune)
        model = family.build(config, **builder_kwargs)
        pretrained = [str(v) for k, v in builder_kwargs.items() if k.endswith("_weights") and v]
        source = "+".join(pretrained) or "random-init"
        info = DetectorInfo(spec.kind or "hybrid", config.name, "random-init", False, source, config,
                            _calibration(spec.kind or "hybrid", {}))
        return model.to(device).eval(), info
    if weights is None and spec.is_registry:
        raise SpecError(f"{spec.source} is a registry entry: fetch its weights first and pass them")
    state, metadata = load_weights(weights if weights is not None else spec.source, storage_options)
    kind = metadata.get("detector", "hybrid")
    if kind not in _FAMILIES:
        raise SpecError(f"{spec.source} holds an unknown detector kind {kind!r}")
    if spec.kind is not None and kind != spec.kind:
        raise SpecError(f"{spec.source} holds {kind} weights, not {spec.kind} weights")
    _check_finetune(kind, finetune)
    family = _FAMILIES[kind]
    if "config" in metadata:
        config = family.config_type.from_dict(json.loads(metadata["config"]))
    elif kind == "hybrid":
        config = HYBRID_CONFIGS["hybrid_b0"]  # files from before configs were stored
    else:
        raise SpecError(f"{spec.source} has no stored config")
    model = family.build(config)
    load_state(model, state, source=f"{spec.source} ({config.name})")
    if finetune is not None and isinstance(model, EnsembleDetector):
        model.set_finetune(finetune)
    name, version = spec.registered or (metadata.get("name", config.name), metadata.get("version", "unversioned"))
    info = DetectorInfo(kind, name, version, metadata.get("trained", "false") == "true", spec.source, config,
                        _calibration(kind, metadata))
    return model.to(device).eval(), info
