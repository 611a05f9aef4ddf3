"""Suite loading: typed validation, refusals that name file and key, profile merging."""
from __future__ import annotations

import pytest

from bench.suite import SUITES_DIR, SuiteError, load_suite, resolve_suite_path, suite_kind

from .conftest import small_suite

SHIPPED = sorted(p for p in SUITES_DIR.glob("*.yaml") if suite_kind(p) == "grid")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_suites_load_and_expand_both_profiles(path):
    suite = load_suite(path)
    for profile in ("cpu", "gpu"):
        planned = suite.expand(profile, auto_device="cuda" if profile == "gpu" else "cpu")
        assert planned, f"{path.name}: profile {profile} has no points"
        assert len({p.point.point_id for p in planned}) == len(planned)
        for p in planned:
            assert p.point.workload in ("attention", "model")


def test_shipped_suite_names_match_files():
    assert {p.stem for p in SHIPPED} >= {"memory", "speed", "lsh_vs_full", "peers", "tiny"}
    for path in SHIPPED:
        assert load_suite(path).name == path.stem


def test_gpu_profiles_are_paper_scale():
    for name in ("memory", "lsh_vs_full"):
        points = load_suite(name).expand("gpu", auto_device="cuda")
        assert max(p.point.seq_len for p in points if p.point.model.get("attention") == "lsh") == 65536
        assert {p.point.dtype for p in points} == {"bfloat16"}


def test_speed_suite_holds_tokens_fixed():
    for profile in ("cpu", "gpu"):
        points = [p.point for p in load_suite("speed").expand(profile)]
        assert len({p.batch_size * p.seq_len for p in points}) == 1
        lsh_hashes = {p.model["n_hashes"] for p in points if p.model["attention"] == "lsh"}
        assert lsh_hashes == {1, 2, 4, 8}


def test_resolve_by_name_or_path(write_suite):
    assert resolve_suite_path("tiny") == SUITES_DIR / "tiny.yaml"
    path = write_suite(small_suite())
    assert resolve_suite_path(str(path)) == path
    with pytest.raises(SuiteError, match="no_such_suite"):
        resolve_suite_path("no_such_suite")


def refused(write_suite, spec, *fragments):
    path = write_suite(spec)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_keys_are_refused(write_suite):
    refused(write_suite, small_suite(repeat=3), "repeat", "unknown key")
    spec = small_suite()
    spec["studies"]["kinds"]["gird"] = {}
    refused(write_suite, spec, "studies.kinds.gird", "unknown key")
    spec = small_suite()
    spec["base"]["n_hash"] = 2
    refused(write_suite, spec, "base", "n_hash", "unknown key")
    spec = small_suite()
    spec["profiles"]["tpu"] = {}
    refused(write_suite, spec, "profiles", "tpu")


def test_wrong_types_are_refused(write_suite):
    spec = small_suite()
    spec["base"]["n_hashes"] = "2"
    refused(write_suite, spec, "base", "n_hashes", "valid integer")
    spec = small_suite()
    spec["studies"]["hashes"]["grid"]["n_hashes"] = [1, "two"]
    refused(write_suite, spec, "studies.hashes.grid", "n_hashes", "'two'")
    refused(write_suite, small_suite(repeats="many"), "repeats", "valid integer")
    spec = small_suite()
    spec["base"]["reversible"] = 1
    refused(write_suite, spec, "reversible", "boolean")
    spec = small_suite()
    spec["base"]["workload"] = "duplication"
    refused(write_suite, spec, "workload")


def test_empty_and_unknown_axes_are_refused(write_suite):
    spec = small_suite()
    spec["studies"]["hashes"]["grid"]["n_hashes"] = []
    refused(write_suite, spec, "studies.hashes.grid.n_hashes", "at least 1")
    spec = small_suite()
    spec["studies"]["hashes"]["grid"]["bucket_size"] = [32]
    refused(write_suite, spec, "studies.hashes.grid", "unknown axis 'bucket_size'")


