"""Pytest plugin: a real multi-node Ray cluster on 127.0.0.1.

Every node is its own ``ray start --block`` child process with its own ``--temp-dir`` and
``--node-name``: the state API tells the nodes apart by name, and a node's processes (its
raylet, agents and workers) are the ``ray start`` process tree plus whatever logs under its
temp dir, so one node can be killed on its own, as a machine dies. Logical CPUs may exceed
the physical cores: they only size the pools.

Fixture (module-scoped, so the tests of one file share a cluster):
  ray_nodes   factory: ``ray_nodes({"worker-1": 2, "worker-2": 2})`` starts a head with the
              dashboard, job server and state API (0 CPUs: it only schedules and hosts
              drivers) plus one worker node per entry with that many CPUs and a custom
              resource named after it, and waits until every node is alive. Everything it
              started is torn down when the module's tests are done, even on failure.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 240  # a loaded 2-core CI runner can take minutes to bring up a head and its dashboard
STOP_GRACE_S = 15  # after SIGTERM, before SIGKILL
OBJECT_STORE_BYTES = 300 * 1024 * 1024  # the default, 30% of RAM per node, is far beyond what tests move


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logs_under(proc: psutil.Process, folder: str) -> bool:
    """Whether ``proc``'s stdout or stderr is a file under ``folder``: Ray points every process of
    a node at log files in that node's temp dir."""
    try:
        return any(os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith(folder) for fd in (1, 2))
    except OSError:
        return False


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def send(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue


def eventually(check: Callable[[], bool], timeout: float = 30) -> bool:
    """Whether ``check`` comes true within ``timeout``: task events and node deaths reach the state
    API some seconds after the fact."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


@dataclass
class RayNode:
    """One ``ray start --block`` process and everything it spawned."""

    name: str
    num_cpus: int
    temp_dir: Path
    process: subprocess.Popen

    def start_log(self) -> str:
        return (self.temp_dir / "ray-start.log").read_text()

    def processes(self) -> list[psutil.Process]:
        """This node's live processes: the ``ray start`` tree, plus any process logging under its
        temp dir (a worker whose raylet died is re-parented to init but still logs there)."""
        found: dict[int, psutil.Process] = {}
        if self.process.poll() is None:  # once reaped, its pid may belong to someone else
            try:
                root = psutil.Process(self.process.pid)
                found = {p.pid: p for p in [root, *root.children(recursive=True)]}
            except psutil.NoSuchProcess:
                pass
        folder = f"{self.temp_dir}{os.sep}"
        for proc in psutil.process_iter():
            if proc.pid not in found and logs_under(proc, folder):
                found[proc.pid] = proc
        return [p for p in found.values() if running(p)]

    def worker_titles(self) -> list[str]:
        """Titles of this node's Ray worker processes, e.g. ``ray::MapWorker(MapBatches(CropFaces))``."""
        titles = []
        for proc in self.processes():
            try:
                title = " ".join(proc.cmdline()).strip()
            except psutil.Error:
                continue
            if title.startswith("ray::"):
                titles.append(title)
        return titles

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL every process of this node: nothing gets to clean up or say goodbye."""
        procs = self.processes()
        send(procs, signal.SIGSTOP)  # freeze them all first, so that none reacts to another's death
        send(procs, signal.SIGKILL)
        self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.processes():
            assert time.monotonic() < deadline, f"node {self.name} still has processes {timeout:.0f}s after SIGKILL"
            time.sleep(0.2)


def stop_nodes(nodes: Iterable[RayNode]) -> None:
    """What ``ray stop`` does, for these nodes only (``ray stop`` itself would stop every cluster on
    the machine): SIGTERM all their processes at once, then SIGKILL what outlives the grace period.
    (``ray start --block`` alone stops its processes one by one, which takes half a minute.) The
    ``ray start`` wrappers themselves linger for many seconds once their daemons are gone: they
    hold nothing by then, so they are not waited for."""
    nodes = list(nodes)
    for node in nodes:
        send(node.processes(), signal.SIGTERM)

    def daemons_left() -> bool:
        return any(p.pid != node.process.pid for node in nodes for p in node.processes())

    deadline = time.monotonic() + STOP_GRACE_S
    while daemons_left() and time.monotonic() < deadline:
        time.sleep(0.3)
    for node in nodes:
        if node.processes():
            node.kill()
        node.process.wait()


@contextmanager
def no_session_ray_address() -> Iterator[None]:
    """Ray's state API connects to the GCS named by RAY_ADDRESS, whatever ``address`` it is given:
    hide the session cluster's (tests/conftest.py's ray_cluster) while asking this cluster."""
    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def launch_node(name: str, num_cpus: int, temp_dir: Path, args: list[str]) -> RayNode:
    # A session-wide RAY_ADDRESS (tests/conftest.py's ray_cluster) must not leak into this cluster's drivers.
    # No drain on SIGTERM: it lets Serve move replicas off a node (none here) and holds a stop for 30 s.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    with (temp_dir / "ray-start.log").open("w") as log:
        process = subprocess.Popen(
            [RAY, "start", "--block", "--node-name", name, "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(OBJECT_STORE_BYTES),
             "--disable-usage-stats", "--temp-dir", str(temp_dir),
             # Several nodes share this host, and other clusters may run on it too: no fixed default ports.
             "--dashboard-agent-listen-port", str(free_port()), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    return RayNode(name, num_cpus, temp_dir, process)


def wait_started(nodes: Iterable[RayNode]) -> None:
    """Until every node's ``ray start`` says it is up (nodes start side by side: each takes seconds)."""
    waiting = list(nodes)
    deadline = time.monotonic() + START_TIMEOUT_S
    while waiting:
        for node in waiting:
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start for node {node.name} failed:\n{node.start_log()[-3000:]}")
        waiting = [node for node in waiting if "Ray runtime started" not in node.start_log()]
        time.sleep(0.3)


