"""Worker, fork server and local executor: every outcome becomes a record, with stub measurements
run in real forked worker processes (the stub module is what the fork server preloads)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bench.executors.local import LocalExecutor, run_point_subprocess
from bench.store import watchdog_retryable
from bench.point import GridPoint
from bench.worker import classify, run_point

# point.model["stub"] picks the behaviour; model["dir"] is a scratch folder shared by the processes
# of a point (the n-th process of a point reads its index from a counter file there).
STUB = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    from bench.store import make_record
    from bench.worker import RECORD_PREFIX

    SEEN = []  # module state: a fresh process per worker never sees an earlier one's

    def process_index(point):
        counter = Path(point.model["dir"]) / "counter"
        n = len(counter.read_text()) if counter.exists() else 0
        counter.write_text("x" * (n + 1))
        return n

    def measure(point, timing=True):
        mode = point.model["stub"]
        n = process_index(point)
        SEEN.append(n)
        (Path(point.model["dir"]) / f"pid{n}").write_text(str(os.getpid()))
        if mode == "ok":
            print("a stray print that is not a record")
            metrics = {"peak_rss_mib": [10.0, 30.0, 20.0][n], "saved_for_backward_mib": 4.0}
            if timing:
                metrics["fwd_ms_median"] = 1.5
            return {"metrics": metrics, "effective": {"server": os.getppid(), "seen": len(SEEN),
                                                      "timing": timing}, "params": {"extra": 1}}
        if mode == "oom":
            raise MemoryError("stub ran out of host memory")
        if mode == "oom_second" and n == 1:
            raise MemoryError("second process ran out")
        if mode == "oom_second":
            return {"metrics": {"peak_rss_mib": 1.0}}
        if mode == "error":
            raise ValueError("stub failure")
        if mode == "exit":
            sys.stderr.write("stub is dying\\n")
            sys.stderr.flush()
            os._exit(3)
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode in ("record_then_exit", "record_then_sigkill"):
            record = make_record(point, "ok", metrics={"peak_rss_mib": 1.0})
            sys.stdout.write(RECORD_PREFIX + json.dumps(record) + "\\n")
            sys.stdout.flush()
            if mode == "record_then_exit":
                os._exit(5)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "sleep":
            time.sleep(60)
        if mode == "hog":
            ballast = b"x" * (400 * 2**20)  # written, so resident
            time.sleep(60)
        if mode == "child_hog":  # the memory is in a child process of the worker
            child = subprocess.Popen([sys.executable, "-c",
                                      "import time; b = b'x' * (400 * 2**20); time.sleep(60)"])
            (Path(point.model["dir"]) / "grandchild").write_text(str(child.pid))
            time.sleep(60)
        raise AssertionError(mode)
    """
)


