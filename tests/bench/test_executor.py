"""Worker and local executor: every outcome becomes a record, with a stub measurement."""
from __future__ import annotations

import pytest

from bench.executors.local import LocalExecutor, run_point_subprocess
from bench.point import GridPoint
from bench.worker import classify, run_point


def stub_point(mode: str) -> GridPoint:
    return GridPoint(suite="t", workload="attention", device="cpu", dtype="float32", batch_size=1,
                     seq_len=8, model={"stub": mode}, studies=("s",))


def run_stub(stub_worker, mode: str, timeout_s: float = 30.0, memory_limit_mib: float | None = 0):
    return run_point_subprocess(stub_point(mode), timeout_s, memory_limit_mib, worker_cmd=stub_worker)


def test_classify_exceptions():
    assert classify(MemoryError("x"))[0] == "oom"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert classify(ValueError("bad")) == ("error", "ValueError: bad")
    assert classify(RuntimeError("shape mismatch"))[0] == "error"


def test_torch_oom_and_unavailable_workload():
    torch = pytest.importorskip("torch")
    assert classify(torch.OutOfMemoryError("CUDA error"))[0] == "oom"
    workloads = pytest.importorskip("bench.workloads")
    assert classify(workloads.WorkloadUnavailable("reformer_pytorch is not installed")) == (
        "skipped", "reformer_pytorch is not installed")


def test_run_point_in_process():
    ok = run_point(stub_point("x"), lambda p: {"metrics": {"fwd_ms_median": 2.0}, "effective": {"k": 1}})
    assert ok["status"] == "ok" and ok["metrics"]["fwd_ms_median"] == 2.0 and ok["effective"] == {"k": 1}

    def boom(point):
        raise KeyError("missing")

    err = run_point(stub_point("x"), boom)
    assert err["status"] == "error" and err["reason"] == "KeyError: 'missing'"
    assert "boom" in err["traceback"]


def test_ok_record_survives_stray_prints(stub_worker):
    record = run_stub(stub_worker, "ok")
    assert record["status"] == "ok", record
    assert record["metrics"] == {"fwd_ms_median": 1.5}
    assert record["params"]["extra"] == 1 and record["params"]["seq_len"] == 8
    assert record["point_id"] == stub_point("ok").point_id and record["wall_s"] > 0


def test_oom_and_error_rows(stub_worker):
    oom = run_stub(stub_worker, "oom")
    assert oom["status"] == "oom" and "MemoryError" in oom["reason"]
    err = run_stub(stub_worker, "error")
    assert err["status"] == "error" and err["reason"] == "ValueError: stub failure"
    assert "ValueError" in err["traceback"]


def test_crash_with_exit_code(stub_worker):
    record = run_stub(stub_worker, "exit")
    assert record["status"] == "error"
    assert "exited with code 3" in record["reason"] and "stub is dying" in record["traceback"]


def test_crash_by_signal(stub_worker):
    record = run_stub(stub_worker, "sigkill")
    assert record["status"] == "error" and "SIGKILL" in record["reason"]


def test_timeout_kills_the_worker(stub_worker):
    record = run_stub(stub_worker, "sleep", timeout_s=1.0)
    assert record["status"] == "timeout" and "timeout_s=1" in record["reason"]
    assert record["wall_s"] < 30


def test_memory_watchdog_kills_a_hog(stub_worker):
    record = run_stub(stub_worker, "hog", memory_limit_mib=200)
    assert record["status"] == "oom"
    assert "memory_limit_mib=200" in record["reason"] and "host RSS" in record["reason"]


def test_local_executor_yields_one_record_per_point_in_order(stub_worker):
    points = [stub_point("ok"), stub_point("error")]
    records = list(LocalExecutor(memory_limit_mib=0, worker_cmd=stub_worker).run(points))
    assert [r["point_id"] for r in records] == [p.point_id for p in points]
    assert [r["status"] for r in records] == ["ok", "error"]
