"""The copy-distance study and the self-mask experiment: planned per length with each length's own
task, bad input refused naming the field, local attention provably blind past its window, and the
findings computed from records."""
import pandas as pd
import pytest
import torch

from bench.duplication import DEFAULT_SUITE
from bench.duplication import copy_distance as cd
from bench.duplication.report import NO_SELF_MASK
from bench.duplication.spec import load_suite, resolve_profile, training_plan
from bench.loader import SuiteError
from reformer_impl import ReformerConfig, ReformerLM
from tests.duplication.test_suite import write_suite as _suite


def test_each_length_trains_each_model_on_its_own_task_and_reuses_table_2s():
    run = resolve_profile(load_suite(DEFAULT_SUITE), "cpu")
    plan = training_plan(run)
    evals = [e for e in plan.evals if "copy_distance" in e.studies]
    assert len(evals) == len(run.copy_models) * len(run.copy_half_lens)
    by_id = {e.point_id: e for e in evals}
    # length 128 is Table 2's: its trainings are reused, and they run on the plan's task
    assert by_id["dup-cd-eval-full-L128"].train.point_id == "dup-train-full"
    assert plan.task_of(by_id["dup-cd-eval-full-L128"].train).seq_len == 128
    for half in (128, 256):
        for name in ("full", "lsh-1", "local"):
            ev = by_id[f"dup-cd-eval-{name}-L{2 * half}"]
            assert plan.task_of(ev.train).seq_len == 2 * half and ev.train.cfg.max_seq_len == 2 * half
    assert by_id["dup-cd-eval-local-L512"].cfg.attention == "local"


@pytest.mark.parametrize("mutate, field", [
    (lambda raw: raw["profiles"]["cpu"].__setitem__("copy_distance", {"half_lens": [64, 1]}), "half_lens"),
    (lambda raw: raw["profiles"]["cpu"].__setitem__("copy_distance", {"half_lens": [64, 64]}), "half_lens"),
    (lambda raw: raw.pop("copy_distance"), "copy_distance"),
    (lambda raw: raw["eval_settings"].append({"name": "x", "attention": "lsh", "n_hashes": 2, "self_mask": False}),
     "self_mask"),
])
def test_a_bad_copy_distance_or_self_mask_setting_is_refused_naming_the_field(tmp_path, mutate, field):
    with pytest.raises(SuiteError, match=field):
        load_suite(_suite(tmp_path, mutate))


def test_local_attention_cannot_see_a_token_beyond_two_chunks():
    """The mask argument behind `local` at chance: the logits at position i do not depend on any
    token more than 2 * chunk_len - 1 positions back (gradient exactly zero), as the copy would need."""
    chunk, length = 4, 32
    cfg = ReformerConfig(d_model=16, n_heads=2, d_ff=16, n_layers=1, vocab_size=9, attention="local",
                         chunk_len=chunk, max_seq_len=length, reversible=False, pos_emb="absolute")
    torch.manual_seed(0)
    model = ReformerLM(cfg)
    emb = model.token_emb(torch.randint(0, 9, (1, length))).detach().requires_grad_()
    x = emb + model.pos_emb(length)
    out = model.head(model.norm(model.stack(x)))
    i = length - 1
    out[0, i].sum().backward()
    reach = (emb.grad[0].abs().sum(-1) > 0).nonzero().flatten()
    assert int(i - reach.min()) <= 2 * chunk - 1
    assert int(reach.min()) > i - length // 2  # the first copy (half the length back) is out of reach


def _table():
    return pd.DataFrame({128: [99.0, 97.0, 3.5], 256: [98.0, 90.0, 2.9]}, index=["full", "lsh-2", "local"])


def test_copy_findings_say_local_is_at_chance_beyond_its_window():
    kinds = {"full": "full", "lsh-2": "lsh", "local": "local"}
    lines = cd.copy_findings(_table(), chance=3.125, window=16, kinds=kinds)
    assert any("Length 256" in s and "`local` 2.9%" in s and "At chance" in s and "beyond the local window of 16" in s
               for s in lines)
    assert "at 256, local is at chance (2.9%) and LSH reaches 90.0%: hashing finds what the window cannot" in lines[-1]
    copying = _table()
    copying.loc["local"] = [60.0, 50.0]
    assert "above chance: unexplained" in cd.copy_findings(copying, 3.125, 16, kinds)[-1]
    untrained = _table()
    untrained.loc["lsh-2"] = [3.0, 3.1]
    assert "LSH did not learn the copy" in cd.copy_findings(untrained, 3.125, 16, kinds)[-1]
    untrained.loc["full"] = [3.0, 3.1]
    assert "every model is at chance: inconclusive" in cd.copy_findings(untrained, 3.125, 16, kinds)[-1]


@pytest.mark.parametrize("no_mask, verdict", [(2.0, "dropping the self-mask reproduces"),
                                              (95.0, "neither rule collapses")])
def test_the_self_mask_verdict_follows_the_accuracies(no_mask, verdict):
    measured = pd.DataFrame({"full": [100.0, 99.0], "full-no-self-mask": [no_mask, no_mask]}, index=["lsh-4", "lsh-1"])
    keys = {"full": ("full", None), "full-no-self-mask": (NO_SELF_MASK, None)}
    trained = {"lsh-4": ("lsh", 4), "lsh-1": ("lsh", 1)}
    (line,) = cd.self_mask_findings(measured, keys, trained, 3.125, (NO_SELF_MASK, None))
    assert verdict in line and "`lsh-4` 100.0% / " in line
    with_full = pd.concat([measured, pd.DataFrame({"full": [100.0], "full-no-self-mask": [no_mask]}, index=["full"])])
    (line,) = cd.self_mask_findings(with_full, keys, {**trained, "full": ("full", None)}, 3.125, (NO_SELF_MASK, None))
    assert ("collapses too" in line) == (no_mask < 5)


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b"])
def test_a_setting_name_that_is_not_a_plain_file_name_part_is_refused(tmp_path, name):
    def mutate(raw):
        raw["train_models"][0]["name"] = name
    with pytest.raises(SuiteError, match="name"):
        load_suite(_suite(tmp_path, mutate))
