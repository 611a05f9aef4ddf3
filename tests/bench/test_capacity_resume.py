"""A real capacity search through `python -m bench run`, killed with SIGKILL mid-search and rerun:
no probe lost, none repeated, the probes exactly the planner's sequence; OOM probes are status rows.
Tiny sizes: naive full attention, whose L x L scores outgrow the budget within a few doublings."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.capacity.planner import Done, next_probe
from bench.capacity.report import capacity_frame, plan_from_meta
from bench.capacity.runner import search_outcomes
from bench.capacity.searches import search_for
from bench.store import read_records

from .conftest import REPO_ROOT

SUITE = """\
kind: capacity
name: capkill
base: {d_model: 16, n_heads: 2, d_ff: 32, n_layers: 1, vocab_size: 32, reversible: false, dtype: float32}
search: {over: seq_len, start: 1024, max_value: 32768, resolution: 0.5, multiple: 256}
timeout_s: 120
configs:
  - {name: full, base: {attention: full}}
profiles:
  cpu: {memory_budget_gib: 0.6, device: cpu}
"""


def _cli(suite: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", str(suite), "--profile", "cpu", "--results-root", str(root)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_kill_mid_search_then_rerun_loses_and_repeats_no_probe(tmp_path):
    suite = tmp_path / "capkill.yaml"
    suite.write_text(SUITE)
    root = tmp_path / "results"
    runs = root / "runs" / "capkill"
    proc = subprocess.Popen(_cli(suite, root), cwd=REPO_ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    records_path = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(runs.glob("*/records.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            records_path = found[0]
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)  # mid-search: the next probe's worker may be running
    proc.wait()
    before = read_records(records_path)
    assert len(before) >= 2

    done = subprocess.run(_cli(suite, root), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {records_path.parent}" in " ".join(done.stdout.split()), done.stdout[-2000:]  # said so
    assert [p.parent for p in runs.glob("*/records.jsonl")] == [records_path.parent]  # no second run
    records = read_records(records_path)
    assert records[: len(before)] == before  # append-only
    values = [r["params"]["seq_len"] for r in records]
    assert not [v for v, n in Counter(values).items() if n > 1], f"probe repeated: {values}"

    meta = json.loads((records_path.parent / "run.json").read_text())
    plan = plan_from_meta(meta)
    result = next_probe(search_for(plan, plan.configs[0]), search_outcomes(records, plan, plan.configs[0]))
    assert isinstance(result, Done)
    assert list(result.probes) == values  # exactly the planner's sequence: nothing lost, nothing extra

    for r in records:
        assert r["status"] in ("ok", "oom")
        assert r["params"]["memory_budget_gib"] == 0.6
        assert r["params"]["budget_enforcement"] == "rss_watchdog+peak_rss"
    ooms = [r for r in records if r["status"] == "oom"]
    assert ooms, "32768^2 scores cannot fit 0.6 GiB: some probe must be an oom row"
    assert all(r["effective"]["oom_detected_by"] in ("rss_watchdog", "peak_rss", "cpu_allocator") for r in ooms)

    table = capacity_frame(meta, records)
    assert table.loc[0, "longest_seq_len"] == result.longest
    assert (records_path.parent / "report.md").is_file() and (records_path.parent / "capacity.png").is_file()


def test_a_time_budget_slices_the_search_and_the_rerun_finishes_it(tmp_path):
    """`--time-budget-s 0` (as `make bench-capacity PROFILE=gpu` passes 540 for one device command):
    one probe, then it stops and says how to resume; the same command without a budget continues the
    same run, and every probe is the planner's, none repeated."""
    suite = tmp_path / "capkill.yaml"
    suite.write_text(SUITE)
    root = tmp_path / "results"
    first = subprocess.run([*_cli(suite, root), "--time-budget-s", "0"], cwd=REPO_ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert "time budget of 0 s spent; run the same command again to resume" in " ".join(first.stdout.split())
    (records_path,) = (root / "runs" / "capkill").glob("*/records.jsonl")
    assert len(read_records(records_path)) == 1
    done = subprocess.run(_cli(suite, root), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_records(records_path)
    plan = plan_from_meta(json.loads((records_path.parent / "run.json").read_text()))
    result = next_probe(search_for(plan, plan.configs[0]), search_outcomes(records, plan, plan.configs[0]))
    assert isinstance(result, Done) and list(result.probes) == [r["params"]["seq_len"] for r in records]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_bench_capacity_slices_the_gpu_profile_only():
    lines = {p: [line for line in subprocess.run(
        ["make", "-n", "--no-print-directory", "bench-capacity", f"PROFILE={p}"], cwd=REPO_ROOT, capture_output=True,
        text=True, check=True).stdout.splitlines() if "bench run capacity" in line][-1].strip() for p in ("gpu", "cpu")}
    assert lines["gpu"].endswith("-m bench run capacity --profile gpu --time-budget-s 540")
    assert lines["cpu"].endswith("-m bench run capacity --profile cpu")
