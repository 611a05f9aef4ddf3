"""A configuration's own memory budget and per-probe timeout (`profiles.<p>.config_budget`): resolved
onto it, refused when it names no config, carried through run.json and the same-plan check, and used
by every probe of it: its id, its record, the worker's budget, the RSS watchdog and the timeout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.capacity.runner import finish_record, probe_id
from bench.capacity.searches import config_outcomes, search_for
from bench.capacity.spec import CapacityPlan, load_capacity_suite, resolve
from bench.cli import main
from bench.options import RunError, RunOptions
from bench.plans.capacity import CapacitySearchPlan, ProbeExecutor, ProbeUnit
from bench.store import make_record, read_records
from bench.suite import SuiteError

from .conftest import REPO_ROOT

SUITE = """\
kind: capacity
name: capbudget
base: {d_model: 16, n_heads: 2, d_ff: 32, n_layers: 1, vocab_size: 32, chunk_len: 16, reversible: false, dtype: float32}
search: {over: seq_len, start: 64, max_value: 256, resolution: 0.5, multiple: 64}
timeout_s: 120
configs:
  - {name: roomy, base: {attention: full}}
  - {name: tight, base: {attention: full}}
  - {name: big, base: {attention: lsh, n_layers: 2}}
profiles:
  cpu:
    memory_budget_gib: 4
    device: cpu
    configs: [roomy, tight]
    config_budget: {tight: {memory_budget_gib: 0.125, timeout_s: 3}, big: {memory_budget_gib: 8}}
