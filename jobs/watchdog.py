"""A job that stops making progress says so, and what it waits for, instead of hanging silently.

``StallWatchdog`` watches a job's output loop from a thread. When no row has come out for
``warn_after_s`` it prints one line, read from Ray's own state: what Ray cannot schedule (its
pending resource demands), which operators hold queued input (Ray Data's per-operator state, as
the dashboard shows it), and what the job's stages reserve. With ``stop_after_s`` it then stops
the job: the loop gets a ``KeyboardInterrupt``, which the job turns into ``JobStalled`` after
keeping every row already done.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from jobs.runtime import warn
from pipelines.errors import JobFailed
from pipelines.stages import StageSpec

log = logging.getLogger("fakescan.watchdog")
# Each question to Ray gets this long: a busy or broken cluster may not answer at all, and the
# watchdog must still warn and stop on time.
ASK_TIMEOUT_S = 10.0


class JobStalled(JobFailed):
    """No row came out for longer than the job's stall timeout."""


class StallWatchdog:
    def __init__(self, warn_after_s: float, stop_after_s: float | None = None,
                 stages: Sequence[StageSpec] = (), poll_s: float = 1.0) -> None:
        self.warn_after_s, self.stop_after_s, self.poll_s = warn_after_s, stop_after_s, poll_s
        self.stages = list(stages)
        self.last_progress = time.monotonic()
        self.rows = 0
        self.stalled: str | None = None  # set when the watchdog stopped the job: why
        self._warned_at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fakescan-watchdog", daemon=True)
        self._previous_handler: Any = None

    def __enter__(self) -> StallWatchdog:
        self.last_progress = time.monotonic()
        if self.stop_after_s is not None and threading.current_thread() is threading.main_thread():
            # The stop is a SIGINT, which must raise KeyboardInterrupt here: a process started
            # with SIGINT ignored (a child of a shell or test runner that ignores it) inherits that.
            self._previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)

    def progress(self, rows: int) -> None:
        self.rows += rows
        self.last_progress = time.monotonic()
        self._warned_at = None

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            idle = time.monotonic() - self.last_progress
            if self.stop_after_s is not None and idle >= self.stop_after_s:
                self.stalled = (f"no video finished for {idle:.0f} s (--stall-timeout {self.stop_after_s:g}); "
                                f"{self.diagnose()}")
                # A real signal, not _thread.interrupt_main(): the main thread waits on a lock in
                # Ray Data's iterator, and only a signal wakes a blocked wait.
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return
            if idle >= self.warn_after_s and self._warned_at is None:
                self._warned_at = time.monotonic()
                warn(f"no video finished for {idle:.0f} s; {self.diagnose()}")

    def diagnose(self) -> str:
        """What the job waits for, in one line. Each part that Ray cannot tell is left out."""
        import ray

        if not ray.is_initialized():  # asking Ray anything would start a cluster of its own
            return self._reserved() or "Ray is not running in this process"
        names = {getattr(stage.fn, "__name__", stage.name): stage.name for stage in self.stages}
        answers = _ask_all(_pending_demands, lambda: _running_tasks(names), lambda: _operators(names))
        if all(answer is None for answer in answers):
            answers = [f"Ray did not answer within {ASK_TIMEOUT_S:g} s"]
        parts = [part for part in (*answers, self._reserved()) if part]
        return "; ".join(parts) or "Ray reports nothing pending: a stage may be stuck in its own work"

    def _reserved(self) -> str:
        if not self.stages:
            return ""
        shown = []
        for stage in self.stages:
            count = stage.pool.max_actors if stage.is_actor and stage.pool else 1
            gpus = f" + {stage.resources.gpus:g} GPU" if stage.resources.gpus else ""
            shown.append(f"{stage.name} {count}×{stage.resources.cpus:g} CPU{gpus}" if stage.is_actor
                         else f"{stage.name} {stage.resources.cpus:g} CPU{gpus} a task")
        return "the stages reserve: " + ", ".join(shown)


