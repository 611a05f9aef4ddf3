"""Reports from fixture records: markdown, CSV and PNG files, status listing, exponent fits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import report as r

FIXTURE = Path(__file__).parent / "fixtures" / "memory_run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "memory" / "cpu-cpu"
    shutil.copytree(FIXTURE, dest)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture run with its report written once, for the tests that only read it."""
    dest = tmp_path_factory.mktemp("report") / "memory" / "cpu-cpu"
    shutil.copytree(FIXTURE, dest)
    assert r.write_report(dest) == dest / "report.md"
    return dest


def test_write_report_writes_markdown_csv_and_png(built: Path):
    run_dir = built
    text = (run_dir / "report.md").read_text()
    # header: environment and the commands that reproduce the run
    assert "2.13.0+cpu" in text and "0123456789abcdef" in text and "Synthetic CPU" in text
    assert "python -m bench run memory --profile cpu --device cpu --fresh" in text
    assert f"python -m bench report {run_dir.resolve()}" in text  # outside the repo: its own folder
    assert "rss_delta_mib" in text and "peak_alloc_mib" in text  # the memory note
    records = pd.read_csv(run_dir / "tables" / "records.csv")
    assert len(records) == 16 and records["point_id"].is_unique
    study = pd.read_csv(run_dir / "tables" / "vs_seq_len.csv")
    assert list(study.columns[:2]) == ["attention", "seq_len"]
    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    for png in pngs:
        assert f"(plots/{png.name})" in text


def test_report_lists_every_non_ok_row_with_its_reason(built: Path):
    run_dir = built
    text = (run_dir / "report.md").read_text()
    assert "host memory watchdog: child RSS 18000 MiB" in text
    assert "RuntimeError: shapes (2, 512, 64)" in text
    assert "no record after 600 s" in text and "cannot fit" in text
    counts = pd.read_csv(run_dir / "tables" / "status.csv").set_index("status")["count"].to_dict()
    assert counts == {"ok": 16, "oom": 1, "timeout": 1, "error": 1, "skipped": 1}
    not_ok = pd.read_csv(run_dir / "tables" / "not_ok.csv")
    assert sorted(not_ok["status"]) == ["error", "oom", "skipped", "timeout"]


def test_exponents_match_the_synthetic_power_laws(built: Path):
    run_dir = built
    exps = pd.read_csv(run_dir / "tables" / "exponents.csv")
    by = exps.set_index(["study", "series", "metric"])
    assert by.loc[("vs_seq_len", "attention=full", "rss_delta_mib"), "measured_slope"] == pytest.approx(2.0)
    assert by.loc[("vs_seq_len", "attention=full", "rss_delta_mib"), "predicted_slope"] == pytest.approx(2.0)
    assert by.loc[("vs_seq_len", "attention=lsh", "rss_delta_mib"), "measured_slope"] == pytest.approx(1.0)
    assert by.loc[("vs_seq_len", "attention=lsh", "rss_delta_mib"), "predicted_slope"] == pytest.approx(1.0)
    assert by.loc[("vs_layers", "reversible=False", "rss_delta_mib"), "predicted_slope"] == pytest.approx(1.0)
    assert by.loc[("vs_layers", "reversible=True", "rss_delta_mib"), "measured_slope"] == pytest.approx(0.0)
    assert by.loc[("vs_layers", "reversible=True", "rss_delta_mib"), "table3_row"] == "Reversible LSH Transformer"


def test_hinted_gpu_metric_falls_back_to_cpu_memory(built: Path):
    """The vs_seq_len hint asks for peak_alloc_mib, null on CPU: rss_delta_mib (and saved bytes) replace it."""
    run_dir = built
    names = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert "vs_seq_len__rss_delta_mib.png" in names and "vs_seq_len__saved_for_backward_mib.png" in names
    assert not any("peak_alloc" in n for n in names)


def test_report_is_regenerated_not_accumulated(run_dir: Path):
    (run_dir / "plots").mkdir()
    stale = run_dir / "plots" / "stale.png"
    stale.write_bytes(PNG_MAGIC)
    first = r.write_report(run_dir).read_text()
    assert not stale.exists()
    assert r.write_report(run_dir).read_text() == first