@pytest.fixture
def stub(tmp_path: Path, monkeypatch) -> str:
    """The stub module on the fork server's PYTHONPATH; its `module:function` reference."""
    (tmp_path / "stub_measure.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return "stub_measure:measure"


def stub_point(mode: str, scratch: Path, seq_len: int = 8) -> GridPoint:
    scratch.mkdir(parents=True, exist_ok=True)
    return GridPoint(suite="t", workload="attention", device="cpu", dtype="float32", batch_size=1,
                     seq_len=seq_len, model={"stub": mode, "dir": str(scratch)}, studies=("s",))


def run_stub(stub: str, tmp_path: Path, mode: str, timeout_s: float = 30.0,
             memory_limit_mib: float | None = 0, processes: int = 1):
    point = stub_point(mode, tmp_path / mode)
    return run_point_subprocess(point, timeout_s, memory_limit_mib, processes=processes, measure=stub)


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_classify_exceptions():
    assert classify(MemoryError("x"))[0] == "oom"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert classify(ValueError("bad")) == ("error", "ValueError: bad")
    assert classify(RuntimeError("shape mismatch"))[0] == "error"


def test_torch_oom_and_unavailable_workload():
    torch = pytest.importorskip("torch")
    assert classify(torch.OutOfMemoryError("CUDA error"))[0] == "oom"
    with pytest.raises(RuntimeError) as cpu_failure:  # 1 EiB, beyond any address space: refused at once
        torch.empty(2**60, dtype=torch.uint8)
    assert classify(cpu_failure.value)[0] == "oom"
    workloads = pytest.importorskip("bench.workloads")
    assert classify(workloads.WorkloadUnavailable("reformer_pytorch is not installed")) == (
        "skipped", "reformer_pytorch is not installed")


def test_run_point_in_process(tmp_path):
    point = stub_point("x", tmp_path)
    ok = run_point(point, lambda p: {"metrics": {"fwd_ms_median": 2.0}, "effective": {"k": 1}})
    assert ok["status"] == "ok" and ok["metrics"]["fwd_ms_median"] == 2.0 and ok["effective"] == {"k": 1}
    memory_only = run_point(point, lambda p, timing=True: {"metrics": {"timing": timing}}, timing=False)
    assert memory_only["metrics"] == {"timing": False}

    def boom(point):
        raise KeyError("missing")

    err = run_point(point, boom)
    assert err["status"] == "error" and err["reason"] == "KeyError: 'missing'"
    assert "boom" in err["traceback"]


def test_memory_is_the_median_of_three_fresh_processes(stub, tmp_path):
    record = run_stub(stub, tmp_path, "ok", processes=3)
    assert record["status"] == "ok" and record["reason"] is None, record
    metrics = record["metrics"]
    assert (metrics["peak_rss_mib"], metrics["peak_rss_mib_min"], metrics["peak_rss_mib_max"]) == (20.0, 10.0, 30.0)
    assert metrics["saved_for_backward_mib"] == 4.0 and metrics["memory_processes"] == 3
    assert metrics["fwd_ms_median"] == 1.5  # timings come from the first process
    assert record["effective"] == {"server": record["effective"]["server"], "seen": 1, "timing": True}
    assert record["params"]["extra"] == 1 and record["params"]["seq_len"] == 8
    pids = {(tmp_path / "ok" / f"pid{n}").read_text() for n in range(3)}
    assert len(pids) == 3 and str(os.getpid()) not in pids  # three separate worker processes
    load = record["load"]
    assert set(load) == {"loadavg_1m", "other_cpu_frac", "steal_frac", "under_load"}
    assert 0.0 <= load["other_cpu_frac"] <= 1.0 and isinstance(load["under_load"], bool)


def test_oom_and_error_rows(stub, tmp_path):
    oom = run_stub(stub, tmp_path, "oom")
    assert oom["status"] == "oom" and "MemoryError" in oom["reason"]
    assert oom["effective"] == {"oom_detected_by": "exception"} and not watchdog_retryable(oom)
    err = run_stub(stub, tmp_path, "error")
    assert err["status"] == "error" and err["reason"] == "ValueError: stub failure"
    assert "ValueError" in err["traceback"] and "load" in err


def test_a_later_memory_process_failing_fails_the_point(stub, tmp_path):
    record = run_stub(stub, tmp_path, "oom_second", processes=3)
    assert record["status"] == "oom"
    assert record["reason"].startswith("memory process 2 of 3: MemoryError: second process ran out")
    assert not (tmp_path / "oom_second" / "pid2").exists()  # no third process after a failure


def test_crash_with_exit_code(stub, tmp_path):
    record = run_stub(stub, tmp_path, "exit")
    assert record["status"] == "error"
    assert "exited with code 3" in record["reason"] and "stub is dying" in record["traceback"]


def test_crash_by_signal(stub, tmp_path):
    record = run_stub(stub, tmp_path, "sigkill")
    assert record["status"] == "error" and "SIGKILL" in record["reason"]


@pytest.mark.parametrize("mode, says", [("record_then_exit", "exited with code 5 after writing its record"),
                                        ("record_then_sigkill", "killed by SIGKILL")])
def test_a_worker_that_dies_after_its_record_is_noted(stub, tmp_path, mode, says):
    record = run_stub(stub, tmp_path, mode)
    assert record["status"] == "ok" and record["metrics"]["peak_rss_mib"] == 1.0
    assert says in record["reason"] and "after writing its record" in record["reason"]


def test_timeout_kills_the_worker(stub, tmp_path):
    record = run_stub(stub, tmp_path, "sleep", timeout_s=1.0)
    assert record["status"] == "timeout" and "timeout_s=1" in record["reason"]
    assert record["wall_s"] < 30
    assert gone(int((tmp_path / "sleep" / "pid0").read_text()))


def test_memory_watchdog_kills_a_hog_and_a_user_limit_is_retryable(stub, tmp_path):
    record = run_stub(stub, tmp_path, "hog", memory_limit_mib=200)
    assert record["status"] == "oom"
    assert "memory_limit_mib=200" in record["reason"] and "host RSS" in record["reason"]
    assert record["effective"]["oom_detected_by"] == "rss_watchdog"
    assert record["effective"]["memory_limit_set_by"] == "user" and watchdog_retryable(record)
    default = dict(record, effective={**record["effective"], "memory_limit_set_by": "default"})
    assert not watchdog_retryable(default)


def test_memory_watchdog_counts_the_workers_children(stub, tmp_path):
    record = run_stub(stub, tmp_path, "child_hog", memory_limit_mib=300)
    assert record["status"] == "oom" and "memory_limit_mib=300" in record["reason"], record
    grandchild = int((tmp_path / "child_hog" / "grandchild").read_text())
    assert wait_for(lambda: gone(grandchild), 5.0)  # killed with the worker's group


def test_local_executor_one_server_fresh_workers_in_order(stub, tmp_path):
    points = [stub_point("ok", tmp_path / "a"), stub_point("error", tmp_path / "b", seq_len=16),
              stub_point("ok", tmp_path / "c", seq_len=32)]
    records = list(LocalExecutor(memory_limit_mib=0, processes=2, measure=stub).run(points))
    assert [r["point_id"] for r in records] == [p.point_id for p in points]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert records[0]["effective"]["seen"] == records[2]["effective"]["seen"] == 1  # no state carried over
    assert records[0]["effective"]["server"] == records[2]["effective"]["server"]  # imported once per run
    assert records[0]["metrics"]["memory_processes"] == 2


RUNNER = textwrap.dedent(
    """
    import sys
    from bench.executors.local import LocalExecutor
    from bench.point import GridPoint

    point = GridPoint(suite="t", workload="attention", device="cpu", dtype="float32", batch_size=1,
                      seq_len=8, model={"stub": "sleep", "dir": sys.argv[1]}, studies=("s",))
    for record in LocalExecutor(memory_limit_mib=0, processes=1, measure="stub_measure:measure").run([point]):
        print(record["status"])
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_worker_dies_with_its_runner(stub, tmp_path, sig):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(scratch)], env=os.environ.copy())
    pid_file = scratch / "pid0"
    try:
        assert wait_for(pid_file.exists, 120.0), "the worker never started"
        worker = int(pid_file.read_text())
        assert not gone(worker)
        runner.send_signal(sig)
        assert wait_for(lambda: gone(worker), 3.0), f"worker {worker} outlived its runner ({sig.name})"
    finally:
        runner.kill()
        runner.wait()
