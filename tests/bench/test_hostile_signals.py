"""Signals and hostile flags at the training entry points (issue 25, items 6, 7, 9): Ctrl-C (SIGINT to
the process group, as a terminal sends it) and SIGTERM (to the runner alone, as `timeout` or a
scheduler sends it) stop a training run of `python -m bench run` and of `python -m bench.duplication
run` with 130 / 143 and the grid runner's line, never a traceback; the duplication entry point refuses
the paper-scale gpu profile on a CPU as `bench run` does; --time-budget-s takes finite numbers >= 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.duplication.__main__ import main as duplication_main

from .conftest import REPO_ROOT

RESUME = "run the same command again to resume"


def tiny_duplication(tmp_path: Path) -> Path:
    """The shipped duplication suite at toy size, with a training far too long to finish in the test."""
    spec = yaml.safe_load((REPO_ROOT / "suites" / "duplication.yaml").read_text())
    spec["name"] = "tinydup"
    cpu = spec["profiles"]["cpu"]
    cpu["task"] = {"half_len": 8, "n_symbols": 4}
    cpu["model"].update(d_model=16, d_ff=16, n_heads=2, chunk_len=4)
    cpu["train"].update(steps=1_000_000, batch_size=2, warmup_steps=1, checkpoint_every=20, log_every=2, threads=1)
    cpu["eval"] = {"seed": 1, "batches": 1, "batch_size": 2}
    spec["train_models"], spec["eval_settings"] = spec["train_models"][:2], spec["eval_settings"][:2]
    del spec["profiles"]["gpu"]
    path = tmp_path / "tinydup.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


COMMANDS = {
    "bench run": lambda suite, root: [sys.executable, "-m", "bench", "run", str(suite), "--profile", "cpu",
                                      "--device", "cpu", "--results-root", str(root)],
    "bench.duplication run": lambda suite, root: [sys.executable, "-m", "bench.duplication", "run", "--suite",
                                                  str(suite), "--profile", "cpu", "--device", "cpu",
                                                  "--results-root", str(root)],
}


@pytest.mark.parametrize("how", ["SIGINT to the group", "SIGTERM"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_signal_stops_a_training_run_with_its_code_and_the_resume_line(tmp_path, command, how):
    root = tmp_path / "results"
    proc = subprocess.Popen(COMMANDS[command](tiny_duplication(tmp_path), root), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
    try:
        deadline = time.monotonic() + 120
        # A checkpoint on disk: the training is running in its worker.
        while not list(root.glob("runs/tinydup/*/checkpoints/*.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.2)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (143 if how == "SIGTERM" else 130), out
    assert "Traceback" not in out and RESUME in out, out
    assert ("terminated (SIGTERM)" if how == "SIGTERM" else "interrupted") in out


def test_the_duplication_entry_point_refuses_the_gpu_profile_on_a_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bench.options.cuda_available", lambda: False)
    root = tmp_path / "results"
    assert duplication_main(["run", "--profile", "gpu", "--results-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "--profile gpu: CUDA is not available" in err and not root.exists()


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "-inf", "soon"])
@pytest.mark.parametrize("entry", ["bench run", "bench.duplication run", "bench campaign"])
def test_a_time_budget_that_is_not_a_finite_number_of_seconds_is_refused(tmp_path, capsys, value, entry):
    root = tmp_path / "results"
    argv = {"bench run": ["run", "duplication", f"--time-budget-s={value}", "--results-root", str(root)],
            "bench.duplication run": ["run", f"--time-budget-s={value}", "--results-root", str(root)],
            "bench campaign": ["campaign", f"--slice-s={value}", "--dry-run", "--results-root", str(root)]}[entry]
    with pytest.raises(SystemExit) as exit_:
        (duplication_main if entry == "bench.duplication run" else main)(argv)
    assert exit_.value.code == 2
    assert repr(value) in capsys.readouterr().err and not root.exists()
