"""MLflow: where training jobs record runs and register models, and where scans find them.

Tracking defaults to an embedded sqlite store under the job's output folder; any MLflow
server works through ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``. Models are logged
as a pyfunc whose weights are a safetensors artifact: the scan reads that file and never
unpickles anything from the registry.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.factory import DetectorSpec, SpecError
from pipelines.errors import UsageError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PYFUNC_CODE = Path(__file__).with_name("detector_pyfunc.py")
WEIGHTS_ARTIFACT = "weights.safetensors"


class RegistryError(UsageError):
    """A registry URI that cannot be resolved; the message is for the user."""


@dataclass(frozen=True)
class RegisteredWeights:
    data: bytes
    name: str
    version: str


def default_tracking_uri(out: str | Path) -> str:
    return f"sqlite:///{Path(out).absolute() / 'mlflow.db'}"


def tracking_uri_or_default(uri: str | None, out: str | Path) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(out)


@contextmanager
def tracking_at(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``tracking_uri`` for the block only: ``set_tracking_uri``
    also exports MLFLOW_TRACKING_URI, which every later job of this process (and its children)
    would otherwise inherit."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # mlflow unsets on None; its stub says str


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str | Path) -> str:
    """The experiment's id, creating it with an explicit artifact location (sqlite has no default)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = str(artifact_root)
    if "://" not in location:
        location = Path(location).absolute().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_or_resume_run(tracking_uri: str, experiment_id: str, run_name: str, params: dict[str, Any]) -> str:
    """One MLflow run per training job: reuse the unfinished run of the same name, or start one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    existing = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}' "
                                  "and attributes.status != 'FINISHED'", max_results=1)
    if existing:
        return existing[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={"fakescan.job": "train"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def start_run(tracking_uri: str, experiment_id: str, run_name: str, params: dict[str, Any]) -> str:
    """A new run for a short job (calibrate, evaluate): it is not resumed, only repeated."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, run_name=run_name, tags={"fakescan.job": run_name.split("-")[0]})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_files(tracking_uri: str, run_id: str, files: list[Path], metrics: dict[str, float]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path))
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)


def finish_run(tracking_uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status="FINISHED")


def log_and_register_model(tracking_uri: str, run_id: str, weights_path: Path, model_card: str,
                           register_as: str, alias: str | None, tags: dict[str, str]) -> str:
    """Log the weights as a pyfunc model of ``run_id`` and register a new version; returns it."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, 3), "crops")]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1,), "p_fake")]))
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "MODEL_CARD.md"
        card.write_text(model_card)
        with tracking_at(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC_CODE), signature=signature,
                artifacts={"weights": str(weights_path), "model_card": str(card)},
                registered_model_name=register_as, pip_requirements=["fakescan"],
            )
    client = MlflowClient(tracking_uri)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(register_as, version, key, value)
    if alias:
        client.set_registered_model_alias(register_as, alias, version)
    return version


def fetch_registered_weights(uri: str, tracking_uri: str | None) -> RegisteredWeights:
    """The safetensors bytes of a registered model version, with its name and version."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise RegistryError(f"{uri} needs a tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    try:
        name, ref = DetectorSpec(uri).registry_ref()
    except SpecError as exc:
        raise RegistryError(str(exc)) from None
    client = MlflowClient(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, ref) if "@" in uri else client.get_model_version(name, ref)
        # models:/ artifact URIs resolve through the global registry URI, whatever is passed.
        with tempfile.TemporaryDirectory() as tmp, tracking_at(tracking_uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=tmp)
            weights = next(Path(local).rglob(WEIGHTS_ARTIFACT), None)
            if weights is None:
                raise RegistryError(f"{uri} (version {version.version}) has no {WEIGHTS_ARTIFACT} artifact")
            data = weights.read_bytes()
    except MlflowException as exc:
        raise RegistryError(f"cannot load {uri} from {tracking_uri}: {' '.join(str(exc).split())[:300]}") from None
    return RegisteredWeights(data, name, str(version.version))