"""


def write(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "capbudget.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def plan_of(tmp_path: Path, text: str = SUITE, only=None) -> CapacityPlan:
    path, spec = load_capacity_suite(write(tmp_path, text))
    return resolve(spec, "cpu", "cpu", path, only=only)


def test_a_configs_own_budget_and_timeout_reach_its_search_point_id_and_record(tmp_path):
    plan = plan_of(tmp_path)
    roomy, tight = plan.configs
    assert (tight.memory_budget_gib, tight.timeout_s) == (0.125, 3.0)
    assert (roomy.memory_budget_gib, roomy.timeout_s) == (None, None)
    assert (search_for(plan, tight).budget_mib, search_for(plan, tight).timeout_s) == (128.0, 3.0)
    assert (search_for(plan, roomy).budget_mib, search_for(plan, roomy).timeout_s) == (4096.0, 120.0)
    assert plan.point(tight, 64).timeout_s == 3.0 and plan.point(roomy, 64).timeout_s == 120.0
    # the same model at the same length: the probes differ by the budget they run under alone
    assert plan.point(tight, 64).point_id == plan.point(roomy, 64).point_id
    assert probe_id(plan, tight, 64) != probe_id(plan, roomy, 64)
    record = finish_record(make_record(plan.point(tight, 64), "ok", metrics={"peak_rss_mib": 100.0}),
                           plan, tight, 64, "r")
    assert record["point_id"] == probe_id(plan, tight, 64) and record["params"]["memory_budget_gib"] == 0.125
    under_profile = {**record, "params": {**record["params"], "memory_budget_gib": 4.0}}
    assert list(config_outcomes([record], plan, tight)) == [64]
    assert config_outcomes([under_profile], plan, tight) == {}  # not a probe of this budget
    assert CapacityPlan.from_json(plan.to_json()) == plan  # run.json keeps them


def test_only_searches_a_config_the_profiles_list_leaves_out_under_its_own_budget(tmp_path):
    assert [c.label for c in plan_of(tmp_path).configs] == ["roomy", "tight"]
    big, = plan_of(tmp_path, only=["big"]).configs
    assert big.label == "big" and search_for(plan_of(tmp_path, only=["big"]), big).budget_mib == 8192.0
    plan = CapacitySearchPlan.for_options(write(tmp_path), RunOptions(profile="cpu", only=("big",)), has_cuda=False)
    assert [(c.label, c.memory_budget_gib, c.timeout_s) for c in plan.resolved.configs] == [("big", 8.0, None)]
    with pytest.raises(RunError, match="--only bgi: no such config"):
        CapacitySearchPlan.for_options(write(tmp_path), RunOptions(profile="cpu", only=("bgi",)), has_cuda=False)


@pytest.mark.parametrize("change,needle", [
    (("{tight: {memory_budget_gib", "{tihgt: {memory_budget_gib"), "profiles.cpu.config_budget: no such config ['tihgt']"),
    (("memory_budget_gib: 0.125", "memory_budget_gib: 0"), "profiles.cpu.config_budget.tight.memory_budget_gib"),
    (("timeout_s: 3}", "timeout_s: -3}"), "profiles.cpu.config_budget.tight.timeout_s"),
    (("timeout_s: 3}", "timeout: 3}"), "profiles.cpu.config_budget.tight.timeout: unknown key"),
])
def test_a_bad_config_budget_is_refused_naming_the_field(tmp_path, capsys, change, needle):
    path = write(tmp_path, SUITE.replace(*change))
    with pytest.raises(SuiteError, match="config_budget"):
        load_capacity_suite(path)
    code = main(["run", str(path), "--profile", "cpu", "--results-root", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("change,what", [
    (("memory_budget_gib: 0.125", "memory_budget_gib: 0.25"), "tight's memory_budget_gib=0.125"),
    (("timeout_s: 3}", "timeout_s: 4}"), "tight's timeout_s=3.0"),
])
def test_the_same_plan_check_refuses_a_changed_config_budget(tmp_path, change, what):
    kept = {"suite_spec": plan_of(tmp_path).to_json()}
    CapacitySearchPlan(plan_of(tmp_path), tmp_path).check_kept(kept, tmp_path, print)  # unchanged: the same plan
    changed = CapacitySearchPlan(plan_of(tmp_path, SUITE.replace(*change)), tmp_path)
    with pytest.raises(RunError, match=what):
        changed.check_kept(kept, tmp_path, print)
    # a run.json written before configurations had budgets of their own: theirs were the profile's
    old = {"suite_spec": {**kept["suite_spec"], "configs": [
        {k: v for k, v in c.items() if k not in ("memory_budget_gib", "timeout_s")} for c in kept["suite_spec"]["configs"]]}}
    no_own = "\n".join(line for line in SUITE.splitlines() if "config_budget" not in line)
    CapacitySearchPlan(plan_of(tmp_path, no_own), tmp_path).check_kept(old, tmp_path, print)


STUB = textwrap.dedent(
    """
    import os
    import time

    from bench.capacity.budget import BUDGET_ENV


    def measure(point, timing=True):
        # seq_len 64: report the budget the worker got; 128: hold 400 MiB resident; 192: sleep
        if point.seq_len == 128:
            ballast = b"x" * (400 * 2**20)
            time.sleep(2.0)
        if point.seq_len == 192:
            time.sleep(30)
        return {"metrics": {"budget_env_mib": float(os.environ[BUDGET_ENV])}}
    """
)


def test_each_probe_runs_under_its_configs_budget_watchdog_and_timeout(tmp_path, monkeypatch):
    (tmp_path / "stub_probe.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("BENCH_CAPACITY_BUDGET_MIB", raising=False)
    plan = plan_of(tmp_path)
    roomy, tight = plan.configs
    units = [ProbeUnit(c, v, plan.point(c, v)) for c, v in
             ((roomy, 64), (tight, 64), (roomy, 128), (tight, 128), (tight, 192))]
    executor = ProbeExecutor(plan, None, measure="stub_probe:measure")
    try:
        got = {(u.config.label, u.value): r for u, r in executor.run(units)}
    finally:
        executor.close()
    assert got[("roomy", 64)]["metrics"]["budget_env_mib"] == 4096.0  # one fork server, a budget per probe
    assert got[("tight", 64)]["metrics"]["budget_env_mib"] == 128.0
    assert got[("roomy", 128)]["status"] == "ok"  # 400 MiB under the profile's 4 GiB
    hog = got[("tight", 128)]
    assert hog["status"] == "oom" and "memory_limit_mib=128" in hog["reason"], hog
    slow = got[("tight", 192)]
    assert slow["status"] == "timeout" and "timeout_s=3" in slow["reason"], slow
    assert "BENCH_CAPACITY_BUDGET_MIB" not in os.environ  # handed per request, not set in the runner


def test_a_tiny_real_probe_fails_under_its_configs_budget_and_fits_the_profiles(tmp_path):
    plan = plan_of(tmp_path)
    roomy, tight = plan.configs
    searched = CapacitySearchPlan(plan, tmp_path, say=lambda *a: None)
    searched.start([], retry_failed=False)
    executor = searched.executor(RunOptions(profile="cpu"), tmp_path / "run-1", print)
    try:
        got = {u.config.label: searched.tell(u, r) for u, r in executor.run(
            [ProbeUnit(c, 64, plan.point(c, 64)) for c in (roomy, tight)])}
    finally:
        executor.close()
    fits, fails = got["roomy"], got["tight"]
    assert fits["status"] == "ok" and fits["params"]["memory_budget_gib"] == 4.0, fits
    assert fits["metrics"]["peak_rss_mib"] > 128  # a torch worker: over the tight budget, the one it failed
    assert fails["status"] == "oom" and fails["params"]["memory_budget_gib"] == 0.125, fails
    assert fails["point_id"] == probe_id(plan, tight, 64) and fails["run_id"] == "run-1"
    assert "128" in fails["reason"]  # the watchdog's limit or the probe's own peak check: its budget


E2E = """\
kind: capacity
name: capown
base: {d_model: 16, n_heads: 2, d_ff: 32, n_layers: 1, vocab_size: 32, reversible: false, dtype: float32}
search: {over: seq_len, start: 256, max_value: 512, resolution: 0.5, multiple: 64}
timeout_s: 120
configs:
  - {name: small, base: {attention: full}}
  - {name: extra, base: {attention: full, n_layers: 2}}
