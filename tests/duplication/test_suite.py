"""suites/duplication.yaml: typed validation, refusals that name the field, and the profiles' shape."""
from pathlib import Path

import pytest
import yaml

from bench.duplication import DEFAULT_SUITE
from bench.duplication.spec import load_suite, planned_ids, resolve_profile, training_plan
from reformer_impl import describe


def write_suite(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_SUITE.read_text())
    mutate(raw)
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_shipped_suite_is_table_2():
    suite = load_suite(DEFAULT_SUITE)
    assert [(m.attention, m.n_hashes) for m in suite.train_models] == [("full", None), ("lsh", 4), ("lsh", 2), ("lsh", 1)]
    assert [(s.attention, s.n_hashes) for s in suite.eval_settings] == [
        ("full", None), ("lsh", 8), ("lsh", 4), ("lsh", 2), ("lsh", 1), ("full", None)]
    assert [s.self_mask for s in suite.eval_settings] == [None] * 5 + [False]
    gpu = resolve_profile(suite, "gpu")
    assert (gpu.task.seq_len, gpu.task.n_symbols) == (1024, 127)
    assert (gpu.base.d_model, gpu.base.d_ff, gpu.base.n_heads, gpu.base.n_layers) == (256, 256, 4, 1)
    assert gpu.base.causal and gpu.base.shared_qk
    assert gpu.train.steps % gpu.train.checkpoint_every == 0


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_lsh_is_not_trivially_full_attention(profile):
    run = resolve_profile(load_suite(DEFAULT_SUITE), profile)
    layout = describe(run.train_config(run.train_models[-1]), run.task.seq_len)
    assert layout["n_chunks"] >= 8  # a query sees its chunk and the previous one: at most 2/8 of the keys
    assert 2 * layout["chunk_len"] < run.task.seq_len


def test_unknown_key_is_refused_naming_the_field(tmp_path):
    path = write_suite(tmp_path, lambda raw: raw["profiles"]["cpu"]["train"].update(stepz=3))
    with pytest.raises(ValueError, match=r"profiles\.cpu\.train\.stepz"):
        load_suite(path)
    path = write_suite(tmp_path, lambda raw: raw.update(colour="red"))
    with pytest.raises(ValueError, match="colour"):
        load_suite(path)


def test_impossible_values_are_refused_naming_the_field(tmp_path):
    path = write_suite(tmp_path, lambda raw: raw["profiles"]["cpu"]["model"].update(n_heads=3))
    with pytest.raises(ValueError, match="d_model"):
        load_suite(path)
    path = write_suite(tmp_path, lambda raw: raw["profiles"]["cpu"]["eval"].update(seed=0))
    with pytest.raises(ValueError, match="eval.seed"):
        load_suite(path)
    path = write_suite(tmp_path, lambda raw: raw["train_models"][1].pop("n_hashes"))
    with pytest.raises(ValueError, match="train_models.1"):
        load_suite(path)
    path = write_suite(tmp_path, lambda raw: raw["eval_settings"].append({"name": "full", "attention": "full"}))
    with pytest.raises(ValueError, match="unique"):
        load_suite(path)
    path = write_suite(tmp_path, lambda raw: raw.update(kind="memory"))
    with pytest.raises(ValueError, match="kind"):
        load_suite(path)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="profile='tpu'"):
        resolve_profile(load_suite(DEFAULT_SUITE), "tpu")


def test_the_plan_is_table_2_rows_trained_then_every_cell_evaluated():
    run = resolve_profile(load_suite(DEFAULT_SUITE), "cpu")
    plan = training_plan(run)
    rows = ["full", "lsh-4", "lsh-2", "lsh-1"]
    cols = ["full", "lsh-8", "lsh-4", "lsh-2", "lsh-1", "full-no-self-mask"]
    assert [p.point_id for p in plan.trains if "train" in p.studies] == [f"dup-train-{m}" for m in rows]
    assert [p.point_id for p in plan.evals if "table2" in p.studies] == [f"dup-eval-{m}-as-{s}" for m in rows for s in cols]
    copies = len(run.copy_models) * len(run.copy_half_lens)
    assert planned_ids(run) == plan.planned_ids()
    assert len(set(plan.planned_ids())) == 4 + 24 + (copies - 4) + copies  # Table 2's 4 trainings reused once
    lsh1_as_8 = next(e for e in plan.evals if e.point_id == "dup-eval-lsh-1-as-lsh-8")
    assert lsh1_as_8.train.cfg.n_hashes == 1 and lsh1_as_8.cfg.n_hashes == 8
    assert lsh1_as_8.cfg.replace(n_hashes=1) == lsh1_as_8.train.cfg  # the same model, more rounds
    assert all(p.settings == run.train and p.seed == run.train.seed for p in plan.trains)
    assert plan.resume_key() == training_plan(resolve_profile(load_suite(DEFAULT_SUITE), "cpu")).resume_key()