@dataclass
class RayNodes:
    head: RayNode
    address: str  # the GCS's host:port, for RAY_ADDRESS
    dashboard_url: str  # dashboard, job server and state API
    new_temp_dir: Callable[[], Path]
    workers: dict[str, RayNode] = field(default_factory=dict)

    def add_workers(self, workers: dict[str, int]) -> None:
        """A node per entry, that many CPUs each, and a custom resource named after it."""
        for name, num_cpus in workers.items():
            self.workers[name] = launch_node(name, num_cpus, self.new_temp_dir(),
                                             ["--address", self.address, "--resources", json.dumps({name: 1})])
        wait_started(self.workers[name] for name in workers)
        self.wait_until_alive()

    def replace_dead_workers(self) -> None:
        """Start a fresh node, with the same name and CPUs, for each worker a test has killed."""
        dead = {node.name: node.num_cpus for node in self.workers.values() if node.process.poll() is not None}
        if dead:
            self.add_workers(dead)

    def node_names(self) -> dict[str, str]:
        """Node id → node name, for every node the cluster has seen, alive or dead."""
        from ray.util.state import list_nodes

        with no_session_ray_address():
            return {n.node_id: n.node_name for n in list_nodes(address=self.dashboard_url, limit=1000)}

    def node_states(self) -> dict[str, str]:
        """Node name → ALIVE or DEAD, as the cluster sees it; a replaced node's name maps to its newest state."""
        from ray.util.state import list_nodes

        with no_session_ray_address():
            nodes = list_nodes(address=self.dashboard_url, limit=1000, detail=True)
        return {n.node_name: n.state for n in sorted(nodes, key=lambda n: n.start_time_ms or 0)}

    def wait_until_alive(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the head's dashboard answers and every node has joined: a scan sizes its actor pools
        from the cluster's CPUs when it starts."""
        expected = {"head", *self.workers}
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive = {name for name, state in self.node_states().items() if state == "ALIVE"}
            except Exception:  # noqa: BLE001 - the dashboard answers some seconds after the GCS
                alive = set()
            if alive >= expected:
                return
            assert time.monotonic() < deadline, f"alive after {timeout:.0f}s: {sorted(alive)}, not {sorted(expected)}"
            time.sleep(0.5)

    def driver_job_id(self, entrypoint_contains: str) -> str:
        """The job id of the one driver whose command line contains ``entrypoint_contains``."""
        from ray.util.state import list_jobs

        with no_session_ray_address():
            jobs = list_jobs(address=self.dashboard_url, limit=1000)
        found = [j.job_id for j in jobs if j.type == "DRIVER" and entrypoint_contains in j.entrypoint]
        assert len(found) == 1, f"{len(found)} drivers ran {entrypoint_contains!r}"
        return found[0]

    def finished_tasks_per_node(self, name_contains: str, job_id: str | None = None) -> Counter:
        """Node name → how many tasks (or actor tasks) whose name contains ``name_contains`` finished
        there, from Ray's own task events."""
        from ray.util.state import list_tasks

        names = self.node_names()
        filters = [("state", "=", "FINISHED")] + ([("job_id", "=", job_id)] if job_id else [])
        with no_session_ray_address():
            tasks = list_tasks(address=self.dashboard_url, filters=filters, limit=10_000,
                               raise_on_missing_output=False)
        return Counter(names.get(t.node_id, "unknown") for t in tasks if name_contains in t.name)

    def stop(self) -> None:
        stop_nodes([*self.workers.values(), self.head])


def start_cluster(workers: dict[str, int], new_temp_dir: Callable[[], Path]) -> RayNodes:
    port, dashboard_port = free_port(), free_port()
    head = launch_node("head", 0, new_temp_dir(), [
        "--head", "--port", str(port), "--ray-client-server-port", str(free_port()),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)])
    cluster = RayNodes(head, f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", new_temp_dir)
    try:
        wait_started([head])
        cluster.add_workers(workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def ray_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict[str, int]], RayNodes]]:
    clusters: list[RayNodes] = []
    folders: list[Path] = []

    def new_temp_dir() -> Path:
        # A short name: Ray's unix sockets live under the temp dir, and socket paths are capped at 107 bytes.
        folders.append(tmp_path_factory.mktemp("rn"))
        return folders[-1]

    def start(workers: dict[str, int]) -> RayNodes:
        clusters.append(start_cluster(workers, new_temp_dir))
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.stop()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