def test_report_with_only_failed_points(tmp_path: Path):
    meta = json.loads((FIXTURE / "run.json").read_text())
    failed = [rec for rec in r.read_records(FIXTURE / "records.jsonl") if rec["status"] != "ok"]
    (tmp_path / "run.json").write_text(json.dumps(meta))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in failed))
    text = r.write_report(tmp_path).read_text()
    assert "| oom" in text and "| error" in text
    assert "_No ok points with a varying axis to show._" in text
    assert not list((tmp_path / "plots").glob("*.png"))


def test_torn_last_line_is_ignored_but_a_torn_middle_line_is_not(tmp_path: Path):
    lines = (FIXTURE / "records.jsonl").read_text().splitlines()
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n" + lines[0][:40])
    assert len(r.read_records(path)) == len(lines)
    path.write_text(lines[0][:40] + "\n" + "\n".join(lines))
    with pytest.raises(ValueError, match="records.jsonl:1"):
        r.read_records(path)


def _rec(seq_len: int, attention: str, n_hashes, step_ms: float, batch: int) -> dict:
    return {
        "status": "ok", "studies": ["speed"],
        "params": {"workload": "model", "attention": attention, "seq_len": seq_len, "batch_size": batch,
                   "n_hashes": n_hashes, "d_model": 64, "d_ff": 128, "n_heads": 2, "n_layers": 2,
                   "chunk_len": 32 if attention == "lsh" else None, "reversible": True, "ff_chunks": 1},
        "metrics": {"step_ms_median": step_ms, "rss_delta_mib": 1.0},
    }


