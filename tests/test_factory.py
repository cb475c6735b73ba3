"""The detector factory: one parser for every model argument, and the same contract for every
registered config (in the manner of timm's tests over ``list_models()``)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from detector.factory import (
    DetectorSpec,
    SpecError,
    create_detector,
    list_detectors,
    parse_detector_spec,
    stream_logits,
    weights_metadata,
)
from detector.voting import DetectorCalibration, StreamCalibration
from detector.weights import save_weights

TINY = list_detectors(pattern="*_tiny")


def test_every_kind_has_a_tiny_config_for_cpu_tests():
    assert {parse_detector_spec(name).kind for name in TINY} == {"hybrid", "ensemble"}
    assert set(list_detectors()) == set(list_detectors("hybrid")) | set(list_detectors("ensemble"))


@pytest.mark.parametrize("name", TINY)
def test_forward_gives_one_logit_per_stream_and_backward_reaches_every_trainable_parameter(name):
    torch.manual_seed(0)
    model, info = create_detector(name)
    assert not info.trained and info.version == "random-init" and info.kind == parse_detector_spec(name).kind
    assert set(info.calibration.streams) == set(stream_logits(model, torch.rand(1, 3, 64, 64)))
    model.train()
    pixels = torch.rand(3, 3, info.img_size, info.img_size)
    logits = stream_logits(model, pixels)
    assert all(v.shape == (3,) for v in logits.values())
    loss = sum(v.sum() for v in logits.values())
    if getattr(model, "boundary", None) is not None:  # a boundary head trains on its own output, beside the logit
        loss = loss + model(pixels, with_boundary=True)[1].sum()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]


@pytest.mark.parametrize("name", TINY)
def test_weights_round_trip_with_config_and_calibration(name, tmp_path):
    torch.manual_seed(0)
    model, info = create_detector(name)
    calibration = DetectorCalibration(info.kind, {s: StreamCalibration(s, temperature=2.0, weight=2)
                                                  for s in info.calibration.streams})
    path = tmp_path / "w.safetensors"
    save_weights(model, path, weights_metadata(info.kind, info.config, "fakescan-x", "7", "test")
                 | calibration.to_metadata())
    loaded, loaded_info = create_detector(DetectorSpec(str(path), info.kind), weights=path.read_bytes())
    x = torch.rand(2, 3, info.img_size, info.img_size)
    with torch.no_grad():
        expected, actual = stream_logits(model.eval(), x), stream_logits(loaded, x)
    assert all(torch.allclose(expected[s], actual[s], atol=1e-5) for s in expected)
    assert (loaded_info.name, loaded_info.version, loaded_info.trained) == ("fakescan-x", "7", True)
    assert loaded_info.config == info.config and loaded_info.calibration == calibration
    assert loaded_info.source == str(path)


@pytest.mark.parametrize("name", TINY)
def test_fp16_weights_load_close_to_fp32(name, tmp_path):
    model, info = create_detector(name)
    path = tmp_path / "w16.safetensors"
    save_weights(model, path, weights_metadata(info.kind, info.config, "x", "1", "test"), dtype=torch.float16)
    loaded, _ = create_detector(str(path))
    x = torch.rand(2, 3, info.img_size, info.img_size)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=5e-2) for a, b in zip(stream_logits(model, x).values(),
                                                                    stream_logits(loaded, x).values()))


def test_weights_of_one_kind_are_refused_as_the_other(tmp_path):
    model, info = create_detector("hybrid_tiny")
    path = tmp_path / "hybrid.safetensors"
    save_weights(model, path, weights_metadata("hybrid", info.config, "x", "1", "test"))
    with pytest.raises(SpecError, match="holds hybrid weights, not ensemble weights"):
        create_detector(parse_detector_spec(str(path), "ensemble"))


def test_weights_that_do_not_fit_their_stored_config_are_refused(tmp_path):
    model, info = create_detector("hybrid_tiny")
    path = tmp_path / "tiny.safetensors"
    wider = replace(info.config, embed_dim=48)
    save_weights(model, path, weights_metadata("hybrid", wider, "x", "1", "test"))
    with pytest.raises(ValueError, match=r"does not fit.*wrong shape.*cls_token"):
        create_detector(str(path))


def test_old_hybrid_files_without_a_kind_or_calibration_json_still_load(tmp_path):
    model, info = create_detector("hybrid_tiny")
    path = tmp_path / "old.safetensors"
    save_weights(model, path, {"config": json.dumps(info.config.to_dict()), "trained": "true",
                               "calibration_temperature": "2.5", "calibration_bias": "-0.5",
                               "calibration_samples": "9"})
    _, loaded = create_detector(str(path))
    stream = loaded.calibration.streams["hybrid"]
    assert loaded.kind == "hybrid" and (stream.temperature, stream.bias, stream.fitted_on) == (2.5, -0.5, 9)


@pytest.mark.parametrize("text, kind, expected", [
    ("hybrid_tiny", None, DetectorSpec("hybrid_tiny", "hybrid")),
    ("ensemble_giant", "ensemble", DetectorSpec("ensemble_giant", "ensemble")),
    ("runs/model/weights.safetensors", "hybrid", DetectorSpec("runs/model/weights.safetensors", "hybrid")),
    ("s3://models/ens.safetensors", None, DetectorSpec("s3://models/ens.safetensors")),
    ("models:/fakescan-hybrid@champion", "hybrid", DetectorSpec("models:/fakescan-hybrid@champion", "hybrid")),
])
def test_one_parser_for_every_form_of_model_argument(text, kind, expected):
    assert parse_detector_spec(text, kind) == expected


@pytest.mark.parametrize("text, kind, message", [
    ("ensemble_tiny", "hybrid", "configures the ensemble detector, not the hybrid"),
    ("hybrid_b1", None, "unknown model 'hybrid_b1'"),
    ("models:/fakescan-hybrid", None, "not a registry URI"),
    ("", None, "empty model argument"),
])
def test_arguments_that_name_no_detector_fail_in_one_line(text, kind, message):
    with pytest.raises(SpecError, match=message) as error:
        parse_detector_spec(text, kind)
    assert "\n" not in str(error.value)


def test_registry_refs_and_a_resolved_entry_keep_the_registry_name_and_version(tmp_path):
    spec = parse_detector_spec("models:/fakescan-hybrid/3")
    assert spec.registry_ref() == ("fakescan-hybrid", "3")
    with pytest.raises(SpecError, match="fetch its weights first"):
        create_detector(spec)
    model, info = create_detector("hybrid_tiny")
    path = tmp_path / "w.safetensors"
    save_weights(model, path, weights_metadata("hybrid", info.config, "local-name", "local-version", "test"))
    _, resolved = create_detector(spec.resolved("fakescan-hybrid", "3"), weights=path.read_bytes())
    assert (resolved.name, resolved.version, resolved.source) == ("fakescan-hybrid", "3", "models:/fakescan-hybrid/3")
