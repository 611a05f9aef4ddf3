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
        # One point per distinct canonical config, counted here without point ids: a collision of
        # ids, or a field missing from the identity, would merge configs and lower the count.
        assert len(planned) == _distinct_configs(suite, profile), (path.name, profile)
        for p in planned:
            assert p.point.workload in ("attention", "model")


def _distinct_configs(suite, profile) -> int:
    from bench.grid import POINT_KEYS, canonical_model, product_dict, resolve_settings
    from bench.suite import model_defaults

    configs = set()
    for grid in suite.study_grids(profile):
        for combo in product_dict(grid.axes):
            settings = resolve_settings(grid, combo, model_defaults())
            identity = {**{k: settings[k] for k in POINT_KEYS if k != "device"},
                        **canonical_model(settings, list(model_defaults()))}
            configs.add(repr(sorted(identity.items())))
    return len(configs)


def test_tiny_suite_plans_the_points_its_comment_promises():
    """Two real points, one skipped by a rule, one shared by both studies: 3 points in all."""
    planned = load_suite("tiny").expand("cpu")
    assert len(planned) == 3
    by_kind = {p.point.model["attention"]: p for p in planned}
    assert by_kind["sdpa"].skip_reason and by_kind["lsh"].point.studies == ("attention_kinds", "hash_rounds")


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


def test_duplicate_keys_are_refused_at_every_level_naming_key_and_lines(tmp_path):
    """Plain YAML keeps the last of two equal keys: a repeated study name used to drop a study."""
    from bench.suite import read_yaml

    cases = {
        "top": ("name: a\nrepeats: 2\nname: b\n", "'name' at line 3 (first at line 1)"),
        "study": ("name: a\nstudies:\n  s:\n    grid: {n_hashes: [1]}\n  t: {}\n  s:\n    grid: {n_hashes: [2]}\n",
                  "'s' at line 6 (first at line 3)"),
        "deep": ("name: a\nstudies:\n  s:\n    grid:\n      n_hashes: [1]\n      n_hashes: [2]\n",
                 "'n_hashes' at line 6 (first at line 5)"),
        "flow": ("name: a\nbase: {seq_len: 64, seq_len: 128}\n", "'seq_len' at line 2 (first at line 2)"),
    }
    for label, (text, fragment) in cases.items():
        path = tmp_path / f"{label}.yaml"
        path.write_text(text)
        with pytest.raises(SuiteError) as info:
            read_yaml(path)
        message = str(info.value)
        assert str(path) in message and "duplicate key" in message and fragment in message, (label, message)
        with pytest.raises(SuiteError, match="duplicate key"):  # and so neither load nor kind accept it
            suite_kind(path)
    # Equal keys in different mappings, and a merge key overridden on purpose, are fine.
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: {x: 1}\nb: {x: 2}\nc: &c {y: 1}\nd:\n  <<: *c\n  y: 2\n")
    assert read_yaml(ok) == {"a": {"x": 1}, "b": {"x": 2}, "c": {"y": 1}, "d": {"y": 2}}


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "x[red]", "a.b", "a b", ""])
def test_unsafe_suite_names_are_refused(write_suite, name):
    refused(write_suite, small_suite(name=name), "name", "letters, digits")


@pytest.mark.parametrize("name", ["[bold]x", "x[/]", "a/b", "..", "a.b"])
def test_unsafe_study_names_are_refused(write_suite, name):
    spec = small_suite()
    spec["studies"][name] = spec["studies"].pop("hashes")
    refused(write_suite, spec, "study name", "letters, digits")


def test_safe_names_load(write_suite):
    spec = small_suite(name="My-suite_2")
    spec["studies"]["by-len_1"] = spec["studies"].pop("hashes")
    suite = load_suite(write_suite(spec))
    assert suite.name == "My-suite_2" and "by-len_1" in suite.spec.studies


def test_list_prints_user_text_literally(write_suite, capsys):
    from bench.cli import main

    spec = small_suite(description="closes [/] and opens [bold]nothing")
    spec["studies"]["kinds"]["description"] = "[/red] is text too"
    assert main(["list", str(write_suite(spec))]) == 0
    out = capsys.readouterr().out
    assert "closes [/] and opens [bold]nothing" in out and "[/red] is text too" in out


def _wide_suite(n_values: int) -> dict:
    spec = small_suite()
    spec["studies"]["hashes"]["grid"] = {"n_hashes": list(range(1, n_values + 1)), "chunk_len": [8, 16]}
    return spec


def test_points_are_counted_and_refused_above_the_limit_before_expanding(write_suite, monkeypatch):
    import bench.suite as suite_mod

    spec = _wide_suite(3000)  # 6000 combinations in 'hashes' + 4 in 'kinds', in the cpu profile
    path = write_suite(spec)
    calls = []
    monkeypatch.setattr(suite_mod, "expand", lambda *a, **k: calls.append(1) or [])
    refused(write_suite, spec, "profile 'cpu'", "6004 grid points", "limit of 5000", "--max-points")
    assert calls == []  # nothing was expanded
    suite = load_suite(path, trial_expand=False)
    assert suite.count_points("cpu") == 6004 and suite.count_points("gpu") == 6002
    with pytest.raises(SuiteError, match="6004 grid points, more than the limit of 6000"):
        suite.expand("cpu", max_points=6000)