def test_study_view_without_hints_splits_series_but_not_columns_fixed_by_x():
    """A fixed-token study: batch_size follows seq_len, so it must not split the series."""
    tokens = 4096
    records = [
        _rec(l, a, h, 1.0, tokens // l)
        for l in (256, 512, 1024)
        for a, h in (("full", None), ("lsh", 1), ("lsh", 4))
    ]
    view = r.study_view(r.ok_frame(records), "speed", {}, "cpu")
    assert view.x == "seq_len"
    assert view.series == ("attention", "n_hashes")
    assert view.hue == "attention" and view.style == "n_hashes"
    assert view.metrics == ("rss_delta_mib", "step_ms_median")
    assert view.logx and view.logy


def test_study_view_honours_the_hint():
    records = [_rec(l, "lsh", h, 1.0, 1) for l in (256, 512) for h in (1, 2, 4)]
    spec = {"grid": {"n_hashes": [1, 2, 4], "seq_len": [256, 512]},
            "plot": {"x": "n_hashes", "hue": "seq_len", "y": ["step_ms_median"], "logx": False, "logy": False}}
    view = r.study_view(r.ok_frame(records), "speed", spec, "cpu")
    assert (view.x, view.hue, view.metrics, view.logx) == ("n_hashes", "seq_len", ("step_ms_median",), False)


def test_status_counts_lists_every_status():
    counts = r.status_counts([{"status": "ok"}, {"status": "ok"}, {"status": "oom"}])
    assert counts.set_index("status")["count"].to_dict() == {"ok": 2, "oom": 1, "timeout": 0, "error": 0, "skipped": 0}


def test_measured_points_flow_into_a_report(tmp_path: Path):
    """measure() -> contract records -> write_report, on real tiny points: the device-independent
    saved bytes grow faster than linearly for full attention and linearly for LSH."""
    import torch

    from bench.measure_point import measure
    from bench.point import GridPoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = []
    for attention in ("full", "lsh"):
        for seq_len in (64, 128, 256):
            model = {"d_model": 32, "n_heads": 2, "attention": attention, "causal": True}
            if attention == "lsh":
                model.update(n_hashes=1, chunk_len=16)
            p = GridPoint("tiny", "attention", "cpu", "float32", 1, seq_len, model, repeats=1, warmup=0,
                          studies=("vs_seq_len",))
            lines.append({"point_id": p.point_id, "run_id": "t", "suite": "tiny", "studies": ["vs_seq_len"],
                          "status": "ok", "reason": None, "point": p.to_json(), **measure(p),
                          "wall_s": 0.1, "finished_at": "2025-01-01T00:00:00+00:00"})
    torch.set_num_threads(threads)
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    (tmp_path / "run.json").write_text(json.dumps({"suite": "tiny", "run_id": "t", "device": "cpu"}))
    text = r.write_report(tmp_path).read_text()
    assert "## Study `vs_seq_len`" in text
    exps = pd.read_csv(tmp_path / "tables" / "exponents.csv").set_index(["series", "metric"])
    full = exps.loc[("attention=full", "saved_for_backward_mib")]
    lsh = exps.loc[("attention=lsh", "saved_for_backward_mib")]
    assert full["measured_slope"] > 1.3 and full["predicted_slope"] == pytest.approx(2.0, abs=0.2)
    assert lsh["measured_slope"] == pytest.approx(1.0, abs=0.1)
    assert full["table3_row"] == "Transformer" and lsh["table3_row"] == "LSH Transformer"


# --------------------------------------------------------------------------- readers' plots and load


def _fixture_records() -> list[dict]:
    return r.read_records(FIXTURE / "records.jsonl")


def _view(records, study: str = "vs_seq_len"):
    meta = json.loads((FIXTURE / "run.json").read_text())
    return r.study_view(r.ok_frame(records), study, meta["suite_spec"]["studies"][study], "cpu")


def test_growth_plot_has_a_table3_guide_per_series_and_exponents_in_the_legend():
    from bench.report.figures import draw_metric

    view = _view(_fixture_records())
    exps = r.exponent_table([view])
    fig, caption = draw_metric(view, "rss_delta_mib", {"torch": "2.13.0+cpu", "device_name": "Synthetic CPU"},
                               "cpu", exps)
    ax = fig.axes[0]
    guides = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(guides) == 2  # one per series (full, LSH)
    legend = [t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()]
    assert "full (naive): fit 2.00, Table 3 2.00" in legend and "LSH: fit 1.00, Table 3 1.00" in legend
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "sequence length (tokens)"
    assert ax.get_ylabel() == "peak resident memory above the pre-build baseline (MiB)"
    assert "batch size 1" in caption and "d_model 64" in caption and "torch 2.13.0+cpu" in caption
    assert "float32 on Synthetic CPU" in caption


def test_ordered_series_get_a_sequential_palette_in_numeric_order():
    from bench.report.figures import series_colours

    records = [_rec(l, "lsh", h, float(h), 1) for l in (256, 512) for h in (16, 1, 4)]
    records += [_rec(l, "full", None, 9.0, 1) for l in (256, 512)]
    view = r.study_view(r.ok_frame(records), "speed", {"plot": {"x": "seq_len", "hue": "n_hashes"}}, "cpu")
    hashes = [h for h in view.frame["n_hashes"].dropna().drop_duplicates()]
    assert hashes == [1, 4, 16]  # numeric order, not text order (1, 16, 4)
    colours = series_colours(view.frame, view.series)
    from bench.report.frames import series_label

    key = {h: series_label({"attention": "lsh" if h else "full", "n_hashes": h}, view.series) for h in (None, 1, 4, 16)}
    lsh = [colours[key[h]] for h in (1, 4, 16)]
    assert len({tuple(c) for c in lsh}) == 3
    brightness = [sum(c) for c in lsh]
    assert brightness == sorted(brightness, reverse=True)  # a ramp: more rounds, darker
    assert colours[key[None]] not in lsh


def test_series_that_coincide_are_drawn_once_and_named_in_the_caption():
    from bench.report.figures import draw_metric

    records = [_rec(l, a, 2 if a == "lsh" else None, 1.0, 1) for l in (256, 512, 1024) for a in ("full", "lsh")]
    for rec in records:
        rec["metrics"]["saved_for_backward_mib"] = rec["params"]["seq_len"] / 100
    view = r.study_view(r.ok_frame(records), "speed", {"plot": {"x": "seq_len", "y": ["saved_for_backward_mib"],
                                                                 "logx": True, "logy": True, "note": "Why."}}, "cpu")
    fig, caption = draw_metric(view, "saved_for_backward_mib", {}, "cpu", r.exponent_table([view]))
    solid = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == 1
    assert "full (naive) and LSH coincide" in caption and caption.endswith("Why.")


def test_points_under_load_are_marked_counted_and_old_records_still_render(tmp_path: Path):
    from bench.report.figures import draw_metric

    records = _fixture_records()
    ok = [rec for rec in records if rec["status"] == "ok"]
    for i, rec in enumerate(ok):
        rec["load"] = {"loadavg_1m": 2.5, "other_cpu_frac": 0.6 if i < 3 else 0.0, "steal_frac": None,
                       "under_load": i < 3}
        rec["metrics"]["rss_delta_mib_min"] = rec["metrics"]["rss_delta_mib"] * 0.9
        rec["metrics"]["rss_delta_mib_max"] = rec["metrics"]["rss_delta_mib"] * 1.1
        rec["metrics"]["memory_processes"] = 3
    shutil.copy(FIXTURE / "run.json", tmp_path / "run.json")
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in records))
    text = r.write_report(tmp_path).read_text()
    assert "**3 of 16 ok points were measured under load**" in text
    table = pd.read_csv(tmp_path / "tables" / "vs_seq_len.csv")
    assert {"rss_delta_mib_min", "rss_delta_mib_max", "under_load"} <= set(table.columns)
    assert table["under_load"].sum() == 3
    view = _view(records)
    fig, caption = draw_metric(view, "rss_delta_mib", {}, "cpu", None)
    assert "Hollow markers: 3 point(s)" in caption and "lowest to highest reading" in caption
    from matplotlib.collections import PathCollection

    markers = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    hollow = [c for c in markers if c.get_facecolors().size == 0 or c.get_facecolors()[0][3] == 0]
    assert sum(len(c.get_offsets()) for c in hollow) == 3
    # the fixture itself predates the load field: it renders and says so
    old = r.write_report(_copy(tmp_path / "old")).read_text()
    assert "do not say whether the machine was busy" in old


