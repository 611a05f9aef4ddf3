"""A capacity profile's fixed glibc mmap threshold (`profiles.<p>.mmap_threshold_kib`): refused out of
range naming the field, carried by the plan, run.json, the same-plan check, each probe's id, record and
worker, and applied in the worker, where it returns a freed large block to the kernel that glibc's
dynamic threshold would have kept resident."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.capacity.budget import BUDGET_ENV, MMAP_THRESHOLD_ENV
from bench.capacity.report import caption
from bench.capacity.runner import finish_record, probe_env, probe_id
from bench.capacity.spec import CapacityPlan, load_capacity_suite, resolve
from bench.cli import main
from bench.options import RunError
from bench.plans.capacity import CapacitySearchPlan
from bench.store import make_record
from bench.suite import SuiteError

from .conftest import REPO_ROOT

SUITE = """\
kind: capacity
name: capmmap
base: {d_model: 16, n_heads: 2, d_ff: 32, n_layers: 1, vocab_size: 32, chunk_len: 16, reversible: true, dtype: float32}
search: {over: seq_len, start: 64, max_value: 256, resolution: 0.5, multiple: 64}
timeout_s: 120
configs:
  - {name: lsh, base: {attention: lsh, n_hashes: 1}}
profiles:
  cpu: {memory_budget_gib: 4, device: cpu, mmap_threshold_kib: 128}
"""
UNSET = SUITE.replace(", mmap_threshold_kib: 128", "")


def plan_of(tmp_path: Path, text: str = SUITE) -> CapacityPlan:
    path = tmp_path / "capmmap.yaml"
    path.write_text(text)
    path, spec = load_capacity_suite(path)
    return resolve(spec, "cpu", "cpu", path)


def test_the_threshold_reaches_run_json_the_probes_id_record_and_worker(tmp_path):
    plan, unset = plan_of(tmp_path), plan_of(tmp_path, UNSET)
    (config,) = plan.configs
    assert plan.mmap_threshold_kib == 128 and unset.mmap_threshold_kib is None
    assert CapacityPlan.from_json(plan.to_json()) == plan
    old_json = {k: v for k, v in unset.to_json().items() if k != "mmap_threshold_kib"}  # a run.json before it
    assert CapacityPlan.from_json(old_json) == unset
    assert probe_env(plan, config) == {BUDGET_ENV: "4096", MMAP_THRESHOLD_ENV: "128"}
    assert probe_env(unset, config) == {BUDGET_ENV: "4096"}
    # another measurement, another probe; without the setting, the id a probe had before it existed
    assert probe_id(plan, config, 64) != probe_id(unset, config, 64)
    blob = json.dumps({**unset.point(config, 64).canonical(), "memory_budget_gib": 4.0}, sort_keys=True)
    assert probe_id(unset, config, 64) == hashlib.sha1(blob.encode()).hexdigest()[:12]
    record = finish_record(make_record(plan.point(config, 64), "ok", metrics={"peak_rss_mib": 300.0}),
                           plan, config, 64, "r")
    assert record["params"]["mmap_threshold_kib"] == 128 and record["point_id"] == probe_id(plan, config, 64)


@pytest.mark.parametrize("value,needle", [
    ("0", "profiles.cpu.mmap_threshold_kib"),
    ("65536", "profiles.cpu.mmap_threshold_kib"),  # above glibc's 32 MiB: mallopt would refuse it
    ("lots", "profiles.cpu.mmap_threshold_kib"),
])
def test_a_bad_threshold_is_refused_naming_the_field(tmp_path, capsys, value, needle):
    path = tmp_path / "capmmap.yaml"
    path.write_text(SUITE.replace("mmap_threshold_kib: 128", f"mmap_threshold_kib: {value}"))
    with pytest.raises(SuiteError, match="mmap_threshold_kib"):
        load_capacity_suite(path)
    code = main(["run", str(path), "--profile", "cpu", "--results-root", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "results").exists()


def test_the_same_plan_check_refuses_a_changed_threshold(tmp_path):
    kept = {"suite_spec": plan_of(tmp_path).to_json()}
    CapacitySearchPlan(plan_of(tmp_path), tmp_path).check_kept(kept, tmp_path, print)
    with pytest.raises(RunError, match="mmap_threshold_kib=128"):
        CapacitySearchPlan(plan_of(tmp_path, UNSET), tmp_path).check_kept(kept, tmp_path, print)


def _probe(point: dict, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.capacity.probe", "--budget-mib", "4096", *extra],
                         input=json.dumps(point), capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    lines = [line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("@@RECORD@@")]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(lines[0])


def test_a_probe_worker_applies_the_threshold_and_records_it(tmp_path):
    plan = plan_of(tmp_path)
    point = json.loads(json.dumps(plan.point(plan.configs[0], 64).to_json()))
    fixed, default = _probe(point, "--mmap-threshold-kib", "128"), _probe(point)
    assert fixed["status"] == default["status"] == "ok", (fixed, default)
    assert fixed["effective"]["rss_large_allocs_mmapped"] is True
    assert default["effective"]["rss_large_allocs_mmapped"] is False


FREED_BLOCK = textwrap.dedent("""
    import ctypes, sys
    from bench import measure as m
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    if sys.argv[1] == "fixed":
        assert m.mmap_large_allocations(128 * 1024)
    big = libc.malloc(24 << 20); ctypes.memset(big, 1, 24 << 20); libc.free(big)  # dynamic: threshold now 24 MiB
    before = m.current_rss_mib()
    block = libc.malloc(16 << 20); ctypes.memset(block, 1, 16 << 20); libc.free(block)
    print(m.current_rss_mib() - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_fixed_threshold_returns_a_freed_block_the_dynamic_one_keeps_resident():
    def kept_mib(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FREED_BLOCK, mode], capture_output=True, text=True,
                             cwd=REPO_ROOT, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])

    assert kept_mib("default") >= 12  # the 16 MiB block stayed in the heap, resident
    assert kept_mib("fixed") <= 2  # its own mapping, unmapped on free


def test_the_report_caption_says_the_threshold_where_one_was_fixed(tmp_path):
    meta = {"environment": {"device_name": "cpu"}}
    assert "glibc's mmap threshold fixed at 128 KiB" in caption(meta, plan_of(tmp_path))
    assert "mmap" not in caption(meta, plan_of(tmp_path, UNSET))
