"""Model arguments as jobs take them: parsed, fetched once, checked before any work starts.

Every job that takes a ``--model`` (scan, serve, evaluate, calibrate) resolves it here: a
registry entry is fetched from MLflow once and a file is read once, so that actors receive
the bytes through Ray's object store and never need the registry or the bucket themselves;
the model is built once, so that a bad argument fails in one line before Ray starts.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from detector.factory import SpecError, create_detector, parse_detector_spec
from detector.weights import read_bytes
from jobs import tracking
from jobs.runtime import warn
from pipelines.errors import ModelError, OptionError
from pipelines.sources import storage_options_for
from pipelines.stages import ResolvedDetector

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "detector" / "weights"
STARTERS = {"hybrid": WEIGHTS_DIR / "hybrid_starter.safetensors",
            "ensemble": WEIGHTS_DIR / "ensemble_starter.safetensors"}


def starter_model(kind: str) -> str | None:
    """The bundled starter weights of ``kind``, when installed."""
    path = STARTERS[kind]
    return str(path) if path.exists() else None


def resolve_detector(text: str, kind: str | None = None, tracking_uri: str | None = None,
                     s3_endpoint: str | None = None) -> ResolvedDetector:
    """``text`` (a config, a weights path or URL, or ``models:/...``) as a built-and-checked detector
    whose weights' bytes the job holds."""
    try:
        spec = parse_detector_spec(text, kind)
        weights = None
        if spec.is_registry:
            found = tracking.fetch_registered_weights(spec.source, tracking_uri)
            spec, weights = spec.resolved(found.name, found.version), found.data
        elif not spec.is_config:
            weights = read_bytes(spec.source, storage_options_for(spec.source, s3_endpoint))
        _, info = create_detector(spec, weights=weights, device="cpu")
    except tracking.RegistryError:
        raise
    except (SpecError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the {f'{kind} ' if kind else ''}model {text}: {exc}") from None
    return ResolvedDetector(spec, info, weights)


def warn_if_untrained(detector: ResolvedDetector, consequence: str) -> None:
    if not detector.info.trained:
        warn(f"{detector.info.kind} model {detector.info.name} has no trained weights; {consequence}")


def put_weights(detectors: dict[str, ResolvedDetector]) -> dict[str, ResolvedDetector]:
    """The same detectors with their weights in Ray's object store: actors get a small object
    ref as a constructor argument, and each node fetches the bytes once."""
    import ray

    return {kind: replace(d, weights=ray.put(d.weights)) if isinstance(d.weights, bytes) else d
            for kind, d in detectors.items()}


def resolve_detectors(model: str | None, ensemble_model: str | None, detectors: tuple[str, ...] | None,
                      tracking_uri: str | None = None, s3_endpoint: str | None = None
                      ) -> dict[str, ResolvedDetector]:
    """The detectors a scan (or the server) runs, by kind. ``None`` models are the bundled
    starters; ``None`` detectors is every detector that has a model (the hybrid always: a
    config stands in for a missing starter)."""
    models = {"hybrid": model or starter_model("hybrid") or "hybrid_b0",
              "ensemble": ensemble_model or starter_model("ensemble")}
    chosen = detectors or tuple(kind for kind, text in models.items() if text)
    unknown = sorted(set(chosen) - set(models))
    if unknown:
        raise OptionError(f"unknown detector {unknown[0]!r}; choose from {', '.join(models)}")
    if "ensemble" in chosen and not models["ensemble"]:
        raise OptionError("the ensemble needs a model: pass --ensemble-model (no starter ensemble is installed)")
    resolved = {}
    for kind in models:  # in pipeline order, whatever the order asked for
        if kind in chosen:
            resolved[kind] = resolve_detector(models[kind] or "", kind, tracking_uri, s3_endpoint)
            warn_if_untrained(resolved[kind], "it does not vote, and without a trained detector every verdict is "
                                              "'uncertain' with no p_fake")
    return resolved
