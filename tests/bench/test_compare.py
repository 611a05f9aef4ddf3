"""bench compare on two synthetic runs with known ratios: the machine-speed factor is separated from
the shape, and only the points changed beyond the noise are flagged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.compare import compare_runs, write_comparison

LENGTHS = (256, 512, 1024, 2048)


def _records(speed: float, slow_point: tuple[str, int] | None = None, fat_point: tuple[str, int] | None = None,
             under_load: bool | None = None) -> list[dict]:
    out = []
    for attention in ("full", "lsh"):
        for seq_len in LENGTHS:
            step = (seq_len**2 / 1e4 if attention == "full" else seq_len / 10) * speed
            if (attention, seq_len) == slow_point:
                step *= 1.5
            saved = seq_len**2 / 1e5 if attention == "full" else seq_len / 100
            rss = 10 + saved * 3
            if (attention, seq_len) == fat_point:
                rss *= 1.2
            rec = {
                "point_id": f"{attention}-{seq_len}", "suite": "speed", "studies": ["vs_seq_len"], "status": "ok",
                "params": {"workload": "attention", "attention": attention, "seq_len": seq_len, "batch_size": 1,
                           "d_model": 64, "n_heads": 2, "n_hashes": 2 if attention == "lsh" else None},
                "metrics": {"step_ms_median": step, "step_ms_q25": step * 0.99, "step_ms_q75": step * 1.01,
                            "saved_for_backward_mib": saved, "rss_delta_mib": rss,
                            "rss_delta_mib_min": rss * 0.99, "rss_delta_mib_max": rss * 1.01},
            }
            if under_load is not None:
                rec["load"] = {"loadavg_1m": 3.0, "other_cpu_frac": 0.5, "steal_frac": None, "under_load": under_load}
            out.append(rec)
    out.append({"point_id": "oom-1", "suite": "speed", "studies": ["vs_seq_len"], "status": "oom", "params": {}})
    return out


def _run(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"suite": "speed", "run_id": path.name, "device": "cpu"}))
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_uniformly_slower_machine_is_one_factor_not_a_finding(tmp_path: Path):
    a = _run(tmp_path / "a", _records(1.0))
    b = _run(tmp_path / "b", _records(2.3))
    cmp = compare_runs(a, b)
    assert cmp.speed_factor == pytest.approx(2.3)
    time = cmp.points[cmp.points["kind"] == "time"]
    assert len(time) == 8 and time["shape"].to_numpy() == pytest.approx(1.0)
    assert not (cmp.points["flag"] != "").any() and not (cmp.within["flag"] != "").any()
    assert cmp.verdicts == ("vs_seq_len: time shape as A at all 8 points; memory within noise (16 figures); "
                            "machine speed factor 2.30x",)


def test_shape_and_memory_changes_are_flagged_at_their_points_only(tmp_path: Path):
    a = _run(tmp_path / "a", _records(1.0))
    b = _run(tmp_path / "b", _records(2.0, slow_point=("lsh", 1024), fat_point=("full", 512)))
    cmp = compare_runs(a, b)
    assert cmp.speed_factor == pytest.approx(2.0)  # the median is robust to the one slow point
    flagged = cmp.points[cmp.points["flag"] != ""].set_index(["point_id", "metric"])
    assert set(flagged.index) == {("lsh-1024", "step_ms_median"), ("full-512", "rss_delta_mib")}
    assert flagged.loc[("lsh-1024", "step_ms_median"), "shape"] == pytest.approx(1.5)
    assert flagged.loc[("full-512", "rss_delta_mib"), "ratio"] == pytest.approx(1.2)
    within = cmp.within.set_index("config")
    assert len(within) == 4 and list(cmp.within["flag"]).count("SHAPE") == 1
    assert within.loc[within["flag"] == "SHAPE", "change"].iloc[0] == pytest.approx(1.5)  # LSH/full moved
    (verdict,) = cmp.verdicts
    assert "time shape differs beyond the noise at 2 of 12 ratios" in verdict
    assert "memory differs at 1 points (rss_delta_mib)" in verdict
    text = write_comparison(cmp, tmp_path / "out" / "cmp.md").read_text()
    assert "2.00x A's time" in text and "SHAPE" in text and "DIFFERS" in text


def test_a_point_outside_the_noise_under_load_is_not_called_a_shape_change(tmp_path: Path):
    a = _run(tmp_path / "a", _records(1.0))
    b = _run(tmp_path / "b", _records(1.0, slow_point=("full", 2048), under_load=True))
    cmp = compare_runs(a, b)
    row = cmp.points[(cmp.points["point_id"] == "full-2048") & (cmp.points["kind"] == "time")].iloc[0]
    assert row["flag"] == "under load"
    assert "1 more outside the noise but measured under load" in cmp.verdicts[0]


def test_cli_compare_writes_markdown_and_refuses_a_missing_run(tmp_path: Path, capsys):
    a = _run(tmp_path / "a", _records(1.0))
    b = _run(tmp_path / "b", _records(3.0))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.md")]) == 0
    assert "machine speed factor 3.00x" in capsys.readouterr().out
    assert (tmp_path / "c.md").is_file()
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing" in err


# ------------------------------------------------------------------------------------------ quality

QUALITY_STUDIES = {"shared_qk": {"models": ["full-separate-qk", "full"], "eval": []},
                   "hash_rounds": {"models": ["lsh-2", "full"], "eval": ["lsh-8"]}}
BPB = {("full", "as trained"): 2.0, ("full-separate-qk", "as trained"): 2.05, ("lsh-2", "as trained"): 2.3,
       ("lsh-2", "lsh-8"): 2.25, ("full", "lsh-8"): 2.6}


def _quality_run(path: Path, shift: dict | None = None, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """Eval records per (model, setting, seed): bpb + 0.1 * seed (seed spread 0.1), plus `shift`."""
    recs = []
    for (model, setting), value in BPB.items():
        for seed in seeds:
            recs.append({"point_id": f"eval-{model}-{setting}-s{seed}", "suite": "quality", "status": "ok",
                         "studies": [s for s, st in QUALITY_STUDIES.items() if model in st["models"]],
                         "params": {"train_model": model, "seed": seed, "role": "eval",
                                    "eval_setting": None if setting == "as trained" else setting},
                         "metrics": {"bpb": value + 0.1 * seed + (shift or {}).get((model, setting), 0.0)}})
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"kind": "quality", "suite": "quality", "run_id": path.name,
                                               "device": "cpu", "suite_spec": {"studies": QUALITY_STUDIES}}))
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_quality_runs_compare_final_bpb_and_flag_only_beyond_both_seed_spreads(tmp_path: Path, capsys):
    a = _quality_run(tmp_path / "a")
    b = _quality_run(tmp_path / "b", shift={("lsh-2", "lsh-8"): 0.3, ("full", "as trained"): 0.05})
    cmp = compare_runs(a, b)
    q = cmp.quality.set_index(["model", "setting"])
    assert len(q) == len(BPB)
    assert q.loc[("lsh-2", "lsh-8"), "diff"] == pytest.approx(0.3) and q.loc[("lsh-2", "lsh-8"), "flag"] == "BPB"
    assert q.loc[("full", "as trained"), "diff"] == pytest.approx(0.05)  # inside the 0.1 seed spread
    assert q.loc[("full", "as trained"), "flag"] == "" and q.loc[("full", "as trained"), "spread"] == pytest.approx(0.1)
    assert q.loc[("full", "lsh-8"), "study"] == "hash_rounds" and q.loc[("full", "as trained"), "study"] == \
        "shared_qk, hash_rounds"
    assert cmp.verdicts == (
        "shared_qk: final bpb as A at all 2 (model, setting) pairs (within the seed spreads)",
        "hash_rounds: final bpb beyond both runs' seed spreads at 1 of 4: lsh-2 lsh-8 +0.3000",
    )
    text = write_comparison(cmp, tmp_path / "cmp.md").read_text()
    assert "## Final bits per byte" in text and "| BPB " in text and "+0.3000" in text
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.md")]) == 0
    out = capsys.readouterr().out
    assert "hash_rounds: final bpb beyond" in out and "BPB      lsh-2 lsh-8: B - A +0.3000 bpb" in out


def test_quality_bpb_part_joins_the_studys_time_line_and_speed_runs_have_none(tmp_path: Path):
    a, b = _quality_run(tmp_path / "a", seeds=(0,)), _quality_run(tmp_path / "b", seeds=(0,))
    for run, speed in ((a, 1.0), (b, 2.0)):  # one training record per run, timed
        rec = {"point_id": "train-full-s0", "suite": "quality", "status": "ok", "studies": ["shared_qk"],
               "params": {"train_model": "full", "seed": 0, "role": "train", "attention": "full"},
               "metrics": {"step_ms_median": 10.0 * speed, "step_ms_q25": 9.9 * speed, "step_ms_q75": 10.1 * speed}}
        with (run / "records.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")
    cmp = compare_runs(a, b)
    assert cmp.verdicts[0] == ("shared_qk: time shape as A at all 1 points; memory within noise (0 figures); "
                               "machine speed factor 2.00x; final bpb as A at all 2 (model, setting) pairs "
                               "(within the seed spreads)")
    assert not (cmp.quality["flag"] != "").any()  # one seed, identical numbers: spread 0, difference 0
    assert compare_runs(_run(tmp_path / "sa", _records(1.0)), _run(tmp_path / "sb", _records(1.0))).quality is None
