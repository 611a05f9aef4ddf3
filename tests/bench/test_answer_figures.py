"""The crossover plot draws one line per pair and the tie line; the stage plot stacks shares to 100%."""
from __future__ import annotations

import pytest

from bench.report.answer_figures import plot_crossovers, plot_stages
from bench.report.crossover import study_pairs
from bench.report.derived import add_derived
from bench.report.frames import ok_frame, study_view


def _records(stages: bool):
    out = []
    for attention in ("full", "lsh"):
        for n in (256, 512, 1024):
            metrics = {"step_ms_median": (n**2 / 1e3 if attention == "full" else n / 2), "rss_delta_mib": n / 10}
            if stages and attention == "lsh":
                metrics.update({"stage_ms.reformer.hash": n / 100, "stage_ms.reformer.window_attention": n / 10,
                                "stage_ms.other": 1.0, "stage_total_ms": n / 100 + n / 10 + 1.0})
            out.append({"status": "ok", "point_id": f"{attention}{n}", "studies": ["s"], "metrics": metrics,
                        "params": {"workload": "attention", "impl": "ours", "device": "cpu", "dtype": "float32",
                                   "batch_size": 1, "seq_len": n, "d_model": 16, "n_heads": 2,
                                   "attention": attention, "chunk_len": 32 if attention == "lsh" else None},
                        "load": {"under_load": n == 512}})
    return out


def _view(stages: bool):
    return study_view(add_derived(ok_frame(_records(stages)), {}), "s", {"grid": {"attention": [], "seq_len": []}}, "cpu")


def test_crossover_plot_has_a_line_per_pair_and_metric_and_the_tie(tmp_path):
    view = _view(False)
    pairs = study_pairs(view)
    fig = plot_crossovers(view, pairs, tmp_path / "x.png")
    assert fig is not None and fig.path.exists() and "below the black line at 1" in fig.caption
    assert "Hollow markers" in fig.caption  # 512 was measured under load
    assert {p.metric for p in pairs} == {"step_ms_median", "rss_delta_mib"}
    assert plot_crossovers(view, [], tmp_path / "none.png") is None


def test_stage_plot_stacks_shares_and_needs_stages(tmp_path):
    import matplotlib.image

    fig = plot_stages(_view(True), tmp_path / "stages.png")
    assert fig is not None and "shares of that iteration" in fig.caption and "*: measured" in fig.caption
    assert matplotlib.image.imread(fig.path).shape[0] > 100
    assert plot_stages(_view(False), tmp_path / "none.png") is None


def test_stage_shares_are_derived_per_point():
    frame = _view(True).frame
    lsh = frame[frame["attention"] == "lsh"].sort_values("seq_len")
    shares = lsh[[c for c in lsh.columns if c.startswith("stage_share.")]].sum(axis=1)
    assert shares.tolist() == pytest.approx([1.0, 1.0, 1.0])
