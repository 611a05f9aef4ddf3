"""Training units run in fresh worker processes of the fork server, like grid points: a training
whose worker is SIGKILLed (as the kernel's OOM killer would) is an `error` row, the run goes on to
the other models and their evaluations, and a rerun with --retry-failed resumes it from its
checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from bench.store import read_records
from bench.training.checkpoint import load_checkpoint

from .conftest import REPO_ROOT

STEPS = 400
SUITE = {
    "kind": "duplication",
    "name": "dupkill",
    "train_models": [{"name": "full", "attention": "full"}, {"name": "lsh-2", "attention": "lsh", "n_hashes": 2}],
    "eval_settings": [{"name": "full", "attention": "full"}, {"name": "lsh-1", "attention": "lsh", "n_hashes": 1}],
    "profiles": {"cpu": {
        "task": {"half_len": 8, "n_symbols": 5},
        "model": {"d_model": 32, "d_ff": 32, "n_heads": 2, "chunk_len": 4, "reversible": False},
        "train": {"steps": STEPS, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 10,
                  "log_every": 5, "seed": 0, "threads": 1},
        "eval": {"seed": 1, "batches": 1, "batch_size": 4},
    }},
}


def _cmd(suite: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", "run", str(suite), "--profile", "cpu", "--results-root", str(root), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _kill_training_worker(proc: subprocess.Popen, root: Path, timeout_s: float = 240) -> int:
    """SIGKILL the worker (the fork server's child) training `full` once its checkpoint is short of
    the end; returns the checkpoint's step. The runner itself is left alone."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        assert proc.poll() is None, "the run ended before its training could be killed"
        for ckpt in root.glob("runs/dupkill/*/checkpoints/dup-train-full.pt"):
            try:
                payload = load_checkpoint(ckpt)
            except (EOFError, RuntimeError, FileNotFoundError):
                continue
            if payload["finished"]:
                raise AssertionError("the training finished before its worker could be killed")
            workers = [w for server in psutil.Process(proc.pid).children() for w in server.children()]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                return int(payload["step"])
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def test_a_killed_training_worker_is_a_row_the_run_goes_on_and_a_rerun_resumes(tmp_path):
    suite = tmp_path / "dupkill.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    root = tmp_path / "results"
    proc = subprocess.Popen(_cmd(suite, root), cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    step = _kill_training_worker(proc, root)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]  # the run went on and finished with its report
    (run_dir,) = (root / "runs" / "dupkill").iterdir()
    first = {r["point_id"]: r for r in read_records(run_dir / "records.jsonl")}
    killed = first["dup-train-full"]
    assert killed["status"] == "error" and "killed by SIGKILL" in killed["reason"], killed["reason"]
    assert first["dup-train-lsh-2"]["status"] == "ok"  # the next model trained in a worker of its own
    assert first["dup-eval-lsh-2-as-full"]["status"] == "ok"
    assert first["dup-eval-full-as-full"]["status"] == "skipped"
    assert json.loads((run_dir / "run.json").read_text())["kind"] == "duplication"

    again = subprocess.run(_cmd(suite, root, "--retry-failed"), cwd=REPO_ROOT, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert f"resuming {run_dir}" in " ".join(again.stdout.split())  # the same run folder
    resumed_at = int(again.stdout.split("resuming dup-train-full at step ")[1].split()[0])
    assert resumed_at >= step > 0  # from its checkpoint, not from step 0
    records = read_records(run_dir / "records.jsonl")
    latest = {r["point_id"]: r for r in records}
    assert latest["dup-train-full"]["status"] == "ok" and latest["dup-train-full"]["metrics"]["steps_done"] == STEPS
    assert all(latest[f"dup-eval-full-as-{e}"]["status"] == "ok" for e in ("full", "lsh-1"))
    assert [r["point_id"] for r in records].count("dup-train-lsh-2") == 1  # a finished model is not retrained
