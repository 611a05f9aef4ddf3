"""Results store: append-only records, torn last line, resume, run.json written once."""
from __future__ import annotations

import json
import math

import pytest

from bench.point import GridPoint
from bench.plans.progress import run_progress as progress
from bench.store import (
    RunLock, RunStore, StoreError, check_name, fresh_run_id, inside, jsonable, latest_by_point, load_run_json, locked,
    make_record, plan_key, read_records, reference_dir, same_spec,
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


def test_a_watchdog_kill_at_the_users_limit_is_pending_on_retry_and_keeps_a_run_unfinished(tmp_path):
    """One rule for the runner and for choosing the run that --retry-failed continues."""
    store = RunStore(tmp_path / "run")
    user = {"oom_detected_by": "rss_watchdog", "memory_limit_mib": 100, "memory_limit_set_by": "user"}
    default = {**user, "memory_limit_set_by": "default"}
    a, b, c = point(64), point(128), point(256)
    store.append(make_record(a, "oom", "host RSS over the limit", effective=user))
    store.append(make_record(b, "oom", "host RSS over the limit", effective=default))
    store.append(make_record(c, "oom", "CUDA out of memory", effective={"oom_detected_by": "exception"}))
    ids = [a.point_id, b.point_id, c.point_id]
    assert store.pending(ids) == []
    assert store.pending(ids, retry_failed=True) == [a.point_id]
    meta = {"planned": ids}
    assert progress(store.run_dir, meta) == (3, 3)
    assert progress(store.run_dir, meta, retry_failed=True) == (2, 3)


def test_run_json_written_once_and_checked(tmp_path):
    store = RunStore(tmp_path / "run")
    meta = {"suite": "t", "profile": "cpu", "device": "cpu", "run_id": "cpu-cpu", "created_at": "then"}
    store.write_run_json(meta)
    kept = store.write_run_json({**meta, "created_at": "now"})
    assert kept["created_at"] == "then"
    assert json.loads(store.run_json_path.read_text())["created_at"] == "then"
    with pytest.raises(StoreError, match="profile='cpu' but this run has profile='gpu'"):
        store.write_run_json({**meta, "profile": "gpu"})


def test_run_json_of_another_host_is_refused(tmp_path):
    store = RunStore(tmp_path / "run")
    meta = {"suite": "t", "profile": "cpu", "device": "cpu", "host_id": "aaaa"}
    store.write_run_json(meta)
    with pytest.raises(StoreError, match="host_id='aaaa' but this run has host_id='bbbb'"):
        store.write_run_json({**meta, "host_id": "bbbb"})


def test_run_ids_and_layout(tmp_path):
    import datetime as dt

    assert fresh_run_id("cpu", "cpu", dt.datetime(2025, 1, 2, 3, 4, 5)) == "cpu-cpu-20250102-030405"
    assert reference_dir(tmp_path, "memory", "cpu") == tmp_path / "memory" / "reference-cpu"


@pytest.mark.parametrize("bad", [".", "..", "../../escape", "a/b", "/abs", ".hidden", "a..b", "a\\b", "", "x" * 200])
def test_run_ids_that_are_or_hold_path_components_are_refused(bad):
    with pytest.raises(StoreError, match="--run-id="):
        check_name("--run-id", bad)


def test_run_ids_may_not_pose_as_references():
    assert check_name("--run-id", "cpu-cpu-20250102-030405.v2") == "cpu-cpu-20250102-030405.v2"
    with pytest.raises(StoreError, match="kept for references"):
        check_name("--run-id", "reference-cpu")


def test_a_run_folder_must_resolve_inside_the_results_root(tmp_path):
    (tmp_path / "root").mkdir()
    assert inside(tmp_path / "root" / "a", tmp_path / "root") == tmp_path / "root" / "a"
    with pytest.raises(StoreError, match="outside the results folder"):
        inside(tmp_path / "root" / ".." / "escape", tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(StoreError, match="outside the results folder"):
        inside(tmp_path / "root" / "link" / "x", tmp_path / "root")


def test_plan_key_ignores_where_the_suite_file_lives():
    spec = {"name": "m", "path": "/one/checkout/suites/m.yaml", "description": "a", "studies": {"s": {"grid": {"x": [1]}}}}
    moved = {**spec, "path": "/another/clone/suites/m.yaml", "description": "reworded"}
    assert plan_key(spec, ["p1", "p2"]) == plan_key(moved, ["p2", "p1"])
    assert same_spec(spec, {**spec, "path": "suites/m.yaml"})
    changed = {**spec, "studies": {"s": {"grid": {"x": [1, 2]}}}}
    assert plan_key(changed, ["p1", "p2"]) != plan_key(spec, ["p1", "p2"]) != plan_key(spec, ["p1"])
    assert not same_spec(spec, changed)


def test_a_run_folder_has_one_writer(tmp_path):
    import os
    import platform

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert locked(run_dir) is None
    with RunLock(run_dir):
        holder = locked(run_dir)
        assert f"pid {os.getpid()} on host {platform.node()}" in holder
        with pytest.raises(StoreError, match=f"in use by pid {os.getpid()} on host {platform.node()}"):
            with RunLock(run_dir):
                pass
    assert locked(run_dir) is None
    with RunLock(run_dir):  # released: the next writer gets it
        pass


def test_a_full_disk_while_appending_is_a_store_error_and_keeps_the_records(tmp_path, monkeypatch):
    import builtins
    import errno

    import bench.store as store_mod

    store = RunStore(tmp_path / "run")
    first = make_record(point(64), "ok")
    store.append(first)
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half a line reaches the disk, then it is full
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "a" in mode else f

    monkeypatch.setattr(store_mod, "open", full_open, raising=False)
    with pytest.raises(StoreError, match="disk is full.*records before it are kept"):
        store.append(make_record(point(128), "ok"))
    monkeypatch.undo()
    reopened = RunStore(tmp_path / "run")
    assert reopened.torn_fragment is not None and reopened.records() == [first]


def test_a_corrupt_run_json_is_a_store_error(tmp_path):
    (tmp_path / "run.json").write_text('{"suite": "t", "prof')
    with pytest.raises(StoreError, match="run.json: cannot be read as JSON"):
        load_run_json(tmp_path)
    with pytest.raises(StoreError, match="no run.json"):
        load_run_json(tmp_path / "elsewhere")
