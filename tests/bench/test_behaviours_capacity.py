"""`--retry-failed` for a capacity suite, through `python -m bench run` (bench.cli.main) on a real
one-probe search: a probe that ended in `error` or `timeout` is not done under the flag, for the
run's progress and for the choice of the run to continue, as for a grid point; without the flag it
is final. The failed probe is the real probe's record rewritten as the worker writes a failure."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import read_records

from .test_behaviours_runs import run_folders, said

SUITE = """\
kind: capacity
name: capretry
base: {d_model: 16, n_heads: 2, d_ff: 32, n_layers: 1, vocab_size: 32, reversible: false, dtype: float32}
search: {over: seq_len, start: 128, max_value: 128, resolution: 0.5, multiple: 128}
timeout_s: 120
configs:
  - {name: full, base: {attention: full}}
profiles:
  cpu: {memory_budget_gib: 2, device: cpu}
"""
FAILURES = {
    "error": "RuntimeError: the worker failed (simulated)",
    "timeout": "exceeded timeout_s=120 after 120.2 s; killed",
}


class EnvironmentRestored:
    """The capacity runner sets its budget in os.environ for its probes' fork server: put it back."""

    def __enter__(self):
        self.saved = dict(os.environ)

    def __exit__(self, *exc):
        for key in set(os.environ) - set(self.saved):
            del os.environ[key]
        os.environ.update(self.saved)


def bench(suite: Path, root: Path, *args: str) -> int:
    with EnvironmentRestored():
        return main(["run", str(suite), "--profile", "cpu", "--results-root", str(root), *args])


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, Path]:
    """The one-probe search run once: (suite file, run folder); its probe fit."""
    tmp = tmp_path_factory.mktemp("capacity")
    suite = tmp / "capretry.yaml"
    suite.write_text(SUITE)
    assert bench(suite, tmp / "results") == 0
    (run_dir,) = run_folders(tmp / "results", "capretry")
    assert [(r["status"], r["params"]["seq_len"]) for r in read_records(run_dir / "records.jsonl")] == [("ok", 128)]
    return suite, run_dir


def failed_copy(run_dir: Path, root: Path, status: str) -> tuple[Path, dict]:
    """The run under another results root, its probe ended in `status` instead."""
    dst = root / "runs" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    (probe,) = read_records(dst / "records.jsonl")
    failed = {**probe, "status": status, "reason": FAILURES[status], "metrics": {}, "effective": {}}
    (dst / "records.jsonl").write_text(json.dumps(failed) + "\n")
    return dst, failed


def check_retry_failed_continues_it(suite: Path, root: Path, run_dir: Path, failed: dict, capsys) -> None:
    capsys.readouterr()
    assert bench(suite, root, "--run-id", run_dir.name) == 0  # without the flag the failure is final
    out = capsys.readouterr().out
    assert "NOTHING MEASURED" in out and "1 of 1 points done" in out, out[-3000:]
    # With it the run has a search left: this run is continued (named), not a new one begun. The
    # time budget of 0 s stops at the first probe (before it, or after it, as the runner decides).
    assert bench(suite, root, "--retry-failed", "--time-budget-s", "0") == 0
    out = capsys.readouterr().out
    assert said(out, run_dir) and "0 of 1 points done" in out, out[-3000:]
    assert run_folders(root, "capretry") == [run_dir]
    records = read_records(run_dir / "records.jsonl")
    assert records[0] == failed and len(records) <= 2 and {r["point_id"] for r in records} == {failed["point_id"]}


def test_an_errored_probe_is_not_done_under_retry_failed_and_is_probed_again(searched, tmp_path, capsys):
    suite, original = searched
    root = tmp_path / "results"
    run_dir, failed = failed_copy(original, root, "error")
    check_retry_failed_continues_it(suite, root, run_dir, failed, capsys)
    assert bench(suite, root, "--run-id", run_dir.name, "--retry-failed") == 0  # the probe, if not yet run
    records = read_records(run_dir / "records.jsonl")
    assert [(r["status"], r["params"]["seq_len"]) for r in records] == [("error", 128), ("ok", 128)]
    assert records[1]["point_id"] == failed["point_id"]  # the same probe, run again once
    assert run_folders(root, "capretry") == [run_dir]


def test_a_timed_out_probe_is_not_done_under_retry_failed(searched, tmp_path, capsys):
    suite, original = searched
    root = tmp_path / "results"
    run_dir, failed = failed_copy(original, root, "timeout")
    check_retry_failed_continues_it(suite, root, run_dir, failed, capsys)
