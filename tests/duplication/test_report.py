"""Report building blocks are pure functions of records: matrix, paper alignment, curves."""
import math

import pandas as pd

from bench.store import latest_by_point
from bench.duplication.report import (
    accuracy_matrix, paper_matrix, side_by_side, training_curves,
)


def params(role, model, setting=None, attention="full", n_hashes=None):
    return {"role": role, "train_model": model, "eval_setting": setting, "attention": attention, "n_hashes": n_hashes}


def train_rec(model, attention, n_hashes=None, curve=()):
    return {"point_id": f"t-{model}", "status": "ok", "params": params("train", model, None, attention, n_hashes),
            "metrics": {}, "curve": list(curve)}


def eval_rec(model, setting, acc, attention, n_hashes=None, status="ok"):
    return {"point_id": f"e-{model}-{setting}", "status": status,
            "params": params("eval", model, setting, attention, n_hashes), "metrics": {"accuracy": acc}}


SPEC = {"studies": {"table2": {"grid": {"train_model": ["dense", "hash1"], "eval_setting": ["dense", "h8", "h1"]}}}}


def sample():
    return [
        train_rec("dense", "full"), train_rec("hash1", "lsh", 1),
        eval_rec("hash1", "h1", 0.25, "lsh", 1), eval_rec("dense", "h1", 0.5, "lsh", 1),
        eval_rec("dense", "dense", 0.9, "full"), eval_rec("dense", "dense", 1.0, "full"),  # the later one wins
        eval_rec("dense", "h8", 0.75, "lsh", 8), eval_rec("hash1", "dense", 0.1, "full", status="error"),
    ]


def test_matrix_follows_suite_order_and_keeps_the_latest_ok_record():
    m = accuracy_matrix(sample(), SPEC)
    assert list(m.index) == ["dense", "hash1"] and list(m.columns) == ["dense", "h8", "h1"]
    assert m.loc["dense", "dense"] == 100.0 and m.loc["dense", "h1"] == 50.0 and m.loc["hash1", "h1"] == 25.0
    assert math.isnan(m.loc["hash1", "dense"])  # only an error record: not a measurement
    assert len(latest_by_point(sample())) == 7


def test_paper_numbers_are_aligned_by_attention_and_hashes_not_by_name():
    recs = sample()
    paper = paper_matrix(accuracy_matrix(recs, SPEC), recs)
    assert paper.loc["dense", "dense"] == 100.0 and paper.loc["dense", "h8"] == 94.8
    assert paper.loc["dense", "h1"] == 52.5 and paper.loc["hash1", "h1"] == 77.9
    assert paper.loc["hash1", "dense"] == 0.8


def test_side_by_side_cells():
    measured = pd.DataFrame({"a": [97.25, float("nan")]}, index=["x", "y"])
    paper = pd.DataFrame({"a": [94.8, 0.8]}, index=["x", "y"])
    assert side_by_side(measured, paper)["a"].tolist() == ["97.2 (94.8)", "- (0.8)"]


def test_curves_come_from_training_records():
    curve = [{"step": 10, "loss": 2.0, "accuracy": 0.1, "lr": 1e-3, "train_s": 1.0},
             {"step": 20, "loss": 1.0, "accuracy": 0.5, "lr": 1e-3, "train_s": 2.0}]
    df = training_curves([train_rec("dense", "full", curve=curve), train_rec("hash1", "lsh", 1)])
    assert df["model"].tolist() == ["dense", "dense"] and df["loss"].tolist() == [2.0, 1.0]
    assert accuracy_matrix([]).empty


def test_findings_come_from_the_matrix_and_change_with_it():
    from bench.duplication.report import findings

    recs = sample()
    m = accuracy_matrix(recs, SPEC)
    text = "\n".join(findings(m, paper_matrix(m, recs)))
    assert "`dense` scores 100.0% evaluated as `dense` and 50.0% as `h1` (-50.0 points)" in text
    # paper cells in common: dense x {dense 100, h8 94.8, h1 52.5}, hash1 x h1 77.9 (hash1 x dense unmeasured)
    assert "(4 cells in common)" in text and "`hash1` evaluated as `h1`: 25.0% measured vs 77.9% (-52.9)" in text
    recs.append(eval_rec("hash1", "h1", 0.8, "lsh", 1))  # a later, better evaluation
    m2 = accuracy_matrix(recs, SPEC)
    assert findings(m2, paper_matrix(m2, recs)) != text.splitlines()
    assert findings(pd.DataFrame(dtype=float), pd.DataFrame(dtype=float)) == []
