"""Capacity suites: resolved per profile, and refused up front (exit 2, one line naming the field)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.capacity.spec import load_capacity_suite, resolve
from bench.cli import main
from bench.suite import SuiteError

GOOD = """\
kind: capacity
name: captest
base: {d_model: 32, n_heads: 2, d_ff: 64, n_layers: 2, vocab_size: 64, chunk_len: 48}
search: {over: seq_len, start: 512, max_value: 8192, resolution: 0.0625, multiple: 64}
configs:
  - {name: full, base: {attention: full, reversible: false}}
  - {name: lsh, base: {attention: lsh}, grid: {n_hashes: [1, 4], reversible: [true, false]}}
profiles:
  cpu: {memory_budget_gib: 2, device: cpu, search: {max_value: 4096}, config_search: {full: {max_value: 2048}}}
  gpu: {memory_budget_gib: 16, base: {dtype: bfloat16}, configs: [lsh]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cap.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_resolves_configs_labels_and_lsh_multiples(tmp_path):
    path, spec = load_capacity_suite(write(tmp_path, GOOD))
    plan = resolve(spec, "cpu", "cpu", path)
    assert [c.label for c in plan.configs] == [
        "full", "lsh n_hashes=1 reversible=true", "lsh n_hashes=1 reversible=false",
        "lsh n_hashes=4 reversible=true", "lsh n_hashes=4 reversible=false"]
    assert plan.search.max_value == 4096 and plan.search.start == 512 and plan.memory_budget_gib == 2
    assert plan.search_for(plan.configs[0]).multiple == 64
    assert plan.search_for(plan.configs[0]).max_value == 2048  # config_search: this config's own cap
    assert plan.search_for(plan.configs[1]).max_value == 4096
    assert plan.search_for(plan.configs[1]).multiple == 192  # lcm(64, chunk_len 48): no padded length
    point = plan.point(plan.configs[0], 1024)
    assert (point.seq_len, point.batch_size, point.workload, point.device) == (1024, 1, "train_step", "cpu")
    assert "n_hashes" not in point.model  # canonical, as the grid suites make it
    gpu = resolve(spec, "gpu", "cuda", path)
    assert len(gpu.configs) == 4 and gpu.configs[0].settings["dtype"] == "bfloat16"


@pytest.mark.parametrize("change,needle", [
    (("resolution: 0.0625", "resolutoin: 0.0625"), "search.resolutoin: unknown key"),
    (("memory_budget_gib: 2,", "memory_budget_gib: -1,"), "profiles.cpu.memory_budget_gib"),
    (("{attention: full, reversible: false}", "{attention: fulll, reversible: false}"), "ReformerConfig.attention='fulll'"),
    (("grid: {n_hashes: [1, 4]", "grid: {n_hashes: [0, 4]"), "ReformerConfig.n_hashes=0"),
    (("configs: [lsh]", "configs: [lhs]"), "profiles.gpu.configs: no such config"),
    (("config_search: {full:", "config_search: {fulll:"), "profiles.cpu.config_search: no such config"),
    (("{full: {max_value: 2048}}", "{full: {max_value: 128}}"), "configs.full: search: Search.start=512, max_value=128"),
    (("over: seq_len", "over: n_layers"), "search.over"),
    (("base: {attention: full,", "base: {workload: model, attention: full,"), "workload: not settable"),
    (("start: 512", "start: 9000"), "search.max_value=4096: below search.start=9000"),
])
def test_bad_suite_refused_up_front_naming_the_field(tmp_path, capsys, change, needle):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(SuiteError, match="."):
        load_capacity_suite(path)
    code = main(["run", str(path), "--profile", "cpu", "--results-root", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_batch_size_search_holds_the_length_fixed(tmp_path):
    text = GOOD.replace("search: {over: seq_len, start: 512, max_value: 8192, resolution: 0.0625, multiple: 64}",
                        "search: {over: batch_size, start: 1, max_value: 256, resolution: 0.0625}")
    text = text.replace("search: {max_value: 4096}, config_search: {full: {max_value: 2048}}", "base: {}")
    text = text.replace("chunk_len: 48}", "chunk_len: 48, seq_len: 2048}")
    path, spec = load_capacity_suite(write(tmp_path, text))
    plan = resolve(spec, "cpu", "cpu", path)
    search = plan.search_for(plan.configs[1])  # LSH: the batch is not rounded to chunk_len
    assert (plan.over, search.multiple, search.start) == ("batch_size", 1, 1)
    point = plan.point(plan.configs[1], 12)
    assert (point.batch_size, point.seq_len, point.model["max_seq_len"]) == (12, 2048, 2048)
    with pytest.raises(SuiteError, match="seq_len: not set"):
        load_capacity_suite(write(tmp_path, text.replace(", seq_len: 2048}", "}")))
