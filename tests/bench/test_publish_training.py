"""Publishing training studies: each training record's learning curve as W&B history, one row per
optimiser step under `train/<study>/<model>-s<seed>/...` keys plotted against `train/step`, never
logged twice into one W&B run (republish, live then publish, a live run killed before finish, a
resumed training); the quality suite's `quality/final` and analysis tables; one real offline run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.publish import LiveLogger, RecordingSink, publish_run
from bench.publish.rundata import wandb_state
from bench.publish.training import (
    STEP_KEY, TIME_KEY, analysis_tables, curve_label, curve_prefixes, final_table, training_history,
)
from tests.bench.test_publish import write_run

STUDIES = {"full": ["shared_qk", "depth"], "lsh-2": ["hash_rounds"]}


def _point(step, loss, valid=None):
    return {"step": step, "loss": loss, "accuracy": 1 - loss / 10, "lr": 1e-3 / step, "train_s": step / 10,
            "valid": None if valid is None else {"valid_bpb": valid}}


def train_record(model, seed, steps=(5, 10, 15, 20), status="ok"):
    """A quality training record as bench.training.records writes it: role train, a curve whose
    validating steps (10, 20) carry valid_bpb."""
    curve = [_point(s, 6 - s / 10 - seed, valid=(8 - s / 10) if s % 10 == 0 else None) for s in steps]
    return {"point_id": f"train-{model}-s{seed}", "run_id": "cpu-1", "suite": "quality", "studies": STUDIES[model],
            "status": status, "reason": None, "params": {"train_model": model, "seed": seed, "train_seed": seed,
                                                        "role": "train", "eval_setting": None},
            "metrics": {"final_loss": curve[-1]["loss"] if curve else None}, "wall_s": 1.0, "curve": curve}


def eval_record(model, seed, setting, bpb, status="ok"):
    return {"point_id": f"eval-{model}-s{seed}-{setting}", "run_id": "cpu-1", "suite": "quality",
            "studies": STUDIES[model], "status": status, "reason": None,
            "params": {"train_model": model, "seed": seed, "role": "eval", "eval_setting": setting},
            "metrics": {"bpb": bpb}, "wall_s": 0.5}


def analysis_record(seed):
    rows = [{"n_hashes": n, "chunk_len": 16, "seed": hs, "mass_recall": n / 8, "relative_error": 1 / n}
            for n in (1, 8) for hs in (0, 1)]
    return {"point_id": f"approx-full-s{seed}", "run_id": "cpu-1", "suite": "quality", "studies": ["lsh_approximation"],
            "status": "ok", "reason": None, "params": {"train_model": "full", "seed": seed, "role": "analysis",
                                                        "analysis": "lsh_approximation"},
            "metrics": {"approximation_rows": len(rows)}, "wall_s": 0.2, "table": rows}


def quality_records():
    return [train_record("full", 0), train_record("lsh-2", 1),
            eval_record("full", 0, "as trained", 6.5), eval_record("lsh-2", 1, "as trained", 6.9),
            eval_record("lsh-2", 1, "lsh-8", 6.8), eval_record("full", 0, "lsh-8", None, status="error"),
            analysis_record(0), analysis_record(1)]


def quality_run(tmp_path, records=None) -> Path:
    return write_run(tmp_path / "quality" / "cpu-1", quality_records() if records is None else records, suite="quality")


def curve_rows(sink: RecordingSink) -> list[dict]:
    return [m for _, m in sink.metrics if STEP_KEY in m]


def logged_points(sink: RecordingSink) -> list[tuple[str, int]]:
    """(curve prefix, step) of every loss logged: a curve drawn twice shows a pair twice."""
    return [(k.rsplit("/", 1)[0], m[STEP_KEY]) for m in curve_rows(sink) for k in m if k.endswith("/loss")]


# ---- pure: keys and rows -----------------------------------------------------------------------

def test_keys_are_grouped_by_study_and_named_model_and_seed():
    assert curve_label(train_record("full", 0)) == "full-s0"
    assert curve_prefixes(train_record("full", 0)) == ("train/shared_qk/full-s0", "train/depth/full-s0")
    old_dup = {"suite": "duplication", "studies": ["train"], "params": {"train_model": "lsh-4", "train_seed": 3}}
    assert curve_prefixes(old_dup) == ("train/train/lsh-4-s3",)  # before the common runner: train_seed only
    odd = {"suite": "quality", "studies": [], "params": {"train_model": "lsh.2 (x)", "seed": 0}}
    assert curve_prefixes(odd) == ("train/quality/lsh_2_x-s0",)  # W&B nests on `.`: kept out of names


def test_one_row_per_step_with_every_study_of_the_model():
    rows = training_history(train_record("full", 1, steps=(20, 5, 15, 10)))  # out of order in the record
    assert [r.step for r in rows] == [5, 10, 15, 20]
    assert all(r.prefixes == ("train/shared_qk/full-s1", "train/depth/full-s1") for r in rows)
    first, second = rows[0].values, rows[1].values
    assert first == {STEP_KEY: 5, TIME_KEY: 0.5,
                     "train/shared_qk/full-s1/loss": 4.5, "train/shared_qk/full-s1/accuracy": 0.55,
                     "train/shared_qk/full-s1/lr": pytest.approx(2e-4),
                     "train/depth/full-s1/loss": 4.5, "train/depth/full-s1/accuracy": 0.55,
                     "train/depth/full-s1/lr": pytest.approx(2e-4)}  # no valid_bpb: step 5 did not validate
    assert second["train/depth/full-s1/valid_bpb"] == 7.0 and second["train/shared_qk/full-s1/valid_bpb"] == 7.0


def test_steps_already_logged_are_left_out_per_curve():
    rec = train_record("full", 0)
    rows = training_history(rec, {"train/shared_qk/full-s0": 10, "train/depth/full-s0": 15})
    assert [(r.step, r.prefixes) for r in rows] == [(15, ("train/shared_qk/full-s0",)),
                                                    (20, ("train/shared_qk/full-s0", "train/depth/full-s0"))]
    assert not any(k.startswith("train/depth/") for k in rows[0].values)
    assert training_history(rec, {"train/shared_qk/full-s0": 20, "train/depth/full-s0": 20}) == []
    assert training_history(eval_record("full", 0, "as trained", 6.5)) == []  # no curve, no rows


def test_final_table_and_analysis_rows():
    records = quality_records()
    final = final_table(records)
    assert list(final.columns) == ["model", "eval_setting", "seed", "bpb", "status"]
    assert final.values.tolist()[:3] == [["full", "as trained", 0, 6.5, "ok"], ["lsh-2", "as trained", 1, 6.9, "ok"],
                                         ["lsh-2", "lsh-8", 1, 6.8, "ok"]]
    assert final.iloc[3][["model", "eval_setting", "status"]].tolist() == ["full", "lsh-8", "error"]
    assert pd.isna(final.iloc[3]["bpb"])  # a failed evaluation is a row too, without a number
    [(name, table)] = analysis_tables(records).items()
    assert name == "quality/lsh_approximation" and len(table) == 8
    assert list(table.columns[:3]) == ["model", "train_seed", "n_hashes"]
    assert table.loc[table["train_seed"] == 1, "seed"].tolist() == [0, 1, 0, 1]  # the row's own (hash) seed kept
    assert final_table([train_record("full", 0)]) is None and analysis_tables([train_record("full", 0)]) == {}


# ---- publish_run and LiveLogger through a RecordingSink ------------------------------------------

def test_publish_run_logs_curves_per_step_and_the_quality_tables(tmp_path):
    run_dir = quality_run(tmp_path)
    sink = RecordingSink()
    publish_run(run_dir, sink=sink, secrets=frozenset())
    assert sink.x_axes["train/*"] == STEP_KEY
    assert sorted(logged_points(sink)) == sorted(
        [(f"train/{s}/full-s0", step) for s in ("shared_qk", "depth") for step in (5, 10, 15, 20)]
        + [("train/hash_rounds/lsh-2-s1", step) for step in (5, 10, 15, 20)])
    assert len(curve_rows(sink)) == 8  # one row per (training, step): full's two studies share theirs
    bpb = {(m[STEP_KEY], k): v for m in curve_rows(sink) for k, v in m.items() if k.endswith("/valid_bpb")}
    assert bpb == {(10, "train/shared_qk/full-s0/valid_bpb"): 7.0, (10, "train/depth/full-s0/valid_bpb"): 7.0,
                   (20, "train/shared_qk/full-s0/valid_bpb"): 6.0, (20, "train/depth/full-s0/valid_bpb"): 6.0,
                   (10, "train/hash_rounds/lsh-2-s1/valid_bpb"): 7.0, (20, "train/hash_rounds/lsh-2-s1/valid_bpb"): 6.0}
    assert sink.tables["quality/final"]["bpb"].tolist()[:3] == [6.5, 6.9, 6.8]
    assert len(sink.tables["quality/lsh_approximation"]) == 8
    assert "curve" not in sink.tables["records"].columns and "table" not in sink.tables["records"].columns


def test_republish_logs_no_curve_twice(tmp_path):
    run_dir = quality_run(tmp_path)
    first, second = RecordingSink(), RecordingSink()
    publish_run(run_dir, sink=first, secrets=frozenset())
    publish_run(run_dir, sink=second, secrets=frozenset())
    assert len(logged_points(first)) == 12 and logged_points(second) == []
    assert second.inits[0].start_step == first.next_step  # the same W&B run, continued
    assert set(second.tables) == set(first.tables)  # the tables are regenerated, as the records table is


def test_a_training_continued_later_adds_only_its_new_steps(tmp_path):
    run_dir = quality_run(tmp_path, [train_record("lsh-2", 0, steps=(5, 10))])
    publish_run(run_dir, sink=RecordingSink(), secrets=frozenset())
    with open(run_dir / "records.jsonl", "a") as f:  # the resumed training's record: its whole curve
        f.write(json.dumps(train_record("lsh-2", 0, steps=(5, 10, 15, 20))) + "\n")
    sink = RecordingSink()
    publish_run(run_dir, sink=sink, secrets=frozenset())
    assert logged_points(sink) == [("train/hash_rounds/lsh-2-s0", 15), ("train/hash_rounds/lsh-2-s0", 20)]


def test_live_logger_logs_each_curve_as_its_record_lands_and_publish_adds_none(tmp_path):
    records = quality_records()
    run_dir = quality_run(tmp_path, [])
    live_sink = RecordingSink()
    live = LiveLogger(run_dir, sink=live_sink, secrets=frozenset())
    live.log_record(records[0])
    assert live_sink.x_axes == {"train/*": STEP_KEY}
    assert [m.get("point_id") for _, m in live_sink.metrics] == ["train-full-s0"] + [None] * 4  # its step, its curve
    assert [m[STEP_KEY] for m in curve_rows(live_sink)] == [5, 10, 15, 20]
    for r in records[1:]:
        live.log_record(r)
    with open(run_dir / "records.jsonl", "w") as f:  # what the runner appended meanwhile
        f.writelines(json.dumps(r) + "\n" for r in records)
    live.finish()
    assert len(logged_points(live_sink)) == 12 and len(set(logged_points(live_sink))) == 12
    assert "quality/final" in live_sink.tables and "quality/lsh_approximation" in live_sink.tables
    later = RecordingSink()
    publish_run(run_dir, sink=later, secrets=frozenset())
    assert logged_points(later) == []


def test_a_live_run_killed_before_finish_keeps_its_curves_logged(tmp_path):
    run_dir = quality_run(tmp_path, [])
    live_sink = RecordingSink()
    live = LiveLogger(run_dir, sink=live_sink, secrets=frozenset())
    live.log_record(train_record("full", 0))  # ... and the process dies: no finish()
    assert wandb_state(run_dir)["train_curves"] == {"train/shared_qk/full-s0": 20, "train/depth/full-s0": 20}
    assert wandb_state(run_dir)["next_step"] == live_sink.next_step
    (run_dir / "records.jsonl").write_text(json.dumps(train_record("full", 0)) + "\n")
    sink = RecordingSink()
    publish_run(run_dir, sink=sink, secrets=frozenset())
    assert logged_points(sink) == [] and sink.inits[0].start_step == live_sink.next_step


def test_live_finish_logs_the_curves_of_an_earlier_session_not_logged_live(tmp_path):
    earlier = train_record("lsh-2", 1)  # trained by a run without --wandb, resumed with it
    run_dir = quality_run(tmp_path, [earlier])
    sink = RecordingSink()
    live = LiveLogger(run_dir, sink=sink, secrets=frozenset())
    live.log_record(eval_record("lsh-2", 1, "as trained", 6.9))
    assert logged_points(sink) == []
    live.finish()
    assert logged_points(sink) == [("train/hash_rounds/lsh-2-s1", s) for s in (5, 10, 15, 20)]
    assert sink.x_axes == {"train/*": STEP_KEY}


# ---- one real offline W&B run ------------------------------------------------------------------

def test_real_offline_wandb_run_takes_curves_and_quality_tables(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = quality_run(tmp_path)
    offline = Path(publish_run(run_dir))  # define_metric("train/*", step_metric="train/step") for real
    assert list(offline.glob("*.wandb"))
    media = offline / "files" / "media" / "table" / "quality"
    [final] = media.glob("final_*.table.json")
    assert json.loads(final.read_text())["columns"] == ["model", "eval_setting", "seed", "bpb", "status"]
    [approx] = media.glob("lsh_approximation_*.table.json")
    assert len(json.loads(approx.read_text())["data"]) == 8
    assert len(wandb_state(run_dir)["train_curves"]) == 3
