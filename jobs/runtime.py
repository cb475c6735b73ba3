"""What every job does around its work: start or join Ray, check destinations, warn the user.

A laptop or CI run starts its own Ray cluster; with ``RAY_ADDRESS`` set (by the user, or by
``ray job submit``) every job attaches to that cluster instead.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any

from pipelines.errors import SourceError
from pipelines.sources import filesystem_for

log = logging.getLogger("fakescan")


class _UserLines(logging.StreamHandler):
    """``fakescan: warning: ...``, one line on the current stderr per record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # the stderr of the moment: pytest and tools swap it
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        return f"fakescan: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def warn(message: str) -> None:
    """A warning for the person running the job, as one line on stderr."""
    if not any(isinstance(h, _UserLines) for h in log.handlers):
        log.addHandler(_UserLines())
        log.propagate = False
    log.warning(message)


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": env} if env else None)


def quiet_ray_data() -> None:
    """The job shows its own progress; Ray Data's per-operator bars and INFO lines would bury
    it. Ray Data's logs stay in the session folder."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def cluster_resources() -> tuple[float, float]:
    """The CPUs and GPUs of the cluster this process is attached to."""
    import ray

    resources = ray.cluster_resources()
    return resources.get("CPU", 1.0), resources.get("GPU", 0.0)


def pool_size(cluster_cpus: float, cpus_per_actor: float, share: float) -> int:
    """Actors of ``cpus_per_actor`` that fit in ``share`` of the cluster's CPUs; at least one."""
    return max(1, int(cluster_cpus * share / cpus_per_actor))


def check_destination(out: str, storage_options: dict[str, Any]) -> None:
    """Fail early, with one line, when the destination cannot be written."""
    fs = filesystem_for(out, storage_options)
    root = out.removeprefix("file://").rstrip("/")
    probe = f"{root}/.fakescan-write-test-{uuid.uuid4().hex[:8]}"
    try:
        if out.startswith("s3://"):
            bucket = root[len("s3://"):].split("/", 1)[0]
            if not fs.exists(bucket):
                raise SourceError(f"destination bucket not found: s3://{bucket}")
        else:
            os.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except SourceError:
        raise
    except Exception as exc:  # any failure here means "cannot write"
        raise SourceError(f"cannot write to destination {out}: {exc}") from exc