def test_impossible_configs_are_refused_before_running(write_suite):
    spec = small_suite()
    spec["studies"]["hashes"]["grid"]["n_heads"] = [2, 3]
    refused(write_suite, spec, "profile 'cpu'", "study 'hashes'", "n_heads=3", "d_model")
    spec = small_suite()
    spec["base"].update(workload="model", max_seq_len=100)
    refused(write_suite, spec, "study 'kinds'", "seq_len: 128 exceeds max_seq_len=100")
    spec = small_suite()
    spec["studies"]["kinds"]["fixed_tokens"] = 100
    refused(write_suite, spec, "study 'kinds'", "fixed_tokens: 100 is not divisible by seq_len=64")


def test_profile_problems_name_the_profile(write_suite):
    spec = small_suite()
    spec["profiles"]["gpu"]["studies"]["kinds"]["grid"]["seq_len"] = [96, 100]
    spec["profiles"]["gpu"]["studies"]["kinds"]["fixed_tokens"] = 192
    refused(write_suite, spec, "profile 'gpu'", "fixed_tokens: 192 is not divisible by seq_len=100")
    spec = small_suite()
    spec["profiles"]["cpu"] = {"studies": {"nope": {"grid": {"seq_len": [64]}}}}
    refused(write_suite, spec, "profiles.cpu.studies.nope", "no such study")


def test_skip_rule_keys_are_checked(write_suite):
    spec = small_suite()
    spec["studies"]["kinds"]["skip"] = [{"when": {"attn": "full"}, "reason": "x"}]
    refused(write_suite, spec, "studies.kinds.skip.0.when", "unknown axis 'attn'")
    spec = small_suite()
    spec["studies"]["kinds"]["skip"] = [{"when": {"attention": "full"}}]
    refused(write_suite, spec, "studies.kinds.skip.0.reason")


def test_plot_hint_axes_are_checked(write_suite):
    spec = small_suite()
    spec["studies"]["kinds"]["plot"]["hue"] = "attn"
    refused(write_suite, spec, "studies.kinds.plot.hue", "unknown axis 'attn'")


def test_not_yaml_or_not_a_mapping(write_suite, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SuiteError, match="bad.yaml: cannot read as YAML"):
        load_suite(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(SuiteError, match="top level must be a mapping"):
        load_suite(bad)


def test_profiles_merge_base_axes_and_measurement(write_suite):
    spec = small_suite()
    spec["profiles"]["gpu"].update(repeats=7, studies={
        "kinds": {"grid": {"seq_len": [256]}, "base": {"causal": False}},
        "hashes": {"enabled": False},
    })
    suite = load_suite(write_suite(spec))
    cpu = suite.expand("cpu")
    gpu = suite.expand("gpu", auto_device="cuda")
    assert sorted({p.point.seq_len for p in cpu}) == [64, 128]
    assert {p.point.seq_len for p in gpu} == {256}
    assert {p.point.dtype for p in gpu} == {"bfloat16"} and {p.point.device for p in gpu} == {"cuda"}
    assert {p.point.repeats for p in gpu} == {7} and {p.point.repeats for p in cpu} == {2}
    assert all(p.point.model["causal"] is False for p in gpu)
    assert all(p.point.studies == ("kinds",) for p in gpu)  # hashes disabled on gpu
    resolved = suite.resolved_spec("gpu")
    assert list(resolved["studies"]) == ["kinds"]
    assert resolved["studies"]["kinds"]["grid"] == {"attention": ["full", "lsh"], "seq_len": [256]}
    assert resolved["studies"]["kinds"]["plot"]["hue"] == "attention"
    assert resolved["repeats"] == 7


def test_unknown_profile_is_refused(write_suite):
    spec = small_suite()
    del spec["profiles"]["gpu"]
    suite = load_suite(write_suite(spec))
    with pytest.raises(SuiteError, match="no profile 'gpu'"):
        suite.expand("gpu")


def test_duplication_suites_are_recognised_without_validation(write_suite):
    path = write_suite({"kind": "duplication", "name": "dup", "anything": {"goes": 1}})
    assert suite_kind(path) == "duplication"
    assert suite_kind(write_suite(small_suite(), "other.yaml")) == "grid"


def test_override_with_unknown_field_is_refused(tmp_path):
    from bench.suite import SuiteError, load_suite

    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nbase: {seq_len: 64, workload: attention}\nstudies:\n  s:\n    grid: {attention: [full, sdpa]}\n"
        "    overrides: [{when: {attention: sdpa}, set: {shared_qkk: false}}]\n"
    )
    with pytest.raises(SuiteError, match="shared_qkk"):
        load_suite(path)