def _copy(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    return dest


def test_exponents_say_too_few_points_and_explain_every_gap():
    records = [_rec(l, "full", None, 1.0, 1) for l in (256, 512)]
    for rec in records:
        rec["metrics"]["rss_delta_mib"] = float(rec["params"]["seq_len"])  # slope 1 against Table 3's 2
    exps = r.exponent_table([r.study_view(r.ok_frame(records), "speed", {}, "cpu")]).set_index("metric")
    row = exps.loc["rss_delta_mib"]
    assert row["r2"] == "too few points" and row["n"] == 2
    assert row["flag"] == "GAP" and "only two sizes" in row["explanation"]
    # No figure of the run accounts for a slope of 1 against 2 (no state, saved bytes or FLOPs recorded).
    assert "unexplained" in row["explanation"]


def test_reversible_saved_bytes_gap_is_explained_by_the_measured_peak():
    records = [_rec(l, "full", None, 1.0, 1) for l in (256, 512, 1024, 2048)]
    for rec in records:
        rec["metrics"]["saved_for_backward_mib"] = rec["params"]["seq_len"] / 100
        rec["metrics"]["rss_delta_mib"] = rec["params"]["seq_len"] ** 2 / 1e4  # the peak follows Table 3
    exps = r.exponent_table([r.study_view(r.ok_frame(records), "speed", {}, "cpu")]).set_index("metric")
    row = exps.loc["saved_for_backward_mib"]
    assert row["fit_range"] == "512-2048" and row["n"] == 3 and row["predicted_slope"] == pytest.approx(2.0)
    assert row["flag"] == "GAP" and "leaves out the transient" in row["explanation"]
    assert "grows with slope 2.00, as Table 3's" in row["explanation"] and "unexplained" not in row["explanation"]
    flat = [dict(rec, metrics={**rec["metrics"], "rss_delta_mib": 5.0}) for rec in records]
    exps = r.exponent_table([r.study_view(r.ok_frame(flat), "speed", {}, "cpu")]).set_index("metric")
    assert exps.loc["saved_for_backward_mib", "explanation"].startswith("unexplained")


def test_peak_growing_faster_than_linear_in_rounds_is_put_down_to_the_measured_transient():
    records = [_rec(2048, "lsh", h, 1.0, 1) for h in (1, 2, 4, 8, 16)]
    for rec in records:
        h = rec["params"]["n_hashes"]
        rec["params"]["dup_correction"] = True
        rec["metrics"].update(rss_delta_mib=10.0 * h**1.7, saved_for_backward_mib=1.0 + 2.0 * h)
    view = r.study_view(r.ok_frame(records), "speed", {"grid": {"n_hashes": [1, 2, 4, 8, 16]}}, "cpu")
    exps = r.exponent_table([view]).set_index("metric")
    text = exps.loc["rss_delta_mib", "explanation"]
    assert exps.loc["rss_delta_mib", "flag"] == "GAP" and "the transient makes the gap" in text
    assert "unexplained" not in text
    saved = exps.loc["saved_for_backward_mib"]
    assert saved["fit_range"] == "4-16" and saved["flag"] == "" and saved["offset_fit_p"] == pytest.approx(1.0, abs=0.02)
