"""A stage breakdown asked for by a suite's study (or a profile's) or by `bench run --breakdown`:
grid points only, recorded beside the normal timing, never part of a point's id."""
from __future__ import annotations

import json
import os

import pytest

import bench.options as options
from bench.cli import BREAKDOWN_ENV as CLI_ENV, campaign_suites, main
from bench.suite import SuiteError, load_suite

from .conftest import REPO_ROOT, small_suite


def test_a_study_key_and_a_profile_key_set_the_points_breakdown(write_suite):
    spec = small_suite()
    spec["studies"]["kinds"]["breakdown"] = True
    spec["profiles"]["gpu"]["studies"]["kinds"]["breakdown"] = False
    suite = load_suite(write_suite(spec))
    cpu = {p.point.point_id: p.point for p in suite.expand("cpu")}
    assert {p.breakdown for p in cpu.values() if "kinds" in p.studies} == {True}
    assert {p.breakdown for p in cpu.values() if p.studies == ("hashes",)} == {None}
    assert suite.resolved_spec("cpu")["studies"]["kinds"]["breakdown"] is True
    assert "breakdown" not in suite.resolved_spec("cpu")["studies"]["hashes"]
    gpu = suite.expand("gpu", auto_device="cuda")  # the profile's False wins over the study's True
    assert {p.point.breakdown for p in gpu if "kinds" in p.point.studies} == {False}
    plain = {p.point.point_id for p in load_suite(write_suite(small_suite(), "plain.yaml")).expand("cpu")}
    assert set(cpu) == plain  # the same points, the same ids


def test_a_breakdown_that_is_not_a_boolean_is_refused_naming_it(write_suite):
    spec = small_suite()
    spec["studies"]["kinds"]["breakdown"] = "yes please"
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(spec))
    assert "studies.kinds.breakdown" in str(info.value), info.value


@pytest.mark.parametrize("suite, studies", [("memory", {"vs_seq_len", "lsh_buckets_vs_seq_len"}),
                                            ("speed", {"vs_seq_len"}), ("lsh_vs_full", {"attention_layer", "model"})])
def test_the_cpu_references_are_re_measured_with_stage_times_at_their_old_ids(suite, studies):
    planned = [p.point for p in load_suite(suite).expand("cpu")]
    profiled = {p.point_id for p in planned if p.breakdown}
    assert profiled == {p.point_id for p in planned if set(p.studies) & studies}
    reference = REPO_ROOT / "results" / suite / "reference-cpu"
    if (reference / "records.jsonl").exists():  # the reference's studies keep their points' ids
        old = set(json.loads((reference / "run.json").read_text())["suite_spec"]["studies"])
        recorded = {json.loads(line)["point_id"] for line in (reference / "records.jsonl").read_text().splitlines()
                    if line.strip()}
        assert {p.point_id for p in planned if set(p.studies) & old} <= recorded


@pytest.mark.parametrize("suite", ["capacity", "duplication", "quality"])
def test_the_flag_is_refused_for_a_suite_without_grid_points(suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    code = main(["run", suite, "--profile", "cpu", "--results-root", str(tmp_path), "--breakdown"])
    err = capsys.readouterr().err
    assert code == 2 and f"--breakdown: not available for {suite} suites" in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_the_flag_is_refused_with_ray_whose_workers_would_not_see_it(tmp_path, capsys):
    code = main(["run", "tiny", "--executor", "ray", "--results-root", str(tmp_path), "--breakdown"])
    err = capsys.readouterr().err
    assert code == 2 and "--breakdown: not available with --executor ray" in " ".join(err.split()), err


def test_the_flag_switches_the_breakdown_on_for_the_run_only(tmp_path, monkeypatch):
    import bench.lifecycle
    from bench.measure_point import BREAKDOWN_ENV

    assert CLI_ENV == BREAKDOWN_ENV
    seen = []
    monkeypatch.setattr(bench.lifecycle, "run_suite", lambda suite, opts, console: seen.append(
        os.environ.get(BREAKDOWN_ENV)))
    monkeypatch.delenv(BREAKDOWN_ENV, raising=False)
    assert main(["run", "tiny", "--results-root", str(tmp_path), "--breakdown"]) == 0
    assert main(["run", "tiny", "--results-root", str(tmp_path)]) == 0
    assert seen == ["1", None] and BREAKDOWN_ENV not in os.environ


def test_the_campaign_help_lists_the_campaigns_suites():
    from bench.campaign import SUITES

    assert campaign_suites() == SUITES
    from bench.cli import build_parser

    helps = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0].choices["campaign"]._actions}
    assert " ".join(SUITES) in helps["suite"]
