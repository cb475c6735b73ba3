"""From per-stream logits to one label: calibrate, band, vote.

Each stream of a detector (``texture``, ``facial`` and ``fusion`` for the ensemble, ``hybrid``
for the hybrid detector) gives a raw logit per face. The chain is:

    logit → p = sigmoid(logit / T + bias)      (fitted on validation, ``fit_calibration``)
          → band: high / uncertain / low / n/a  (thresholds fitted on validation)
          → vote: low = 0, uncertain = 1, high = 2, n/a abstains
          → weighted by reliability on validation (trusted = 2, normal = 1, ignored = 0)
          → label: fake / real / uncertain / no_face

Everything fitted is stored as a ``DetectorCalibration``, whose JSON fits in the string
metadata of a safetensors file next to the weights it belongs to.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from detector.calibration import fit_calibration, sigmoid
from detector.metrics import expected_calibration_error, roc_auc

BANDS = ("high", "uncertain", "low", "n/a")
VOTE_OF_BAND = {"low": 0, "uncertain": 1, "high": 2}
METADATA_KEY = "calibration"


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN; a metric that could not be measured is stored as null.
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class StreamCalibration:
    """One stream's calibration, bands and reliability, as fitted on a validation set."""

    name: str
    temperature: float = 1.0
    bias: float = 0.0
    low: float = 0.3  # p <= low is band "low"
    high: float = 0.7  # p >= high is band "high"
    weight: int = 1  # 2 trusted, 1 normal, 0 ignored
    auc: float | None = None
    ece: float | None = None
    fitted_on: int = 0  # validation samples; 0 = identity, never fitted

    def probability(self, logits: np.ndarray | float) -> np.ndarray:
        """Calibrated p_fake = sigmoid(logit / temperature + bias), float64."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature + self.bias)

    def band(self, p: float | None) -> str:
        if p is None or math.isnan(p):
            return "n/a"
        if p >= self.high:
            return "high"
        if p <= self.low:
            return "low"
        return "uncertain"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["auc"], out["ece"] = _finite_or_none(self.auc), _finite_or_none(self.ece)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> StreamCalibration:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown stream calibration fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def weight_from_auc(auc: float, trusted: float = 0.85, ignored: float = 0.6) -> int:
    """2 (trusted) for AUC >= ``trusted``, 0 (ignored) below ``ignored`` or unmeasured (NaN),
    1 (normal) otherwise."""
    if math.isnan(auc) or auc < ignored:
        return 0
    return 2 if auc >= trusted else 1


def _allowed_errors(target_error: float, n: int) -> int:
    # The epsilon keeps 0.57 * 100 = 56.999… at 57: the product is meant as an exact count.
    return math.floor(target_error * n + 1e-9)


def _high_threshold(p_real: np.ndarray, target_error: float) -> float:
    allowed = _allowed_errors(target_error, len(p_real))  # reals allowed at p >= high
    if allowed >= len(p_real):
        return 0.5
    descending = np.sort(p_real)[::-1]
    # Just above the (allowed + 1)-th largest real: exactly ``allowed`` of them (or fewer, on ties) reach it.
    return float(np.clip(np.nextafter(descending[allowed], np.inf), 0.5, 0.99))


def _low_threshold(p_fake: np.ndarray, target_error: float) -> float:
    allowed = _allowed_errors(target_error, len(p_fake))  # fakes allowed at p <= low
    if allowed >= len(p_fake):
        return 0.5
    ascending = np.sort(p_fake)
    return float(np.clip(np.nextafter(ascending[allowed], -np.inf), 0.01, 0.5))


def fit_stream(name: str, logits: np.ndarray, labels: np.ndarray, target_error: float = 0.1,
               n_bins: int = 10) -> StreamCalibration:
    """Fit one stream on validation ``logits`` and ``labels`` (1 = fake).

    Temperature and bias by NLL (``fit_calibration``); AUC, weight and ECE of the calibrated
    probabilities. Band thresholds, from the same validation set:

    * ``high`` is the smallest threshold >= 0.5 such that at most ``target_error`` of the real
      samples have p >= high: just above the (⌊target_error·n_real⌋ + 1)-th largest real
      probability, i.e. the empirical (1 − target_error) quantile of the reals;
    * ``low`` is the largest threshold <= 0.5 such that at most ``target_error`` of the fake
      samples have p <= low: just below the (⌊target_error·n_fake⌋ + 1)-th smallest fake
      probability, i.e. the empirical target_error quantile of the fakes.

    ``high`` is then clamped to [0.5, 0.99] and ``low`` to [0.01, 0.5], the clamps winning over
    the target: both bands stay reachable by a calibrated score, and "high" never means "more
    likely real than fake". On separable data both end at 0.5, leaving no uncertain band.
    """
    if not 0.0 <= target_error < 1.0:
        raise ValueError("target_error must lie in [0, 1)")
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    fitted = fit_calibration(logits, labels.astype(np.float64))
    stream = StreamCalibration(name, fitted.temperature, fitted.bias, fitted_on=fitted.fitted_on)
    p = stream.probability(logits)
    auc = roc_auc(labels, p)
    return replace(stream, low=_low_threshold(p[labels], target_error),
                   high=_high_threshold(p[~labels], target_error), weight=weight_from_auc(auc),
                   auc=auc, ece=expected_calibration_error(p, labels, n_bins))


@dataclass(frozen=True)
class Vote:
    label: str  # "fake" | "real" | "uncertain" | "no_face"
    fake_weight: float
    real_weight: float
    total_weight: float
    votes: dict[str, int | None]  # per stream 0 / 1 / 2, None for n/a


def _label(fake_weight: float, real_weight: float, total_weight: float) -> str:
    if 2 * fake_weight > total_weight:
        return "fake"
    if 2 * real_weight > total_weight:
        return "real"
    return "uncertain"


def weighted_vote(bands: dict[str, str], weights: dict[str, int]) -> Vote:
    """Weighted majority over the streams' bands.

    A stream abstains when its band is "n/a" or its weight is 0. Every other stream adds its
    weight to the total, and to the fake side (band high) or the real side (band low). The
    label is "fake" or "real" when that side holds more than half of the total: an uncertain
    vote counts in the total but on neither side, so it counts against both. When every
    stream abstains the label is "no_face" if no stream saw a face (all n/a) and "uncertain"
    otherwise (a face was seen, but only by streams that are ignored).
    """
    if not bands:
        raise ValueError("no streams to vote")
    votes: dict[str, int | None] = {}
    fake = real = total = 0.0
    for name, band in bands.items():
        if band not in BANDS:
            raise ValueError(f"unknown band {band!r} for stream {name!r}; choose from {', '.join(BANDS)}")
        if name not in weights:
            raise KeyError(f"no weight for stream {name!r}")
        weight = weights[name]
        if weight < 0:
            raise ValueError(f"negative weight {weight} for stream {name!r}")
        vote = VOTE_OF_BAND.get(band)
        votes[name] = vote
        if vote is None or weight == 0:
            continue
        total += weight
        fake += weight if vote == 2 else 0
        real += weight if vote == 0 else 0
    if total == 0 and all(v is None for v in votes.values()):
        label = "no_face"
    else:
        label = _label(fake, real, total)
    return Vote(label, fake, real, total, votes)


def combined_probability(probabilities: Mapping[str, float | None], weights: dict[str, int]) -> float | None:
    """Reliability-weighted mean of the streams' calibrated probabilities; None (or NaN) ones
    are left out. None when nothing is left; the plain mean when every weight left is 0."""
    present = {n: p for n, p in probabilities.items() if p is not None and not math.isnan(p)}
    if not present:
        return None
    w = np.array([weights[n] for n in present], dtype=np.float64)
    p = np.array(list(present.values()), dtype=np.float64)
    if w.sum() == 0:
        return float(p.mean())
    return float((w * p).sum() / w.sum())


@dataclass(frozen=True)
class DetectorCalibration:
    """Every stream's calibration for one detector, stored beside its weights."""

    detector: str
    streams: dict[str, StreamCalibration]

    def __post_init__(self) -> None:
        mismatched = [key for key, stream in self.streams.items() if key != stream.name]
        if mismatched:
            raise ValueError(f"streams keyed under another name: {', '.join(mismatched)}")

    @property
    def weights(self) -> dict[str, int]:
        return {name: stream.weight for name, stream in self.streams.items()}

    @classmethod
    def uncalibrated(cls, detector: str, stream_names: list[str] | tuple[str, ...]) -> DetectorCalibration:
        """Identity calibration: p = sigmoid(logit), bands 0.3 / 0.7, every stream weight 1."""
        return cls(detector, {name: StreamCalibration(name) for name in stream_names})

    @classmethod
    def from_temperature(cls, detector: str, stream: str, temperature: float, bias: float,
                         fitted_on: int = 0) -> DetectorCalibration:
        """A one-stream detector calibrated by temperature and bias only: default bands, weight 1."""
        return cls(detector, {stream: StreamCalibration(stream, temperature, bias, fitted_on=fitted_on)})

    def to_json(self) -> str:
        payload = {"detector": self.detector,
                   "streams": {name: stream.to_dict() for name, stream in self.streams.items()}}
        return json.dumps(payload, sort_keys=True, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> DetectorCalibration:
        payload = json.loads(text)
        return cls(payload["detector"],
                   {name: StreamCalibration.from_dict(data) for name, data in payload["streams"].items()})

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.to_json()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> DetectorCalibration | None:
        """The calibration stored in safetensors metadata, or None if there is none."""
        if METADATA_KEY not in metadata:
            return None
        return cls.from_json(metadata[METADATA_KEY])
