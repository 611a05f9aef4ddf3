"""Grid expansion: pure functions, plain asserts, no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench.grid import (
    GridError, SkipRule, StudyGrid, canonical_model, expand, point_params, product_dict,
)
from bench.point import GridPoint

from .conftest import REPO_ROOT

# A stand-in for ReformerConfig's defaults: the grid only needs field names and values.
DEFAULTS = {
    "d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 2, "vocab_size": 16, "max_seq_len": 4096,
    "attention": "lsh", "shared_qk": True, "n_hashes": 2, "chunk_len": 16, "n_buckets": None, "causal": True,
    "reversible": True, "ff_chunks": 1, "same_bucket": False, "dup_correction": True,
    "pos_emb": "axial", "hash_seed": None,
}


def study(name="s", settings=None, axes=(), skip=(), fixed_tokens=None) -> StudyGrid:
    return StudyGrid(name=name, settings={"seq_len": 64, **(settings or {})},
                     axes=tuple((k, tuple(v)) for k, v in axes), skip=tuple(skip), fixed_tokens=fixed_tokens)


def run(*studies, **kw):
    kw = {"suite": "t", "model_defaults": DEFAULTS, "repeats": 2, "warmup": 1, "timeout_s": 30.0, **kw}
    return expand(list(studies), **kw)


def test_product_dict_varies_last_axis_fastest():
    combos = list(product_dict([("a", [1, 2]), ("b", ["x", "y", "z"])]))
    assert len(combos) == 6
    assert combos[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]
    assert list(product_dict([])) == [{}]


def test_expand_takes_the_product_and_applies_axes_over_settings():
    planned = run(study(settings={"attention": "lsh", "n_hashes": 4},
                        axes=[("seq_len", [64, 128]), ("n_hashes", [1, 2])]))
    got = [(p.point.seq_len, p.point.model["n_hashes"]) for p in planned]
    assert got == [(64, 1), (64, 2), (128, 1), (128, 2)]
    assert all(p.point.studies == ("s",) and p.skip_reason is None for p in planned)
    assert planned[0].point.repeats == 2 and planned[0].point.timeout_s == 30.0


def test_canonicalisation_drops_fields_that_cannot_matter():
    full = canonical_model({**DEFAULTS, "attention": "full", "workload": "model"}, list(DEFAULTS))
    assert "n_hashes" not in full and "chunk_len" not in full and "hash_seed" not in full
    assert full["n_layers"] == 2 and full["reversible"] is True
    attn = canonical_model({**DEFAULTS, "attention": "lsh", "workload": "attention"}, list(DEFAULTS))
    assert attn["n_hashes"] == 2
    for dropped in ("n_layers", "reversible", "ff_chunks", "d_ff", "vocab_size", "pos_emb", "max_seq_len"):
        assert dropped not in attn


def test_full_attention_points_differing_only_in_lsh_fields_collapse():
    planned = run(study(settings={"workload": "attention"},
                        axes=[("attention", ["full", "lsh"]), ("n_hashes", [1, 2, 4])]))
    kinds = [p.point.model["attention"] for p in planned]
    assert kinds.count("full") == 1 and kinds.count("lsh") == 3


def test_dedup_across_studies_lists_every_study():
    a = study("by_len", settings={"n_hashes": 2}, axes=[("seq_len", [64, 128])])
    b = study("by_hashes", axes=[("n_hashes", [1, 2])])
    planned = run(a, b)
    assert len(planned) == 3  # (64, n_hashes=2) is asked for by both
    shared = [p for p in planned if p.point.seq_len == 64 and p.point.model["n_hashes"] == 2]
    assert len(shared) == 1 and shared[0].point.studies == ("by_len", "by_hashes")
    # Merged by id: each study alone plans 2 points, and they share exactly the one above.
    ids_a, ids_b = ({p.point.point_id for p in run(s)} for s in (a, b))
    assert len(ids_a) == len(ids_b) == 2 and ids_a & ids_b == {shared[0].point.point_id}
    assert {p.point.point_id for p in planned} == ids_a | ids_b


def test_point_id_ignores_measurement_settings_but_not_config():
    one = run(study())[0].point
    assert run(study(), repeats=9, timeout_s=5.0)[0].point.point_id == one.point_id
    assert run(study(settings={"n_hashes": 8}))[0].point.point_id != one.point_id


def test_skip_rules_match_values_or_lists():
    rule = SkipRule(when={"attention": ("full",), "seq_len": (128, 256)}, reason="too long for full")
    planned = run(study(axes=[("attention", ["full", "lsh"]), ("seq_len", [64, 128, 256])], skip=[rule]))
    skipped = {(p.point.model["attention"], p.point.seq_len): p.skip_reason for p in planned}
    assert skipped[("full", 128)] == "too long for full" and skipped[("full", 256)] == "too long for full"
    assert skipped[("full", 64)] is None and skipped[("lsh", 256)] is None


def test_a_point_skipped_by_one_study_but_wanted_by_another_runs():
    rule = SkipRule(when={"n_hashes": (2,)}, reason="skip in a")
    planned = run(study("a", skip=[rule]), study("b"))
    assert len(planned) == 1 and planned[0].skip_reason is None and planned[0].point.studies == ("a", "b")
    only_a = run(study("a", skip=[rule]), study("b", settings={"n_hashes": 1}))
    assert [p.skip_reason for p in only_a] == ["skip in a", None]


def test_fixed_tokens_sets_batch_size():
    planned = run(study(axes=[("seq_len", [64, 128, 256])], fixed_tokens=1024))
    assert [(p.point.seq_len, p.point.batch_size) for p in planned] == [(64, 16), (128, 8), (256, 4)]


def test_fixed_tokens_not_divisible_is_refused():
    with pytest.raises(GridError, match=r"study 's': fixed_tokens: 1000 is not divisible by seq_len=64"):
        run(study(axes=[("seq_len", [64])], fixed_tokens=1000))
    with pytest.raises(GridError, match="batch_size"):
        run(study(axes=[("batch_size", [1, 2])], fixed_tokens=1024))


def test_max_seq_len_follows_seq_len_unless_set():
    planned = run(study(axes=[("seq_len", [64, 128])]))
    assert [p.point.model["max_seq_len"] for p in planned] == [64, 128]
    with pytest.raises(GridError, match=r"seq_len: 128 exceeds max_seq_len=100"):
        run(study(settings={"max_seq_len": 100}, axes=[("seq_len", [64, 128])]))
    # The attention workload has no max_seq_len, so nothing to exceed.
    assert len(run(study(settings={"max_seq_len": 100, "workload": "attention"}, axes=[("seq_len", [128])]))) == 1


def test_device_auto_and_forced():
    assert run(study(), auto_device="cuda")[0].point.device == "cuda"
    assert run(study(settings={"device": "cpu"}), auto_device="cuda")[0].point.device == "cpu"
    assert run(study(settings={"device": "cpu"}), force_device="cuda")[0].point.device == "cuda"


def test_check_failure_names_study_and_combo():
    def check(settings):
        if settings["n_hashes"] > 2:
            raise ValueError("ReformerConfig.n_hashes=4: too many")

    with pytest.raises(GridError, match=r"study 's': grid: at n_hashes=4: ReformerConfig.n_hashes=4"):
        run(study(axes=[("n_hashes", [1, 4])]), check=check)


def test_missing_seq_len_is_refused():
    bare = StudyGrid(name="s", settings={}, axes=())
    with pytest.raises(GridError, match="seq_len: not set"):
        run(bare)


def test_point_params_is_flat():
    params = point_params(run(study())[0].point)
    assert params["seq_len"] == 64 and params["workload"] == "model" and params["n_hashes"] == 2


def test_grid_module_does_not_import_torch():
    code = "import sys, bench.grid; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_override_rule_sets_fields_only_where_it_matches():
    from bench.grid import OverrideRule, StudyGrid, expand

    study = StudyGrid(
        name="s", settings={"seq_len": 64, "workload": "attention"},
        axes=(("attention", ("full", "sdpa")),),
        overrides=(OverrideRule(when={"attention": ("sdpa",)}, to={"shared_qk": False}),),
    )
    points = expand([study], suite="t", model_defaults={"attention": "full", "shared_qk": True},
                    repeats=1, warmup=0, timeout_s=10)
    by_kind = {p.point.model["attention"]: p.point.model["shared_qk"] for p in points}
    assert by_kind == {"full": True, "sdpa": False}


def test_points_differing_only_in_impl_get_different_ids():
    planned = run(study(settings={"workload": "attention"}, axes=[("impl", ["ours", "reformer_pytorch", "hf"])]))
    assert [p.point.impl for p in planned] == ["ours", "reformer_pytorch", "hf"]
    assert len({p.point.point_id for p in planned}) == 3
    same = [{**p.point.to_json(), "impl": None} for p in planned]
    assert all(s == same[0] for s in same)  # nothing else differs


def test_override_rule_wins_over_values_set_in_settings_and_by_an_axis():
    from bench.grid import OverrideRule

    grid = StudyGrid(
        name="s", settings={"seq_len": 64, "workload": "attention", "shared_qk": True, "n_hashes": 4},
        axes=(("attention", ("full", "sdpa", "lsh")), ("causal", (True,))),
        overrides=(OverrideRule(when={"attention": ("sdpa",)}, to={"shared_qk": False, "causal": False}),
                   OverrideRule(when={"attention": ("lsh",)}, to={"n_hashes": 1})),
    )
    planned = run(grid)
    got = {p.point.model["attention"]: (p.point.model["shared_qk"], p.point.model["causal"]) for p in planned}
    assert got == {"full": (True, True), "sdpa": (False, False), "lsh": (True, True)}
    assert [p.point.model["n_hashes"] for p in planned if p.point.model["attention"] == "lsh"] == [1]


def test_a_study_breakdown_marks_its_points_and_leaves_their_ids():
    plain = run(study("a", axes=[("seq_len", [64, 128])]))
    profiled = run(StudyGrid(name="a", settings={"seq_len": 64}, axes=(("seq_len", (64, 128)),), breakdown=True))
    assert [p.point.breakdown for p in plain] == [None, None]
    assert [p.point.breakdown for p in profiled] == [True, True]
    assert [p.point.point_id for p in profiled] == [p.point.point_id for p in plain]
    assert GridPoint.from_json(profiled[0].point.to_json()) == profiled[0].point


def test_a_point_two_studies_share_is_profiled_if_either_asks():
    asks = StudyGrid(name="a", settings={"seq_len": 64}, axes=(("seq_len", (64, 128)),), breakdown=True)
    declines = StudyGrid(name="b", settings={"seq_len": 64}, axes=(), breakdown=False)
    by_len = {p.point.seq_len: p.point.breakdown for p in run(declines, asks)}
    assert by_len == {64: True, 128: True}
    assert [p.point.breakdown for p in run(declines, study("c"))] == [False]
