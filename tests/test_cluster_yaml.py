"""cluster.yaml passes Ray's own cluster-launcher checks and keeps the facts its users rely on.

Ray validates the way ``ray up`` does (``prepare_config`` merges the AWS defaults, then
``validate_config`` checks the result against ``ray/autoscaler/ray-schema.json``), with no
AWS call: every node type declares its ``resources``. No Ray cluster is started.
"""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def setup_commands(config: dict[str, Any]) -> str:
    return "\n".join(config["setup_commands"])


def test_ray_accepts_the_config(config: dict[str, Any]) -> None:
    prepared = ray_validate(config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_setup_commands"] == config["setup_commands"]  # no inherited defaults


@pytest.mark.parametrize("breakage", ["misspelled top-level key", "GPU count as a string"])
def test_ray_rejects_a_broken_config(config: dict[str, Any], breakage: str) -> None:
    broken = copy.deepcopy(config)
    if breakage == "misspelled top-level key":
        broken["idle_timeout_minute"] = broken.pop("idle_timeout_minutes")
    else:
        broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "8"
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)


def test_head_takes_no_work(config: dict[str, Any]) -> None:
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head.get("max_workers", 0) == 0


def test_one_cpu_worker_type_and_one_gpu_worker_type(config: dict[str, Any]) -> None:
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert len(workers) == 2
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert len(gpu) == len(cpu) == 1
    assert re.match(r"(p\d|g\d)", gpu[0]["node_config"]["InstanceType"])
    assert cpu[0]["resources"]["CPU"] > 0


def test_worker_bounds_fit_the_cluster_max(config: dict[str, Any]) -> None:
    types = config["available_node_types"].values()
    for t in types:
        assert 0 <= t.get("min_workers", 0) <= t.get("max_workers", 0) <= config["max_workers"]
    assert sum(t.get("max_workers", 0) for t in types) == config["max_workers"]


def test_setup_installs_the_mounted_checkout(config: dict[str, Any]) -> None:
    assert config["file_mounts"] == {"~/fakescan": "."}
    assert "pip install -q -e ~/fakescan" in setup_commands(config)


def test_setup_installs_facenet_without_deps(config: dict[str, Any]) -> None:
    assert re.search(r"pip install .*--no-deps facenet-pytorch==2\.6\.0", setup_commands(config))


def test_setup_pins_match_pyproject(config: dict[str, Any]) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {re.split(r"[\[=]", d)[0]: d.split("==")[1] for d in deps if "==" in d}
    pins = {name: pins[name] for name in ("torch", "torchvision", "ray")}
    commands = setup_commands(config)
    for name, version in pins.items():
        assert re.search(rf'"{name}(\[[a-z,]+\])?=={re.escape(version)}"', commands), name
