"""SubmititExecutor: end to end through the command line on submitit's local cluster (real jobs,
real worker), one point at a time, and the sbatch script submitit writes from the --slurm-* flags."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import build_parser
from bench.executors.submitit_executor import JOB_GRACE_S, SubmititExecutor, slurm_options
from bench.executors.factory import make_executor
from bench.options import RunOptions
from bench.store import read_records
from tests.bench.conftest import lsh_point as point, small_suite

submitit = pytest.importorskip("submitit")
REPO_ROOT = Path(__file__).resolve().parents[2]
RAISES = 13


def stub_run_point(point, timeout_s, memory_limit_mib=None):
    """Stands in for run_point_subprocess inside the job: says when and how it ran."""
    start = time.time()
    if point.seq_len == RAISES:
        raise ValueError(f"stub failed on seq_len={point.seq_len}")
    time.sleep(0.3)
    return {"point_id": point.point_id, "status": "ok", "reason": None, "point": point.to_json(),
            "effective": {"pid": os.getpid(), "timeout_s": timeout_s, "start": start, "end": time.time(),
                          "threads": os.environ.get("BENCH_TORCH_THREADS")}}


def test_cli_runs_a_suite_as_local_submitit_jobs(tmp_path, write_suite):
    suite = write_suite(small_suite(studies={"kinds": {"grid": {"seq_len": [64]}}}))  # one real point
    cmd = [sys.executable, "-m", "bench", "run", str(suite), "--profile", "cpu", "--results-root", str(tmp_path),
           "--run-id", "r", "--executor", "submitit", "--submitit-cluster", "local", "--slurm-partition", "gpu",
           "--slurm-time-min", "10", "--slurm-cpus-per-task", "2", "--slurm-arg", "constraint=a100"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr
    [record] = read_records(tmp_path / "runs" / "small" / "r" / "records.jsonl")
    assert record["status"] == "ok" and record["metrics"]["fwd_ms_median"] > 0, record
    assert record["node"]["slurm_job_id"] and record["node"]["host"]
    assert record["node"]["torch_threads"] == record["effective"]["torch_threads"] == len(os.sched_getaffinity(0))
    assert list((tmp_path / "runs" / "small" / "r" / "submitit").glob("*_result.pkl"))  # the job's own files


def test_local_jobs_run_one_at_a_time_and_failures_are_rows(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job processes cannot import this module
    ex = SubmititExecutor(tmp_path / "jobs", 7.0, cluster="local", run_point=stub_run_point)
    records = {r["point_id"]: r for r in ex.run([point(32), point(64), point(RAISES), point(128)])}
    good = [records[point(n).point_id] for n in (32, 64, 128)]
    assert all(r["status"] == "ok" and r["effective"]["timeout_s"] == 7.0 for r in good)
    assert all(r["effective"]["pid"] != os.getpid() and r["node"]["slurm_job_id"] for r in good)
    spans = sorted((r["effective"]["start"], r["effective"]["end"]) for r in good)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # never two at once
    bad = records[point(RAISES).point_id]
    assert bad["status"] == "error" and bad["reason"].endswith("ValueError: stub failed on seq_len=13")
    assert "Traceback" in bad["traceback"]


def test_slurm_flags_reach_the_sbatch_script(tmp_path, monkeypatch):
    """What submitit would hand to sbatch: a whole node, the partition, time, CPUs, GPUs for CUDA
    points only, and any --slurm-arg. A stand-in `srun` lets submitit build its Slurm executor here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = build_parser().parse_args(
        ["run", "tiny", "--executor", "submitit", "--submitit-cluster", "slurm", "--slurm-partition", "gpu",
         "--slurm-cpus-per-task", "8", "--slurm-gpus-per-task", "2", "--slurm-arg", "constraint=a100",
         "--slurm-arg", "account=proj"])
    opts = RunOptions(executor=args.executor, submitit_cluster=args.submitit_cluster,
                      slurm_partition=args.slurm_partition, slurm_cpus_per_task=args.slurm_cpus_per_task,
                      slurm_gpus_per_task=args.slurm_gpus_per_task, slurm_args=tuple(args.slurm_arg))
    ex = make_executor(opts, timeout_s=600.0, run_dir=tmp_path)
    auto = ex._executor()
    assert auto.cluster == "slurm"
    lines = set(auto._executor._make_submission_file_text("cmd", "uid").splitlines())
    assert {"#SBATCH --exclusive", "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=8", "#SBATCH --nodes=1",
            "#SBATCH --constraint=a100", "#SBATCH --account=proj",
            f"#SBATCH --time={int((600 + JOB_GRACE_S) // 60)}"} <= lines
    auto.update_parameters(gpus_per_node=ex.num_gpus)  # what run() sets for a CUDA point
    assert "#SBATCH --gpus-per-node=2" in auto._executor._make_submission_file_text("cmd", "uid")


def test_slurm_options_and_bad_slurm_arg():
    assert slurm_options("p", 30, None, [("qos", "high")]) == {
        "slurm_partition": "p", "timeout_min": 30, "slurm_additional_parameters": {"qos": "high"}}
    out = subprocess.run([sys.executable, "-m", "bench", "run", "tiny", "--executor", "submitit",
                          "--slurm-arg", "novalue"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--slurm-arg: 'novalue' is not KEY=VALUE" in out.stderr
