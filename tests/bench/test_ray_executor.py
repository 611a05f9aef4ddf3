"""RayExecutor on a local 2-CPU Ray instance, with the per-point runner replaced by a stub: every
point yields one record, each task runs in a fresh worker, failures become `error` rows."""
from __future__ import annotations

import os
import sys
import types

import pytest

from bench.executors.ray_executor import RayExecutor, failure_record
from bench.point import GridPoint

RAISES, CRASHES = 13, 17  # seq_len values that make the stub raise / kill its worker


def point(seq_len: int, device: str = "cpu") -> GridPoint:
    return GridPoint(suite="memory", workload="attention", device=device, dtype="float32", batch_size=1,
                     seq_len=seq_len, model={"attention": "lsh", "n_hashes": 2}, studies=("memory",))


def stub_run_point(point, timeout_s, memory_limit_mib=None):
    """Stands in for run_point_subprocess: a synthetic record saying where and how it ran."""
    if point.seq_len == RAISES:
        raise ValueError(f"stub failed on seq_len={point.seq_len}")
    if point.seq_len == CRASHES:
        os._exit(3)  # the worker process dies without a word
    return {
        "point_id": point.point_id, "run_id": None, "suite": point.suite, "studies": list(point.studies),
        "status": "ok", "reason": None, "point": point.to_json(), "params": {"seq_len": point.seq_len},
        "effective": {"worker_pid": os.getpid(), "timeout_s": timeout_s, "memory_limit_mib": memory_limit_mib},
        "metrics": {}, "wall_s": 0.0, "finished_at": "2026-01-01T00:00:00+00:00",
    }


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    import ray.cloudpickle

    # Workers cannot import this test module by name: ship the stub by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_every_point_gives_one_record_from_a_fresh_worker(ray_local):
    ok = [point(n) for n in (32, 64, 128, 256)]
    ex = RayExecutor(address=None, num_gpus=0, timeout_s=42.0, run_point=stub_run_point)
    records = list(ex.run(ok + [point(RAISES), point(CRASHES)]))
    by_id = {r["point_id"]: r for r in records}
    assert len(records) == 6 and set(by_id) == {p.point_id for p in ok} | {point(RAISES).point_id, point(CRASHES).point_id}
    good = [by_id[p.point_id] for p in ok]
    assert all(r["status"] == "ok" and r["effective"]["timeout_s"] == 42.0 for r in good)
    assert len({r["effective"]["worker_pid"] for r in good}) == len(ok)  # max_calls=1: never reused
    raised = by_id[point(RAISES).point_id]
    assert raised["status"] == "error" and "ValueError" in raised["reason"] and "seq_len=13" in raised["reason"]
    crashed = by_id[point(CRASHES).point_id]
    assert crashed["status"] == "error" and crashed["reason"].startswith("ray")
    assert crashed["params"]["seq_len"] == CRASHES and GridPoint.from_json(crashed["point"]) == point(CRASHES)
    assert ray_local.is_initialized()  # an instance the caller started is left running


def test_memory_limit_reaches_the_runner(ray_local):
    ex = RayExecutor(None, 0, 5.0, memory_limit_mib=512, run_point=stub_run_point)
    [record] = ex.run([point(8)])
    assert record["effective"]["memory_limit_mib"] == 512


def test_failure_record_follows_the_contract():
    p = point(1024)
    rec = failure_record(p, "ray: WorkerCrashedError: gone", traceback="x" * 5000)
    assert {"point_id", "run_id", "suite", "studies", "status", "reason", "point", "params",
            "effective", "metrics", "wall_s", "finished_at"} <= set(rec)
    assert rec["point_id"] == p.point_id and rec["status"] == "error" and rec["studies"] == ["memory"]
    assert rec["reason"] == "ray: WorkerCrashedError: gone" and GridPoint.from_json(rec["point"]) == p
    assert rec["params"]["seq_len"] == 1024 and rec["params"]["n_hashes"] == 2 and rec["params"]["device"] == "cpu"
    assert 0 < len(rec["traceback"]) < 5000


class FakeRef:
    """An ObjectRef stand-in: hashable by identity, holding the task's arguments."""

    def __init__(self, args):
        self.args = args