def test_a_run_expands_its_profile_once_and_honours_max_points(write_suite, monkeypatch, tmp_path, capsys):
    import bench.lifecycle as lifecycle
    import bench.plans.grid as grid_plan
    import bench.suite as suite_mod
    from bench.cli import main
    from bench.options import RunOptions

    path = write_suite(small_suite())
    real_expand, calls = suite_mod.expand, []
    monkeypatch.setattr(suite_mod, "expand", lambda *a, **k: calls.append(1) or real_expand(*a, **k))
    plans = []
    real_plan = grid_plan.GridPlan.for_options
    monkeypatch.setattr(grid_plan.GridPlan, "for_options",
                        classmethod(lambda cls, suite, opts, has_cuda: plans.append(real_plan(suite, opts, False)) or plans[-1]))
    monkeypatch.setattr(lifecycle, "run", lambda plan, opts, console=None: tmp_path)
    lifecycle.run_suite(path, RunOptions(profile="cpu"))
    assert len(calls) == 1 and len(plans[0].points) == 5  # kinds: 4, hashes: (lsh, 64, n_hashes=2) is new
    with pytest.raises(SuiteError, match="profile 'cpu' has 6 grid points, more than the limit of 5"):
        lifecycle.run_suite(path, RunOptions(profile="cpu", max_points=5))
    monkeypatch.undo()
    root = tmp_path / "results"
    assert main(["run", str(path), "--profile", "cpu", "--max-points", "3", "--results-root", str(root)]) == 2
    assert "6 grid points, more than the limit of 3" in capsys.readouterr().err
    assert not root.exists()  # refused before any run folder was made


def test_measurement_processes_default_override_and_refusal(write_suite):
    spec = small_suite()
    spec["profiles"]["gpu"]["processes"] = 5
    suite = load_suite(write_suite(spec))
    assert suite.measurement("cpu")["processes"] == 3 and suite.measurement("gpu")["processes"] == 5
    refused(write_suite, small_suite(processes=0), "processes", "greater than or equal to 1")


def test_profile_skip_rule_skips_only_that_profiles_points_and_records_them(write_suite, tmp_path):
    from bench.lifecycle import run_suite as run
    from bench.options import RunOptions
    from bench.store import RunStore

    spec = small_suite()
    spec["profiles"]["cpu"] = {"studies": {"kinds": {"skip": [{"when": {"attention": ["full", "lsh"]},
                                                               "reason": "not on this profile"}]},
                                           "hashes": {"enabled": False}}}
    path = write_suite(spec)
    suite = load_suite(path)
    cpu = suite.expand("cpu")
    assert len(cpu) == 4 and {p.skip_reason for p in cpu} == {"not on this profile"}
    gpu = suite.expand("gpu", auto_device="cuda")
    assert gpu and all(p.skip_reason is None for p in gpu)  # the gpu profile's points are untouched
    run_dir = run(path, RunOptions(profile="cpu", results_root=tmp_path / "results", run_id="r"))
    records = RunStore(run_dir).records()
    assert sorted(r["point_id"] for r in records) == sorted(p.point.point_id for p in cpu)
    assert {(r["status"], r["reason"]) for r in records} == {("skipped", "not on this profile")}


def test_peers_suite_expands_every_impl_at_every_length():
    suite = load_suite("peers")
    for profile in ("cpu", "gpu"):
        grids = {g.name: dict(g.axes) for g in suite.study_grids(profile)}
        points = [p.point for p in suite.expand(profile, auto_device="cuda" if profile == "gpu" else "cpu")]
        got = {(p.impl, p.seq_len) for p in points if "vs_seq_len" in p.studies}
        assert got == {(impl, n) for impl in ("ours", "reformer_pytorch", "hf") for n in grids["vs_seq_len"]["seq_len"]}
        got = {(p.impl, p.model["n_hashes"]) for p in points if "vs_n_hashes" in p.studies}
        assert got == {(impl, n) for impl in ("ours", "reformer_pytorch", "hf") for n in grids["vs_n_hashes"]["n_hashes"]}


def test_override_rule_wins_over_explicit_base_and_study_values(write_suite):
    spec = small_suite()
    spec["base"]["shared_qk"] = True  # set explicitly in the suite's base ...
    spec["studies"]["kinds"]["grid"]["attention"] = ["full", "sdpa"]
    spec["studies"]["kinds"]["base"] = {"shared_qk": True, "causal": False}  # ... and in the study's
    spec["studies"]["kinds"]["overrides"] = [{"when": {"attention": "sdpa"}, "set": {"shared_qk": False, "causal": True}}]
    points = [p.point for p in load_suite(write_suite(spec)).expand("cpu") if "kinds" in p.point.studies]
    by_kind = {(p.model["attention"], p.model["shared_qk"], p.model["causal"]) for p in points}
    assert by_kind == {("full", True, False), ("sdpa", False, True)}