profiles:
  cpu: {memory_budget_gib: 2, device: cpu, configs: [small], config_budget: {extra: {memory_budget_gib: 3, timeout_s: 60}}}
"""


def test_run_only_a_config_left_out_of_the_profile_under_its_own_budget(tmp_path):
    suite = tmp_path / "capown.yaml"
    suite.write_text(E2E)
    root = tmp_path / "results"
    cli = [sys.executable, "-m", "bench", "run", str(suite), "--profile", "cpu", "--only", "extra",
           "--results-root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cli, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "extra: 3 GiB, 60 s per probe" in done.stdout, done.stdout[-2000:]
    run_dir, = (root / "runs" / "capown").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    plan = CapacityPlan.from_json(meta["suite_spec"])
    extra, = plan.configs
    assert (extra.label, extra.memory_budget_gib, extra.timeout_s) == ("extra", 3.0, 60.0)
    records = read_records(run_dir / "records.jsonl")
    assert records and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["params"]["config"] == "extra" and r["params"]["memory_budget_gib"] == 3.0
        assert r["point_id"] == probe_id(plan, extra, r["params"]["seq_len"])
    findings = (run_dir / "report.md").read_text()
    assert "`extra` trained 512 tokens under 3 GiB (max_value (search cap), one step 0.0" in findings  # its budget, not 2
    suite.write_text(E2E.replace("memory_budget_gib: 3,", "memory_budget_gib: 2.5,"))
    again = subprocess.run([*cli, "--run-id", run_dir.name], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2 and "extra's memory_budget_gib=3.0" in again.stderr, again.stderr[-2000:]