def _ask_all(*questions: Callable[[], str]) -> list[str | None]:
    """Every question's answer, asked at once; None for one that has not answered within
    ``ASK_TIMEOUT_S`` (it is left to finish in its own daemon thread)."""
    answers: list[str | None] = [None] * len(questions)

    def ask(index: int) -> None:
        answers[index] = questions[index]()

    threads = [threading.Thread(target=ask, args=(i,), daemon=True, name="fakescan-watchdog-ask")
               for i in range(len(questions))]
    deadline = time.monotonic() + ASK_TIMEOUT_S
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return list(answers)


def _pending_demands() -> str:
    """Resource requests Ray holds but cannot place, from the autoscaler's view of the cluster."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        demands = [(dict(request.bundle), request.count) for demand in status.resource_demands.ray_task_actor_demand
                   for request in demand.bundles_by_count]
        free = status.available_resources()
        total = status.total_resources()
    except Exception as exc:  # noqa: BLE001 - the watchdog must never take the job down
        log.debug("cannot read the cluster status: %s", exc)
        return ""
    cpus = f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPUs free"
    if not demands:
        return f"Ray has no pending resource demand ({cpus})"
    shown = ", ".join(f"{count}× {_bundle(bundle)}" for bundle, count in demands)
    return f"Ray cannot place {shown} ({cpus})"


def _bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items()) if not k.startswith("node:")) + "}"


def _stage_names(text: str, names: dict[str, str]) -> str:
    """Ray Data's operator and task names in the job's own stage names."""
    for fn_name, stage in names.items():
        text = text.replace(f"MapBatches({fn_name})", stage)
    return text


def _running_tasks(names: dict[str, str], shown: int = 3) -> str:
    """The longest-running tasks of this job: a stage stuck in its own work shows here."""
    try:
        import ray
        from ray.util.state import list_tasks

        job_id = ray.get_runtime_context().get_job_id()
        tasks = list_tasks(filters=[("state", "=", "RUNNING"), ("job_id", "=", job_id)], detail=True, timeout=10)
    except Exception as exc:  # noqa: BLE001 - the watchdog must never take the job down
        log.debug("cannot list the running tasks: %s", exc)
        return ""
    now_ms = time.time() * 1000
    ages = sorted(((now_ms - (t.start_time_ms or now_ms)) / 1000, _stage_names(t.name, names)) for t in tasks)
    ages = [(age, name) for age, name in ages if not name.startswith("_StatsActor")][::-1][:shown]
    return ("running longest: " + ", ".join(f"{name} for {age:.0f} s" for age, name in ages)) if ages else ""


def _operators(names: dict[str, str]) -> str:
    """Ray Data's operators of this job: blocks each has finished of those it will make, and input
    queued before it. The first operator short of its total is where work is stuck."""
    try:
        import ray
        from ray.data._internal.stats import get_or_create_stats_actor  # what Ray's dashboard reads

        job_id = ray.get_runtime_context().get_job_id()
        reply: Any = ray.get(get_or_create_stats_actor().get_datasets.remote(job_id), timeout=10)
        datasets: dict[str, dict[str, Any]] = reply  # ray.get's stubs cannot see an actor method's return type
    except Exception as exc:  # noqa: BLE001 - the watchdog must never take the job down
        log.debug("cannot read Ray Data's operator state: %s", exc)
        return ""
    done, queued = [], []
    for dataset in datasets.values():
        if dataset.get("state") != "RUNNING":
            continue
        for operator in dataset.get("operators", {}).values():
            name = _stage_names(operator.get("name", "?"), names)
            if name == "Input":
                continue
            total = operator.get("total") or 0
            done.append(f"{name} {operator.get('progress', 0)}/{total}" if total > 0 else
                        f"{name} {operator.get('progress', 0)}")
            if operator.get("queued_blocks"):
                queued.append(f"{name} {operator['queued_blocks']}")
    parts = [f"blocks done: {', '.join(done)}" if done else "",
             f"input queued at {', '.join(queued)}" if queued else ""]
    return "; ".join(part for part in parts if part)
