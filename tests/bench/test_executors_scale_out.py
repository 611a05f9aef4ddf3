"""Scale-out on hostile input (issue 25, item 11): the suite's `processes` (memory processes per
point) under `--executor ray` and `--executor submitit` as under the local one; a dead RAY_ADDRESS or
a stale `ray start` file named in the error, refused before Ray is asked to connect; and the kinds
that run locally only refused under a cluster executor with their own reason."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import bench.options as options
from bench.cli import main
from bench.executors.base import ExecutorError
from bench.executors.factory import make_executor
from bench.executors.ray_address import cluster_file, cluster_target
from bench.executors.remote_task import run_point_remote
from bench.options import RunOptions

from .conftest import REPO_ROOT
from .test_executor import stub, stub_point  # noqa: F401  (stub: the fixture putting the stub measure on the path)


def dead_address() -> str:
    """A local port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def no_ray_env(monkeypatch, tmp_path):
    """No RAY_ADDRESS, and Ray's temp folder (where `ray start` leaves its file) inside tmp_path."""
    for key in [k for k in os.environ if k.startswith("RAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    return tmp_path / "raytmp"


# ---- processes per point -----------------------------------------------------------------------------

@pytest.mark.parametrize("processes", [1, 2])
def test_a_ray_task_runs_the_suites_memory_processes(stub, tmp_path, processes):  # noqa: F811
    pytest.importorskip("ray")
    ex = make_executor(RunOptions(executor="ray"), 30.0, processes=processes, measure=stub)
    point = stub_point("ok", tmp_path / "scratch")
    record = run_point_remote(point, 30.0, 0, ex.run_point, threads=1)  # the task's body, as Ray runs it
    assert record["status"] == "ok" and record["metrics"]["memory_processes"] == processes, record
    assert sorted(p.name for p in (tmp_path / "scratch").glob("pid*")) == [f"pid{i}" for i in range(processes)]


def test_a_submitit_job_runs_the_suites_memory_processes(stub, tmp_path):  # noqa: F811
    pytest.importorskip("submitit")
    ex = make_executor(RunOptions(executor="submitit", submitit_cluster="local"), 30.0, run_dir=tmp_path,
                       processes=1, measure=stub)
    [record] = list(ex.run([stub_point("ok", tmp_path / "scratch")]))
    assert record["status"] == "ok" and record["metrics"]["memory_processes"] == 1, record
    assert record["node"]["slurm_job_id"] and [p.name for p in (tmp_path / "scratch").glob("pid*")] == ["pid0"]


def test_the_local_default_of_three_is_every_executors_default(stub, tmp_path):  # noqa: F811
    pytest.importorskip("ray")
    ex = make_executor(RunOptions(executor="ray"), 30.0, measure=stub)
    record = run_point_remote(stub_point("ok", tmp_path / "scratch"), 30.0, 0, ex.run_point, threads=1)
    assert record["metrics"]["memory_processes"] == 3


# ---- which Ray cluster, and a dead one named ---------------------------------------------------------

def test_the_address_tried_follows_rays_rule(no_ray_env, monkeypatch):
    assert cluster_target(None) == (None, "a new local Ray instance")
    assert cluster_target("10.0.0.1:6379") == ("10.0.0.1:6379", "--ray-address")
    cluster_file().parent.mkdir(parents=True)
    cluster_file().write_text("10.0.0.2:6379\n")
    assert cluster_file() == no_ray_env / "ray" / "ray_current_cluster"
    assert cluster_target(None)[0] == "10.0.0.2:6379" and str(cluster_file()) in cluster_target(None)[1]
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.3:6379")
    assert cluster_target(None) == ("10.0.0.3:6379", "RAY_ADDRESS")
    assert cluster_target("10.0.0.1:6379")[0] == "10.0.0.1:6379"  # an explicit address wins


class RayNeverAsked:
    """Stands in for the ray module: connecting must be refused before ray.init is called."""

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs):
        raise AssertionError(f"ray.init called ({kwargs}): the dead address was not refused up front")


def _connect_error(timeout_s: float = 600.0) -> str:
    from bench.executors.ray_executor import RayExecutor

    ex = RayExecutor(None, connect_timeout_s=timeout_s)
    with pytest.raises(ExecutorError) as refused:
        ex._connect(RayNeverAsked())
    return str(refused.value)


def test_a_dead_ray_address_is_named_and_refused_before_connecting(no_ray_env, monkeypatch):
    pytest.importorskip("ray")
    address = dead_address()
    monkeypatch.setenv("RAY_ADDRESS", address)
    message = _connect_error()
    assert f"cannot reach {address} (RAY_ADDRESS)" in message and "unset RAY_ADDRESS" in message, message
    assert "the default Ray address" not in message


def test_a_stale_ray_start_file_is_named_and_refused_before_connecting(no_ray_env):
    pytest.importorskip("ray")
    address = dead_address()
    cluster_file().parent.mkdir(parents=True)
    cluster_file().write_text(address)
    message = _connect_error()
    assert f"cannot reach {address} (from the last `ray start` on this machine, {cluster_file()})" in message
    assert "`ray stop`" in message, message


def test_the_cli_names_a_dead_ray_address_in_one_error_line(no_ray_env, tmp_path):
    pytest.importorskip("ray")
    address = dead_address()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "RAY_ADDRESS": address,
           "RAY_TMPDIR": str(no_ray_env), "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench", "run", "tiny", "--profile", "cpu", "--results-root",
                          str(tmp_path / "results"), "--executor", "ray", "--ray-connect-timeout-s", "600"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    [error] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert f"cannot reach {address} (RAY_ADDRESS) within 600 s" in error and "Traceback" not in out.stderr


# ---- kinds that run locally only -------------------------------------------------------------------

@pytest.mark.parametrize("suite, executor, reason", [
    ("quality", "ray", "a training is one long unit that checkpoints into this machine's run folder"),
    ("duplication", "submitit", "a training is one long unit that checkpoints into this machine's run folder"),
    ("capacity", "ray", "a probe's outcome is decided by the memory budget this machine's fork-server worker"),
])
def test_a_local_only_kind_under_a_cluster_executor_gives_its_own_reason(suite, executor, reason, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    code = main(["run", suite, "--profile", "cpu", "--results-root", str(tmp_path), "--executor", executor,
                 "--retry-failed"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and f"--executor {executor}: not available for {suite} suites ({reason}" in err, err
    assert "retry" not in err and not (tmp_path / "runs").exists()
