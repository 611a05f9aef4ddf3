"""Results store: append-only records, torn last line, resume, run.json written once."""
from __future__ import annotations

import json
import math

import pytest

from bench.point import GridPoint
from bench.store import (
    RunStore, StoreError, default_run_id, fresh_run_id, jsonable, latest_by_point, make_record, read_records,
)


def point(seq_len: int = 64, **model) -> GridPoint:
    return GridPoint(suite="t", workload="attention", device="cpu", dtype="float32", batch_size=1,
                     seq_len=seq_len, model={"attention": "lsh", **model}, studies=("a",))


def test_make_record_follows_the_contract():
    p = point()
    record = make_record(p, "ok", params={"extra": 1}, metrics={"fwd_ms_median": float("nan")}, wall_s=1.5)
    assert set(record) >= {"point_id", "run_id", "suite", "studies", "status", "reason", "point", "params",
                           "effective", "metrics", "wall_s", "finished_at"}
    assert record["point_id"] == p.point_id and record["studies"] == ["a"]
    assert record["params"]["seq_len"] == 64 and record["params"]["attention"] == "lsh"
    assert record["params"]["extra"] == 1
    assert record["metrics"]["fwd_ms_median"] is None  # NaN is not JSON
    assert GridPoint.from_json(record["point"]) == p
    with pytest.raises(ValueError, match="status='fine'"):
        make_record(p, "fine")


def test_jsonable():
    assert jsonable({"a": (1, float("inf")), 2: [math.nan]}) == {"a": [1, None], "2": [None]}
    assert jsonable(True) is True


def test_append_and_read_back(tmp_path):
    store = RunStore(tmp_path / "run")
    records = [make_record(point(n), "ok") for n in (64, 128)]
    for r in records:
        store.append(r)
    assert store.records() == records
    assert store.records_path.read_text().count("\n") == 2


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    store = RunStore(tmp_path / "run")
    good = make_record(point(64), "ok")
    store.append(good)
    with open(store.records_path, "a") as f:
        f.write(json.dumps(make_record(point(128), "ok"))[:40])  # killed mid-write
    assert read_records(store.records_path) == [good]
    reopened = RunStore(tmp_path / "run")
    assert reopened.torn_fragment is not None and (tmp_path / "run" / "records.torn").exists()
    late = make_record(point(256), "oom", "out of memory")
    reopened.append(late)
    assert reopened.records() == [good, late]  # the next append starts on a line of its own


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    store = RunStore(tmp_path / "run")
    store.append(make_record(point(64), "ok"))
    with open(store.records_path, "a") as f:
        f.write("garbage\n")
    store.append(make_record(point(128), "ok"))
    with pytest.raises(StoreError, match=r"records.jsonl:2"):
        store.records()


def test_resume_skips_finished_points(tmp_path):
    store = RunStore(tmp_path / "run")
    statuses = {64: "ok", 128: "oom", 256: "skipped", 512: "error", 1024: "timeout"}
    points = {n: point(n) for n in [*statuses, 2048]}
    for n, status in statuses.items():
        store.append(make_record(points[n], status))
    ids = [p.point_id for p in points.values()]
    assert store.pending(ids) == [points[2048].point_id]
    assert store.pending(ids, retry_failed=True) == [points[n].point_id for n in (512, 1024, 2048)]
    # A retried point that finished is not run a third time.
    store.append(make_record(points[512], "ok"))
    assert store.pending(ids, retry_failed=True) == [points[n].point_id for n in (1024, 2048)]
    assert latest_by_point(store.records())[points[512].point_id]["status"] == "ok"


def test_run_json_written_once_and_checked(tmp_path):
    store = RunStore(tmp_path / "run")
    meta = {"suite": "t", "profile": "cpu", "device": "cpu", "run_id": "cpu-cpu", "created_at": "then"}
    store.write_run_json(meta)
    kept = store.write_run_json({**meta, "created_at": "now"})
    assert kept["created_at"] == "then"
    assert json.loads(store.run_json_path.read_text())["created_at"] == "then"
    with pytest.raises(StoreError, match="profile='cpu' but this run has profile='gpu'"):
        store.write_run_json({**meta, "profile": "gpu"})


def test_run_ids():
    assert default_run_id("cpu", "cpu") == "cpu-cpu"
    assert default_run_id("gpu", "cuda") == "gpu-cuda"
    import datetime as dt

    assert fresh_run_id("cpu", "cpu", dt.datetime(2025, 1, 2, 3, 4, 5)) == "cpu-cpu-20250102-030405"


def test_default_run_dir_resumes_only_on_the_machine_kind_that_started_it(tmp_path):
    import json

    from bench.store import machine_run_id

    assert machine_run_id(tmp_path, "cpu-cpu", "AMD EPYC") == "cpu-cpu"  # nothing there yet
    (tmp_path / "cpu-cpu").mkdir()
    (tmp_path / "cpu-cpu" / "run.json").write_text(json.dumps({"environment": {"device_name": "AMD EPYC"}}))
    assert machine_run_id(tmp_path, "cpu-cpu", "AMD EPYC") == "cpu-cpu"
    assert machine_run_id(tmp_path, "cpu-cpu", "Intel(R) Xeon(R) Gold 6338") == "cpu-cpu-intel-r-xeon-r-gold-6338"