class FakeRay:
    """Just enough of `ray` to see how the executor starts, asks for resources and stops."""

    def __init__(self):
        self.inits, self.options, self.shutdowns, self.up = [], [], 0, False

    def is_initialized(self):
        return self.up

    def init(self, address=None, **kwargs):
        self.up = True
        self.inits.append((address, kwargs))

    def shutdown(self):
        self.up = False
        self.shutdowns += 1

    def remote(self, **decorator):
        fake = self

        class Task:
            def options(self, **opts):
                fake.options.append({**decorator, **opts})
                return self

            def remote(self, *args):
                return FakeRef(args)

        return lambda fn: Task()

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        p, timeout_s, limit, run = ref.args
        return run(p, timeout_s)

    def cancel(self, ref):
        pass


def test_resources_and_lifecycle_without_a_cluster(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(**{k: getattr(fake, k) for k in dir(fake) if not k.startswith("_")}))
    run = lambda p, t: {"point_id": p.point_id, "status": "ok"}  # noqa: E731
    ex = RayExecutor("ray://head:10001", num_gpus=1, timeout_s=9.0, run_point=run)
    records = list(ex.run([point(8, "cuda"), point(16, "cpu")]))
    assert [r["status"] for r in records] == ["ok", "ok"]
    [(address, kwargs)] = fake.inits
    assert address == "ray://head:10001" and kwargs == {"include_dashboard": False}
    assert [(o["num_gpus"], o["num_cpus"], o["max_calls"], o["max_retries"]) for o in fake.options] == [
        (1, 1.0, 1, 0), (0.0, 1.0, 1, 0)]  # a CPU point asks for no GPU
    assert fake.shutdowns == 1  # the executor started Ray, so it stops it


def test_a_wrong_record_becomes_an_error(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(**{k: getattr(fake, k) for k in dir(fake) if not k.startswith("_")}))
    ex = RayExecutor(None, 0, 1.0, run_point=lambda p, t: {"point_id": "someone-else"})
    [record] = ex.run([point(8)])
    assert record["status"] == "error" and "someone-else" in record["reason"]
    assert "PYTHONPATH" in fake.inits[0][1]["runtime_env"]["env_vars"]  # local workers can import bench


@pytest.mark.parametrize("kwargs, field", [({"num_gpus": -1}, "num_gpus"), ({"timeout_s": 0}, "timeout_s"),
                                           ({"num_cpus": 0}, "num_cpus")])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RayExecutor(None, **{"num_gpus": 0, "timeout_s": 1.0, **kwargs})


# ---- the Slurm sibling: SubmititExecutor, on submitit's local cluster ---------------------------

def test_submitit_local_jobs_give_the_same_records(tmp_path):
    pytest.importorskip("submitit")
    import cloudpickle

    from bench.executors.submitit_executor import SubmititExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job processes cannot import this module
    ex = SubmititExecutor(tmp_path / "jobs", 7.0, cluster="local", run_point=stub_run_point, poll_s=0.1)
    records = {r["point_id"]: r for r in ex.run([point(64), point(RAISES)])}
    good, bad = records[point(64).point_id], records[point(RAISES).point_id]
    assert good["status"] == "ok" and good["effective"]["timeout_s"] == 7.0 and good["effective"]["worker_pid"] != os.getpid()
    assert bad["status"] == "error" and bad["reason"].endswith("ValueError: stub failed on seq_len=13")
    assert "Traceback" in bad["traceback"]


def test_submitit_asks_slurm_for_gpus_only_for_cuda_points(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from bench.executors.submitit_executor import JOB_GRACE_S, SubmititExecutor

    class FakeJob:
        job_id = "1"

        def __init__(self, args):
            self.args = args

        def done(self):
            return True

        def result(self):
            p, timeout_s, limit, run = self.args
            return {"point_id": p.point_id, "status": "ok"}

    class FakeAuto:
        def __init__(self, folder, cluster=None):
            self.params, self.submitted = {}, []

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn, *args):
            self.submitted.append(dict(self.params))
            return FakeJob(args)

    monkeypatch.setattr(submitit, "AutoExecutor", FakeAuto)
    ex = SubmititExecutor(tmp_path, 600.0, num_gpus=1, slurm={"slurm_partition": "gpu"}, poll_s=0)
    created = []
    monkeypatch.setattr(ex, "_executor", lambda orig=ex._executor: created.append(orig()) or created[-1])
    assert [r["status"] for r in ex.run([point(8, "cuda"), point(8, "cpu")])] == ["ok", "ok"]
    first, second = created[0].submitted
    assert first["gpus_per_node"] == 1 and second["gpus_per_node"] == 0
    assert first["slurm_partition"] == "gpu" and first["timeout_min"] * 60 >= 600 + JOB_GRACE_S
