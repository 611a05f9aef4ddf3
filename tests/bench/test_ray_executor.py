"""RayExecutor against a real Ray cluster that this module starts itself (`ray start --head` on free
ports, its own temp dir, token authentication with its own token), whatever else runs on the
machine: a whole node per point, explicit torch threads, the node in each record, an explicit
address on a token cluster, an unreachable address, and losing the cluster mid-run (last)."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bench.executors.ray_executor import RayExecutor, failure_record
from bench.point import GridPoint
from bench.store import RunStore, read_records
from tests.bench.conftest import lsh_point as point

pytest.importorskip("ray")

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
RAISES, CRASHES = 13, 17  # seq_len values that make the stub raise / kill its worker
CPUS = 2
MARK = "REFORMER_BENCH_TEST_RAY"  # in the environment of the test cluster's processes only


def stub_run_point(point, timeout_s, memory_limit_mib=None):
    """Stands in for run_point_subprocess inside the Ray task: says when, where and how it ran."""
    import ray

    start = time.time()
    if point.seq_len == RAISES:
        raise ValueError(f"stub failed on seq_len={point.seq_len}")
    if point.seq_len == CRASHES:
        os._exit(3)  # the worker process dies without a word
    time.sleep(0.3)
    return {
        "point_id": point.point_id, "run_id": None, "suite": point.suite, "studies": list(point.studies),
        "status": "ok", "reason": None, "point": point.to_json(), "params": {"seq_len": point.seq_len},
        "effective": {"worker_pid": os.getpid(), "timeout_s": timeout_s, "memory_limit_mib": memory_limit_mib,
                      "cpus_held": ray.get_runtime_context().get_assigned_resources().get("CPU"),
                      "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "BENCH_TORCH_THREADS")},
                      "start": start, "end": time.time()},
        "metrics": {}, "wall_s": 0.0, "finished_at": "2026-01-01T00:00:00+00:00",
    }


# ---- an isolated cluster -----------------------------------------------------------------------

@dataclass
class Cluster:
    address: str
    token_path: Path
    proc: subprocess.Popen
    temp_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A client's environment: this cluster's token file, but no RAY_AUTH_MODE or RAY_ADDRESS."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return {**env, "RAY_AUTH_TOKEN_PATH": str(self.token_path), "PYTHONPATH": str(REPO_ROOT), **extra}

    def ours(self) -> list[psutil.Process]:
        """Every process of this cluster (its workers too): they inherit MARK from `ray start`."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARK) == str(self.temp_dir):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def stop(self) -> None:
        """Stop this cluster only (never `ray stop`, which stops every Ray on the machine)."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=wait)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            left = [p for p in self.ours() if p.pid != os.getpid()]
            for p in left:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(left, timeout=wait)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    token = tmp / "token"
    token.write_text(secrets.token_hex(16))
    temp_dir = Path(tempfile.mkdtemp(prefix="rb-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    port, client, dash, agent, agent_grpc, metrics, runtime_env = free_ports(7)
    log = open(tmp / "ray-start.log", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(REPO_ROOT), **{MARK: str(temp_dir)})
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp_dir}", f"--num-cpus={CPUS}",
         "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         f"--ray-client-server-port={client}", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    c = Cluster(f"127.0.0.1:{port}", token, proc, temp_dir)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (tmp / "ray-start.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "ray-start.log").read_text()
            time.sleep(0.2)
        yield c
    finally:
        c.stop()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def bench_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---- on the cluster ------------------------------------------------------------------------------

def test_each_point_holds_the_whole_node_with_its_threads(cluster, monkeypatch):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    for key, value in cluster.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_AUTH_MODE", "x")
    monkeypatch.delenv("RAY_AUTH_MODE")  # the executor turns token auth on by itself; undone after
    ok = [point(n) for n in (32, 64, 128)]
    ex = RayExecutor(cluster.address, timeout_s=42.0, memory_limit_mib=512, run_point=stub_run_point)
    records = {r["point_id"]: r for r in ex.run(ok + [point(RAISES), point(CRASHES)])}
    assert not ray.is_initialized()  # it connected, so it disconnected

    good = [records[p.point_id] for p in ok]
    assert all(r["status"] == "ok" and r["effective"]["timeout_s"] == 42.0 for r in good)
    assert all(r["effective"]["memory_limit_mib"] == 512 for r in good)
    assert len({r["effective"]["worker_pid"] for r in good}) == len(ok)  # max_calls=1: never reused
    assert all(r["effective"]["cpus_held"] == CPUS for r in good)  # the whole node, not 1 CPU
    assert all(r["effective"]["env_threads"] == {"OMP_NUM_THREADS": "2", "BENCH_TORCH_THREADS": "2"} for r in good)
    spans = sorted((r["effective"]["start"], r["effective"]["end"]) for r in good)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # one at a time
    assert all(r["node"]["ray_node_id"] and r["node"]["torch_threads"] == CPUS for r in good)

    raised = records[point(RAISES).point_id]
    assert raised["status"] == "error" and "ValueError" in raised["reason"] and "seq_len=13" in raised["reason"]
    crashed = records[point(CRASHES).point_id]
    assert crashed["status"] == "error" and crashed["reason"].startswith("ray")
    assert crashed["params"]["seq_len"] == CRASHES and GridPoint.from_json(crashed["point"]) == point(CRASHES)


def test_cli_on_an_authenticated_cluster_by_address(cluster, tmp_path, write_suite):
    """`ray start` clusters use token auth: an explicit --ray-address must find the token by itself,
    and the real worker must run with the node's CPUs as torch threads, not Ray's OMP_NUM_THREADS=1."""
    from tests.bench.conftest import small_suite

    suite = write_suite(small_suite(studies={"kinds": {"grid": {"seq_len": [64]}}}))  # one real point
    out = bench_cli("run", str(suite), "--profile", "cpu", "--results-root", str(tmp_path), "--executor", "ray",
                    "--ray-address", cluster.address, "--run-id", "r", env=cluster.env())
    assert out.returncode == 0, out.stdout + out.stderr
    [record] = read_records(tmp_path / "runs" / "small" / "r" / "records.jsonl")
    assert record["status"] == "ok", record
    assert record["effective"]["torch_threads"] == CPUS and record["node"]["torch_threads"] == CPUS
    assert record["node"]["host"] and record["node"]["cpu_count"] and record["node"]["ray_node_id"]
    assert "1 node(s), one point per node at a time" in out.stdout


def test_wrong_token_is_one_error_line(cluster, tmp_path):
    start = time.monotonic()
    out = bench_cli("run", "tiny", "--profile", "cpu", "--results-root", str(tmp_path), "--executor", "ray",
                    "--ray-address", cluster.address, "--ray-connect-timeout-s", "3",
                    env=cluster.env(RAY_AUTH_TOKEN="not-the-token"), timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and cluster.address in errors[0] and "RAY_AUTH_TOKEN" in errors[0]
    assert "Traceback" not in out.stderr and time.monotonic() - start < 60


def test_unreachable_address_fails_within_the_timeout(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    start = time.monotonic()
    out = bench_cli("run", "tiny", "--profile", "cpu", "--results-root", str(tmp_path), "--executor", "ray",
                    "--ray-address", "127.0.0.1:1", "--ray-connect-timeout-s", "5", env=env, timeout=90)
    assert out.returncode == 2, out.stdout + out.stderr
    [error] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert "cannot reach 127.0.0.1:1" in error and "Traceback" not in out.stderr
    assert time.monotonic() - start < 60  # python, torch and the suite included; Ray alone retried > 120 s
    [records_path] = (tmp_path / "runs" / "tiny").glob("*/records.jsonl")  # the new run of this command
    records = read_records(records_path)
    assert [r["status"] for r in records] == ["skipped"]  # the suite's skip row only: nothing ran


def test_failure_record_follows_the_contract():
    p = point(1024)
    rec = failure_record(p, "ray: WorkerCrashedError: gone", traceback="x" * 5000)
    assert {"point_id", "run_id", "suite", "studies", "status", "reason", "point", "params",
            "effective", "metrics", "wall_s", "finished_at"} <= set(rec)
    assert rec["point_id"] == p.point_id and rec["status"] == "error" and rec["studies"] == ["memory"]
    assert rec["reason"] == "ray: WorkerCrashedError: gone" and GridPoint.from_json(rec["point"]) == p
    assert rec["params"]["seq_len"] == 1024 and rec["params"]["n_hashes"] == 2 and rec["params"]["device"] == "cpu"
    assert 0 < len(rec["traceback"]) < 5000


@pytest.mark.parametrize("kwargs, field", [({"timeout_s": 0}, "timeout_s"), ({"connect_timeout_s": -1}, "connect_timeout_s"),
                                           ({"torch_threads": 0}, "torch_threads")])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RayExecutor(None, **kwargs)


# A driver whose first point finishes at once and whose second sleeps until the test kills the cluster.
LOSS_DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import bench.plans.grid as grid_plan
    from bench.cli import main
    from bench.executors.ray_executor import RayExecutor
    from bench.store import make_record

    address, first, running, argv = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]

    def run_point(point, timeout_s, memory_limit_mib=None):
        if not first.exists():
            first.write_text(point.point_id)
            return make_record(point, "ok")
        running.write_text(point.point_id)
        time.sleep(120)

    grid_plan.make_executor = lambda opts, timeout_s, run_dir=None, log=None, processes=3, measure=None: RayExecutor(
        address, timeout_s, run_point=run_point, log=log)
    sys.exit(main(argv))
    """
)


def test_losing_the_cluster_records_only_finished_points(cluster, tmp_path, write_suite):
    """Runs last: it kills the module's cluster."""
    from tests.bench.conftest import small_suite

    suite = write_suite(small_suite(studies={"kinds": {"grid": {"attention": ["full", "lsh"], "seq_len": [64, 128]}}}))
    driver = tmp_path / "driver.py"
    driver.write_text(LOSS_DRIVER)
    first, running = tmp_path / "first", tmp_path / "running"
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, str(driver), cluster.address, str(first), str(running),
         "run", str(suite), "--profile", "cpu", "--results-root", str(results), "--run-id", "r"],
        cwd=REPO_ROOT, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not running.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        cluster.stop()  # as `ray stop` would, for this cluster only
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, stdout + stderr
    assert "lost the cluster" in stderr and "1 point(s) were running and 2 never started" in stderr
    records = read_records(results / "runs" / "small" / "r" / "records.jsonl")
    assert [(r["point_id"], r["status"]) for r in records] == [(first.read_text(), "ok")]
    store = RunStore(results / "runs" / "small" / "r")
    assert store.pending([first.read_text(), running.read_text()]) == [running.read_text()]  # a rerun runs it
