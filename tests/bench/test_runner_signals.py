"""The runner under signals and bad limits: SIGTERM kills the worker and exits 143; a non-positive
--memory-limit-mib is refused; a watchdog kill at the user's limit is retried by --retry-failed."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from rich.console import Console

import bench.lifecycle as lifecycle
import bench.options as options
import bench.plans.grid as grid_plan
from bench.cli import main
from bench.store import RunStore, make_record
from bench.suite import load_suite

from .conftest import REPO_ROOT, small_suite

def run_grid_suite(suite, opts, console):
    """A grid suite through the common lifecycle (what `bench run` does once the suite is loaded)."""
    return lifecycle.run(grid_plan.GridPlan.for_options(suite, opts, options.cuda_available()), opts, console)



@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_non_positive_memory_limit_is_refused(value, tmp_path, capsys):
    code = main(["run", "tiny", "--profile", "cpu", "--results-root", str(tmp_path), f"--memory-limit-mib={value}"])
    assert code == 2
    assert f"--memory-limit-mib {value}: must be a positive number of MiB" in capsys.readouterr().err
    assert not any(tmp_path.rglob("records.jsonl"))  # refused before anything ran


def test_retry_failed_reruns_a_watchdog_kill_at_the_users_limit(monkeypatch, write_suite, tmp_path):
    suite = load_suite(write_suite(small_suite()))
    points = [p.point for p in suite.expand("cpu")]
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    monkeypatch.setattr(lifecycle, "write_report", lambda *a, **k: None)
    monkeypatch.setattr("bench.load.busy_reason", lambda: None)
    store = RunStore(tmp_path / "results" / "runs" / suite.name / "r")  # a run of this host, named
    user = {"oom_detected_by": "rss_watchdog", "memory_limit_mib": 100, "memory_limit_set_by": "user"}
    store.append(make_record(points[0], "oom", "host RSS over the limit", effective=user))
    store.append(make_record(points[1], "oom", "CUDA out of memory", effective={"oom_detected_by": "exception"}))
    for p in points[2:]:
        store.append(make_record(p, "ok"))
    seen: list[str] = []

    class Fake:
        def run(self, pts):
            for p in pts:
                seen.append(p.point_id)
                yield make_record(p, "ok")

    monkeypatch.setattr(grid_plan, "make_executor", lambda *a, **k: Fake())
    run_opts = options.RunOptions(profile="cpu", results_root=tmp_path / "results", run_id="r")
    run_grid_suite(suite, run_opts, Console(file=io.StringIO()))
    assert seen == []  # without --retry-failed an oom is final
    run_grid_suite(suite, options.RunOptions(profile="cpu", results_root=tmp_path / "results",
                                                   run_id="r", retry_failed=True), Console(file=io.StringIO()))
    assert seen == [points[0].point_id]  # the allocator's oom stays final


@pytest.mark.slow
def test_sigterm_kills_the_worker_and_exits_143(write_suite, tmp_path):
    spec = small_suite(repeats=100000, timeout_s=300)
    spec["studies"] = {"slow": {"grid": {"seq_len": [512]}}}
    spec["profiles"] = {"cpu": {}}
    spec["base"].update(attention="full")
    path = write_suite(spec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--profile", "cpu",
                             "--results-root", str(tmp_path / "results")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    try:
        workers = []
        deadline = time.monotonic() + 180
        while not workers and time.monotonic() < deadline:  # runner -> fork server -> worker
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if c.ppid() != proc.pid]
        assert workers, "no worker started"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert b"terminated (SIGTERM)" in out and b"worker was killed" in out
    for w in workers:
        assert not psutil.pid_exists(w.pid) or w.status() == psutil.STATUS_ZOMBIE
