"""A job never hangs on its own reservations: every combination of stages fits the cluster it runs
on, or the job refuses at once in one line; and a scan that stops making progress says why."""
from __future__ import annotations

import itertools
import signal
import threading
import time

import pytest

from detector.factory import create_detector, parse_detector_spec
from jobs.devices import GpuSettings, plan_devices
from jobs.resources import PlanError, fit_stages, reserved_cpus
from jobs.watchdog import StallWatchdog
from pipelines.stages import ResolvedDetector, ScanSettings, StageSpec, scan_stages

DETECTORS = {"hybrid": ("hybrid",), "ensemble": ("ensemble",), "both": ("hybrid", "ensemble")}
PROBES = {"none": (), "jpeg50,h264": ("jpeg50", "h264")}
EXPLAIN = {"off": (), "on": ("fake", "uncertain")}
COMBINATIONS = list(itertools.product(DETECTORS, PROBES, EXPLAIN))


@pytest.fixture(scope="module")
def tiny_detectors() -> dict[str, ResolvedDetector]:
    detectors = {}
    for name in ("hybrid_tiny", "ensemble_tiny"):
        spec = parse_detector_spec(name)
        detectors[spec.kind] = ResolvedDetector(spec, create_detector(spec)[1])
    return detectors


def planned(tiny_detectors, detectors: str, probes: str, explain: str, cpus: float, gpus: float = 0
            ) -> list[StageSpec]:
    settings = ScanSettings(run_id="plan", frames=2, probes=PROBES[probes], explain=EXPLAIN[explain], out="/tmp/x")
    stages = scan_stages(settings, {kind: tiny_detectors[kind] for kind in DETECTORS[detectors]})
    return fit_stages(plan_devices(GpuSettings(), 2, stages, cpus, gpus).apply(stages), cpus)


@pytest.mark.parametrize("detectors, probes, explain", COMBINATIONS)
def test_on_two_cpus_every_combination_fits_with_a_slot_for_every_task_stage(tiny_detectors, detectors, probes,
                                                                             explain):
    stages = planned(tiny_detectors, detectors, probes, explain, cpus=2)
    assert reserved_cpus(stages) <= 2
    assert all(s.resources.cpus >= s.resources.least_cpus > 0 for s in stages)


@pytest.mark.parametrize("detectors, probes, explain", COMBINATIONS)
def test_on_one_cpu_every_combination_fits_or_is_refused_in_one_line(tiny_detectors, detectors, probes, explain):
    try:
        stages = planned(tiny_detectors, detectors, probes, explain, cpus=1)
    except PlanError as error:
        message = str(error)
        assert "\n" not in message and "the cluster has 1" in message and "needs at least" in message
        assert all(name in message for name in ("faces", "decode", "verdict"))
    else:
        assert reserved_cpus(stages) <= 1


def test_a_plan_that_fits_is_left_as_it_is(tiny_detectors):
    settings = ScanSettings(run_id="plan", frames=2)
    stages = scan_stages(settings, {"hybrid": tiny_detectors["hybrid"]})
    planned_stages = plan_devices(GpuSettings(), 2, stages, 64, 0).apply(stages)
    # On CPUs the chain takes every CPU and its verdict tasks a little more: the fit lowers those.
    assert fit_stages(planned_stages, reserved_cpus(planned_stages)) == planned_stages


def test_on_gpus_the_cpu_side_of_the_pools_fits_too(tiny_detectors):
    stages = planned(tiny_detectors, "both", "jpeg50,h264", "on", cpus=4, gpus=1)
    assert reserved_cpus(stages) <= 4
    assert {s.name: s.resources.gpus for s in stages if s.is_actor}["faces"] == 0.2


def test_the_watchdog_says_what_is_stuck_and_stops_the_loop_it_watches(capsys):
    rows_before_the_stall = 3
    with pytest.raises(KeyboardInterrupt), StallWatchdog(warn_after_s=0.5, stop_after_s=1.5, poll_s=0.1) as watchdog:
        for _ in range(rows_before_the_stall):
            watchdog.progress(1)
        threading.Event().wait(90)  # a loop that never gets its next row; each diagnosis takes ≤ 10 s
    assert watchdog.rows == rows_before_the_stall
    assert watchdog.stalled and watchdog.stalled.startswith("no video finished for")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fakescan: warning: no video finished for")


def test_the_watchdog_stops_a_job_started_with_sigint_ignored():
    """A job started in the background by a non-interactive shell (``cmd &``, nohup) inherits
    SIGINT ignored; the watchdog's stop must still reach its loop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), StallWatchdog(warn_after_s=0.5, stop_after_s=1.0, poll_s=0.1):
            threading.Event().wait(60)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the job's own handling comes back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_watchdog_stays_quiet_while_rows_keep_coming(capsys):
    with StallWatchdog(warn_after_s=0.5, stop_after_s=1.0, poll_s=0.1) as watchdog:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            watchdog.progress(1)
            time.sleep(0.1)
    assert watchdog.stalled is None and capsys.readouterr().err == ""
