"""The quality report, regenerated from a run's run.json and records.jsonl alone: bits per byte per
model and evaluation setting over seeds, a verdict per study computed from those numbers (never
written by hand), learning curves, Pareto plots of quality against step time and memory, and the
LSH approximation study. This module writes markdown and calls the others in order: frames
(report_frames), verdicts (verdicts) and figures (report_figures)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from bench import store
from bench.environment import portable_path
from bench.load import OTHER_CPU_LIMIT, STEAL_LIMIT
from bench.quality.report_figures import BPB, model_colours, plot_approximation, plot_learning_curves, plot_pareto
from bench.quality import baselines as count_models
from bench.quality.report_frames import (
    AS_TRAINED, AXES, Spread, approx_frame, bpb_by_seed, coinciding, count_frame, curve_frame, curve_gap, eval_frame,
    final_table, load_summary, memory_column, model_configs, models_frame, spec_controls, study_x, train_frame,
    windows_by_seed,
)
from bench.quality.verdicts import (
    COINCIDE_BPB, CONFIDENCE, LEARNED_MARGIN_BPB, MIN_REAL_BPB, RULE, SAME_FUNCTION, BaselineScore, Coincidence,
    Comparison, Gate, Interval, Margin, PartVerdict, coincidence, learned_gate, paired, same_function_pairs,
    study_verdict, why_context, why_not,
)
from bench.report.findings import slug  # a file name from user text: one plain component
from bench.report.frames import status_frame
from bench.report.labels import plain

SPREAD_NOTE = ("Spread over training seeds: **min–max** is the lowest and highest seed's value, **std** the "
               "sample standard deviation (n - 1; blank for one seed).")
LOADED = "†"

_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.~-]+/)+([\w.~-]*)")


def scrub(text: Any) -> str:
    """Free text (an error reason) without this machine's folders: '/a/b/file.py' -> '…/file.py'."""
    return _ABS_PATH.sub(lambda m: f"…/{m.group(1)}", "" if text is None else str(text))


def md(df: pd.DataFrame) -> str:
    """A markdown table of cells already formatted as text (no re-parsing of numbers)."""
    return df.to_markdown(index=False, disable_numparse=True) if not df.empty else "_none_"


def _num(v: Any, fmt: str = ".4g") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _s(s: Spread) -> str:
    return f"{s.mean:.4f} ({s.lo:.4f}–{s.hi:.4f}, n={s.n})"


def readable_final(table: pd.DataFrame) -> pd.DataFrame:
    """The final table with headings in words and units; spreads as min–max; a step time measured
    with any seed's training under load marked †."""
    roles = table["role"] if "role" in table.columns else pd.Series(["model"] * len(table), index=table.index)
    counted = roles == "count model"
    out = pd.DataFrame({
        "model": [m if r == "model" else f"{m} ({r}, baseline)" for m, r in zip(table["model"], roles)],
        "evaluated as": table["setting"],
        "seeds": ["–" if c else _num(n, ".0f") for n, c in zip(table["n_seeds"], counted)],
        f"mean {BPB}": table["bpb_mean"].map(lambda v: f"{v:.4f}"),
        "bpb min–max": ["–" if c else f"{a:.4f}–{b:.4f}" for a, b, c in zip(table["bpb_min"], table["bpb_max"], counted)],
        "bpb std": table["bpb_std"].map(lambda v: _num(v, ".4f")),
        "step (ms)": [_num(v) + (LOADED if loaded and _num(v) else "")
                      for v, loaded in zip(table["step_ms"], table["under_load"])],
        "activation memory (MiB)": table["saved_for_backward_mib"].map(_num),
        "parameters": table["n_params"].map(lambda v: _num(v, ",.0f")),
    })
    if table["peak_alloc_mib"].notna().any():
        out.insert(8, "peak allocated GPU memory (MiB)", table["peak_alloc_mib"].map(_num))
    return out


def load_note(trains: pd.DataFrame) -> str:
    """How many trainings other processes disturbed, and by how much at most."""
    loaded, known, worst = load_summary(trains)
    if not known:
        return "The records do not say whether other processes were busy during training."
    worst_text = f"; the largest share of the CPU other processes took during one training was {worst:.0%}" \
        if worst is not None else ""
    mark = (f" {LOADED} marks a step time with at least one seed's training under load: it may be inflated, "
            f"and the Pareto plot draws that model hollow.") if loaded else ""
    return (f"**Load:** {loaded} of {known} trainings were measured under load (other processes took >= "
            f"{OTHER_CPU_LIMIT:.0%} of the CPU, or the hypervisor stole >= {STEAL_LIMIT:.0%}){worst_text}.{mark} "
            "Load changes step times only; bpb does not depend on it.")


def setup_markdown(meta: Mapping[str, Any], run_dir: Path) -> str:
    """Title, the settings the run used (data, model, training, evaluation) and its environment."""
    spec, env = meta.get("suite_spec") or {}, meta.get("environment") or {}
    data = spec.get("data") or {}
    kv = lambda d, prefix: [(f"{prefix}{k}", json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in d.items()]
    rows = [("suite", meta.get("suite")), ("profile", meta.get("profile")), ("device", meta.get("device")),
            ("seeds", ", ".join(map(str, spec.get("seeds") or ()))), ("seq_len (bytes)", spec.get("seq_len")),
            *kv(data, "data."), *kv(spec.get("model") or {}, "model."), *kv(spec.get("train") or {}, "train."),
            *kv(spec.get("eval") or {}, "eval.")]
    dirty = " (dirty)" if env.get("git_dirty") else ""
    envs = [("device name", env.get("device_name")), ("torch", env.get("torch")), ("python", env.get("python")),
            ("CPU", f"{env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads)"),
            ("CUDA / driver", f"{env.get('cuda')} / {env.get('driver')}"),
            ("git commit", f"{env.get('git_commit')}{dirty}"), ("date", env.get("date") or meta.get("created_at"))]
    where = portable_path(run_dir)
    if where == Path(run_dir).resolve().name:  # outside the repository: name its usual place instead
        where = f"results/runs/{meta.get('suite')}/{meta.get('run_id') or where}"
    return "\n".join([
        f"# Quality report: suite `{meta.get('suite')}`, run `{meta.get('run_id') or Path(run_dir).name}`", "",
        f"Profile `{meta.get('profile')}` as the suite file describes it: "
        f"{str(spec.get('description') or '').strip()} (The setup table below is what this run used.)", "",
        "Byte-level language models trained on real text and scored in bits per byte (bpb) on held-out bytes "
        "of the same corpus. The stdlib corpus is the running Python's standard-library source, so it (and its "
        "sha256) depends on the Python version.", "",
        "## Setup (as run)", "", md(pd.DataFrame(rows, columns=["setting", "value"])), "",
        "## Environment", "", md(pd.DataFrame(envs, columns=["", "value"])), "",
        "Rebuild this report: `python -m bench report " + where + "`", ""])


def models_markdown(trains: pd.DataFrame, spec: Mapping[str, Any], models: Sequence[str]) -> list[str]:
    """What each model is, in the paper's field names, as its training record says."""
    frame = models_frame(trains, spec, models)
    for col in AXES:
        frame[col] = frame[col].map(lambda v: "–" if plain(v) is None else str(plain(v)))
    return ["## Models", "", "Each model's fields as trained (– where a field does not apply). `residual`: "
            "`two_stream` is the reversible block's function (y1 = x1 + Attn(x2), y2 = x2 + FF(y1)), whether "
            "activations are recomputed (`reversible` True) or stored (False); `standard` is the ordinary "
            "pre-norm Transformer, x + Attn(x) then + FF(x).", "", md(frame), ""]


def _ci(ci: Interval, sign: float = 1.0) -> str:
    """An interval as text ('+a to +b'), optionally of the negated difference."""
    lo, hi = sorted((sign * ci.lo, sign * ci.hi))
    return f"{lo:+.4f} to {hi:+.4f}"


def _call(c: Comparison) -> str:
    """Why the rule called this difference what it did, in words."""
    d = c.d
    if len(d.diffs) == 1 and c.ci is None:
        return f"one seed, no spread known: threshold {MIN_REAL_BPB} alone"
    if not (all(x < 0 for x in d.diffs) or all(x > 0 for x in d.diffs)):
        return "seeds disagree in sign"
    if abs(d.mean) < MIN_REAL_BPB - 1e-12:
        return f"every seed agrees but |mean d| < {MIN_REAL_BPB}"
    if c.ci is not None and not c.ci.excludes_zero:
        return f"every seed agrees and |mean d| >= {MIN_REAL_BPB}, but the {CONFIDENCE:.0%} interval includes 0"
    return f"every seed agrees and |mean d| >= {MIN_REAL_BPB}"


def _interval_text(c: Comparison) -> str:
    if c.ci is None:
        return ""
    return (f" {CONFIDENCE:.0%} interval of mean d: {_ci(c.ci)} bpb over {c.ci.over}"
            f"{'' if c.ci.excludes_zero else ', includes 0'}.")


def margin_text(m: Margin, what: str) -> str:
    ci = f", {CONFIDENCE:.0%} interval {_ci(m.ci, -1.0)}" if m.ci is not None else ""
    return f"{m.below:+.4f} bpb below {what} `{m.baseline.name}` ({m.baseline.bpb:.4f}{ci})"


def gate_text(gate: Gate | None) -> str:
    """The reference model's margins below the baselines, and whether the study may be judged."""
    if gate is None:
        return ""
    if gate.reference_bpb is None:
        return f"**Learned?** The reference `{gate.reference}` has no evaluation: nothing can be judged."
    margins = "; ".join(margin_text(m, what) for m, what in ((gate.control, "the no-attention control"),
                                                              (gate.count, "the best count model")) if m is not None)
    if gate.learned is None:
        known = f": {margins}" if margins else ""
        return (f"**Learned?** Reference `{gate.reference}` {gate.reference_bpb:.4f} bpb{known}. Not known: "
                f"{'; '.join(gate.missing)}, so no verdict is drawn (needed: >= {gate.margin} bpb below the "
                f"no-attention control and the best count model).")
    word = ("yes: its differences are read as a verdict" if gate.learned
            else "no: the models are at n-gram level, so no verdict is drawn")
    return (f"**Learned?** Reference `{gate.reference}` {gate.reference_bpb:.4f} bpb: {margins} (needed: >= "
            f"{gate.margin} bpb below each) → {word}.")


GAP_STEADY_BPB = 0.005  # a change of the curve gap smaller than this over the second half reads "steady"


def gap_text(curves: pd.DataFrame | None, a: str, b: str) -> str | None:
    """How the held-out gap between two models moved over training, from this run's curves: up to
    four validation steps and whether it narrowed, widened or held over the second half."""
    gap = curve_gap(curves, a, b) if curves is not None and len(curves) else pd.Series(dtype=float)
    if len(gap) < 2:
        return None
    steps = list(gap.index)
    shown = sorted({steps[round(i * (len(steps) - 1) / 3)] for i in range(4)})
    mid_step = steps[(len(steps) - 1) // 2]
    mid, last = gap.loc[mid_step], gap.iloc[-1]
    trend = ("narrowing" if abs(last) < abs(mid) - GAP_STEADY_BPB else
             "widening" if abs(last) > abs(mid) + GAP_STEADY_BPB else "steady")
    return (f"held-out gap {a} minus {b} on the learning curves (mean over seeds): "
            + ", ".join(f"{gap.loc[s]:+.3f} at step {s}" for s in shown)
            + f"; {trend} over the second half of training ({mid:+.3f} at step {mid_step}).")


def verdict_markdown(verdict: str, parts: Sequence[PartVerdict], context: Mapping[str, Any],
                     gate: Gate | None = None, curves: pd.DataFrame | None = None) -> list[str]:
    """The study's verdict, its reference's margins below the baselines, each part's comparisons with
    their numbers and intervals, and, where a part does not reproduce (or stays within noise), the
    templated reasons it may not at this scale."""
    lines = [f"**Verdict: {verdict}.**", ""]
    if gate is not None:
        lines += [gate_text(gate), ""]
    if verdict == "no rule":
        return lines + ["_No claim rule is defined for this study; its numbers are in the table above._", ""]
    judged = gate is None or gate.verdict is None
    for p in parts:
        lines += [f"- *{p.part.text}*: **{p.verdict}**" + ("" if judged else " (as the rule would call it; "
                                                                              "not a verdict here)")]
        for c in p.comparisons:
            per_seed = ", ".join(f"{x:+.4f}" for x in c.d.diffs)
            lines.append(f"  - {c.name} minus {c.versus}, per seed ({', '.join(map(str, c.d.seeds))}): {per_seed}; "
                         f"mean d {c.diff:+.4f} bpb ({_call(c)}) → {c.outcome}. Unpaired: {_s(c.a)} vs {_s(c.b)}."
                         f"{_interval_text(c)}")
        failed = judged and p.verdict in ("does not reproduce", "within noise")
        for c in p.comparisons if failed else ():
            if (text := gap_text(curves, c.name, c.versus)) is not None:
                lines.append(f"  - _Over training ({c.name}):_ {text}")
        reasons = why_not(p.part, context) if failed else []
        if reasons:
            lines.append("  - _Why it may not at this scale:_ " + " ".join(reasons))
    return lines + [""]


def coincidence_markdown(c: Coincidence, field: str) -> list[str]:
    """The same-function check: how far apart the two curves and final bpb are, and what it saved."""
    g = lambda v: "not measured" if v is None else f"{v:.2g} bpb"
    memory = ""
    if c.memory_a is not None and c.memory_b is not None:
        ratio = f", {c.memory_a / c.memory_b:.2f}x" if c.memory_b else ""
        memory = (f" Activation memory: `{c.a}` {c.memory_a:.4g} MiB, `{c.b}` {c.memory_b:.4g} MiB "
                  f"(difference {c.memory_a - c.memory_b:+.4g} MiB{ratio}): what recomputation buys.")
    return [f"**Same function check:** `{c.a}` and `{c.b}` differ only in `{field}`, so they must compute the "
            f"same function (recomputing activations in the backward pass only saves memory). Largest |difference| "
            f"at the same seed and step: held-out curve {g(c.valid_max)} over {c.n_points} points, training loss "
            f"{g(c.train_max)}, final bpb {g(c.final_max)} → **{c.verdict}** (tolerance for float rounding "
            f"{COINCIDE_BPB:g} bpb).{memory}", ""]


def curves_caption(name: str, study: Mapping[str, Any], spec: Mapping[str, Any], device: Any) -> str:
    """What a learning-curve figure shows and everything held fixed."""
    ev, train = spec.get("eval") or {}, spec.get("train") or {}
    fixed = ", ".join(f"{k} {v}" for k, v in (spec.get("model") or {}).items() if k != study.get("x"))
    seeds = (spec.get("study_seeds") or {}).get(name) or spec.get("seeds") or ()
    return (f"{name} ({study.get('paper')}): lines are the mean over {len(seeds) or '?'} training "
            f"seeds, bands the min–max over seeds; held-out bpb on {ev.get('curve_windows')} valid windows every "
            f"{ev.get('validate_every')} steps; training loss is the mean over each log interval, in nats / ln 2. "
            f"Right: against cumulative training seconds (mean over seeds). Held fixed unless the model's name says "
            f"otherwise: seq_len {spec.get('seq_len')}, {fixed}; batch {train.get('batch_size')}, "
            f"lr {train.get('lr')}; "
            f"{device}.")


@dataclass(frozen=True)
class Evidence:
    """What the verdicts are computed from: bpb per (model, setting) and seed, per-window bpb where the
    records keep it, and the baselines (the no-attention controls' names, the count models' scores)."""

    by_seed: Mapping
    windows: Mapping = field(default_factory=dict)
    controls: Sequence[str] = ()
    counts: Sequence[BaselineScore] = ()

    def gate(self, study: Mapping[str, Any]) -> Gate:
        models = list(study.get("models") or ())
        return learned_gate(study.get("baseline") or models[-1], self.by_seed, self.windows, self.controls,
                            self.counts)

    def verdict(self, name: str, study: Mapping[str, Any], x_of: Mapping[str, Any],
                spec: Mapping[str, Any]) -> tuple[str, list[PartVerdict], Gate]:
        gate = self.gate(study)
        verdict, parts = study_verdict(name, study, x_of, self.by_seed, spec.get("eval_settings") or {},
                                       self.windows, gate)
        return verdict, parts, gate


def count_scores(counts: pd.DataFrame) -> list[BaselineScore]:
    return [BaselineScore(r.model, float(r.bpb), "count", r.window_bpb if isinstance(r.window_bpb, list) else None)
            for r in counts.itertuples()]


def evidence_of(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> Evidence:
    """What a run's verdicts are computed from, read from its records."""
    evals = eval_frame(records)
    return Evidence(bpb_by_seed(evals), windows_by_seed(evals), spec_controls(spec), count_scores(count_frame(records)))


def study_verdicts(spec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each study's verdict exactly as report.md states it (baselines gate and intervals included), for
    other views of the same run (the W&B report)."""
    trains, evidence = train_frame(records), evidence_of(spec, records)
    return {name: evidence.verdict(name, study, study_x(trains, list(study.get("models") or ()), study.get("x")),
                                   spec)[0] for name, study in (spec.get("studies") or {}).items()}


def study_section(name: str, study: Mapping[str, Any], meta: Mapping[str, Any], table: pd.DataFrame,
                  trains: pd.DataFrame, curves: pd.DataFrame, evidence: Evidence, plots: Path
                  ) -> tuple[str, list[Coincidence], list[str], Gate]:
    """One study: (its verdict, its same-function checks, its markdown: hypothesis, table, learning
    curves, verdict evidence, its reference's margins below the baselines)."""
    spec = meta.get("suite_spec") or {}
    by_seed = evidence.by_seed
    models, x = list(study.get("models") or ()), study.get("x")
    x_of = study_x(trains, models, x)
    verdict, parts, gate = evidence.verdict(name, study, x_of, spec)
    baseline = study.get("baseline") or models[-1]
    sub = table[table["model"].isin(models) & table["setting"].isin((AS_TRAINED, *(study.get("eval") or ())))]
    base = by_seed.get((baseline, AS_TRAINED), {})
    ds = [None if (m, s) == (baseline, AS_TRAINED) else paired(by_seed.get((m, s), {}), base)
          for m, s in zip(sub["model"], sub["setting"])]
    view = readable_final(sub)
    view.insert(6, f"paired d to {baseline}: mean (bpb)", ["" if d is None else f"{d.mean:+.4f}" for d in ds])
    view.insert(7, "d min–max over seeds", ["" if d is None or len(d.diffs) < 2 else f"{d.lo:+.4f} to {d.hi:+.4f}"
                                            for d in ds])
    if x:
        view.insert(1, x, ["–" if x_of.get(m) is None else _num(x_of[m]) for m in sub["model"]])
    lines = [f"## Study `{name}` ({study.get('paper')})", "",
             f"**Hypothesis:** {study.get('hypothesis')}. Baseline: `{baseline}`.", "", md(view), ""]
    if not curves[curves["model"].isin(models)].empty:
        caption = curves_caption(name, study, spec, meta.get("device")) + "".join(
            f" {' and '.join(g)} have identical held-out curves (drawn on top of each other)."
            for g in coinciding(curves, models))
        names = {m: f"{m} ({x} {x_of[m]})" for m in models if x_of.get(m) is not None}
        png = plot_learning_curves(curves, models, model_colours(models, x_of), f"Learning curves: {name}", caption,
                                   plots / f"curves_{slug(name)}.png", names)
        lines += [f"![learning curves, {name}](plots/{png.name})", "", f"_{caption}_", ""]
    lines += verdict_markdown(verdict, parts, why_context(spec), gate, curves)
    checks = []
    if (same := SAME_FUNCTION.get(name)) is not None:
        for a, b in same_function_pairs(models, model_configs(spec), same):
            checks.append(coincidence(a, b, curves, by_seed, trains))
            lines += coincidence_markdown(checks[-1], same)
    return verdict, checks, lines, gate


def findings(spec: Mapping[str, Any], table: pd.DataFrame, trains: pd.DataFrame, evidence: Evidence) -> list[str]:
    """The findings that open the report, from its numbers: the lowest and highest held-out bpb as
    trained, the baselines, and each study's verdict with its first comparison (means, paired
    difference and its interval) and its reference's margins below the baselines."""
    out = []
    trained = table[(table["setting"] == AS_TRAINED) & table["bpb_mean"].notna()] if not table.empty else table
    if "role" in trained.columns:
        trained = trained[trained["role"] == "model"]
    if not trained.empty:
        best, worst = trained.loc[trained["bpb_mean"].idxmin()], trained.loc[trained["bpb_mean"].idxmax()]
        out.append(f"- Lowest held-out bits per byte as trained: `{best['model']}` {best['bpb_mean']:.3f} "
                   f"({int(best['n_seeds'])} seeds); highest: `{worst['model']}` {worst['bpb_mean']:.3f} "
                   f"([final table](#final-table)).")
    out.append(baselines_finding(evidence))
    for name, study in (spec.get("studies") or {}).items():
        models = list(study.get("models") or ())
        x_of = study_x(trains, models, study.get("x"))
        verdict, parts, gate = evidence.verdict(name, study, x_of, spec)
        first = next((c for p in parts for c in p.comparisons), None)
        detail = (f": `{first.name}` {first.a.mean:.3f} vs `{first.versus}` {first.b.mean:.3f} bpb, paired "
                  f"difference {first.diff:+.4f} over {len(first.d.diffs)} seed(s)"
                  + (f" ({CONFIDENCE:.0%} interval {_ci(first.ci)})" if first.ci is not None else "")
                  if first is not None else "")
        anchor = re.sub(r"[^a-z0-9_ -]", "", f"study {name} {study.get('paper') or ''}".lower()).strip().replace(" ", "-")
        out.append(f"- `{name}` ({study.get('paper')}): **{verdict}**{detail}{_gate_brief(gate)} ([study](#{anchor})).")
    return out


def _gate_brief(gate: Gate) -> str:
    """The reference's margins below the baselines, in a few words."""
    if gate.reference_bpb is None:
        return ""
    parts = [f"{m.below:+.3f} below `{m.baseline.name}`" for m in (gate.control, gate.count) if m is not None]
    return f"; reference `{gate.reference}` {', '.join(parts)}" if parts else ""


def baselines_finding(evidence: Evidence) -> str:
    controls = [(c, evidence.by_seed.get((c, AS_TRAINED))) for c in evidence.controls]
    controls = [(c, sum(v.values()) / len(v)) for c, v in controls if v]
    words = [f"count models {', '.join(f'`{b.name}` {b.bpb:.3f}' for b in evidence.counts)}"] if evidence.counts else []
    words += [f"no-attention control `{c}` {v:.3f}" for c, v in controls]
    if not words:
        return ("- **No baselines in these records** (count models, no-attention control): the run predates them, "
                "so no study can show its models learned past n-gram statistics and every verdict is inconclusive "
                "([baselines](#baselines)).")
    return f"- Baselines (bpb on the same held-out windows): {'; '.join(words)} ([baselines](#baselines))."


def baselines_markdown(evidence: Evidence, gates: Mapping[str, Gate], spec: Mapping[str, Any]) -> list[str]:
    """The count models (their rule and scores), the no-attention control, and each study's
    reference margins below them: what decides whether a study's verdict is drawn."""
    lines = ["## Baselines", ""]
    if not evidence.counts and not any(evidence.by_seed.get((c, AS_TRAINED)) for c in evidence.controls):
        return lines + [
            "_Baselines are missing: these records hold neither count-model scores nor a no-attention control "
            "(the run predates them). Without them no study can show its models learned past n-gram "
            "statistics, so every verdict below is inconclusive; rerun the suite to get them._", ""]
    lines += [count_models.RULE, ""]
    if not evidence.counts:
        lines += ["_No count-model scores in these records._", ""]
    controls = [c for c in evidence.controls if evidence.by_seed.get((c, AS_TRAINED))]
    lines += ["The no-attention control" + (f" (`{'`, `'.join(controls)}`)" if controls else "") + " is the same "
              "network with its attention branch replaced by zeros, trained with the same budget: each byte sees "
              "only itself and its position, so it is about a bigram model. "
              + ("" if controls else "_This run has no evaluated no-attention control._"), ""]
    rows = []
    for name, gate in gates.items():
        def cell(m: Margin | None) -> str:
            return "–" if m is None else (f"{m.below:+.4f} ({_ci(m.ci, -1.0)})" if m.ci is not None else f"{m.below:+.4f}")
        rows.append({"study": name, "reference": gate.reference,
                     f"reference {BPB}": "–" if gate.reference_bpb is None else f"{gate.reference_bpb:.4f}",
                     "below the no-attention control (95% interval)": cell(gate.control),
                     "below the best count model (95% interval)": cell(gate.count),
                     "best count model": "–" if gate.count is None else gate.count.baseline.name,
                     f"learned (>= {LEARNED_MARGIN_BPB} below each)": {True: "yes", False: "no", None: "unknown"}[
                         gate.learned]})
    if rows:
        lines += ["Each study's reference model against the baselines (mean over its seeds; intervals of the paired "
                  "difference over seeds and windows):", "", md(pd.DataFrame(rows)), ""]
    return lines


def seed_spread_note(table: pd.DataFrame) -> list[str]:
    """The run's largest seed spread (max - min) of final bpb as trained, beside the margin it is weighed against."""
    trained = table[(table.setting == AS_TRAINED) & (table.n_seeds >= 2)]
    if trained.empty:
        return []
    spread = trained.bpb_max - trained.bpb_min
    worst = trained.loc[spread.idxmax()]
    return [f"Seed spread in this run: the largest max - min of a model's final bpb over its seeds is "
            f"{spread.max():.3f} (`{worst.model}`, {int(worst.n_seeds)} seeds), the median {spread.median():.3f}, "
            f"against the {LEARNED_MARGIN_BPB} bpb learned margin.", ""]


def write_report(run_dir: Path) -> Path:
    """Write report.md, plots/*.png and tables/*.csv into `run_dir` from its run.json and records."""
    run_dir = Path(run_dir)
    meta = store.load_run_json(run_dir)
    spec = meta.get("suite_spec") or {}
    records = store.read_records(run_dir / store.RECORDS)
    trains, evals, curves = train_frame(records), eval_frame(records), curve_frame(records)
    plots, tables = run_dir / "plots", run_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png") if plots.exists() else ():
        old.unlink()
    seen = set(trains["model"]) | set(evals["model"])
    controls = spec_controls(spec)
    models = [m for m in spec.get("models") or {} if m in seen] + sorted(seen - set(spec.get("models") or {}))
    models = [m for m in models if m not in controls] + [m for m in models if m in controls]
    counts = count_frame(records)
    table = final_table(evals, trains, models, list(spec.get("eval_settings") or {}), controls, counts)
    table.to_csv(tables / "final_table.csv", index=False)
    evidence = Evidence(bpb_by_seed(evals), windows_by_seed(evals), controls, count_scores(counts))
    setup = setup_markdown(meta, run_dir)
    title, _, rest = setup.partition("## Setup (as run)")
    found = findings(spec, table, trains, evidence) or ["_No evaluated model yet._"]
    setup = "\n".join([title.rstrip(), "", "## Findings", "", "_Computed from this run's records._", "", *found, "",
                       "## Setup (as run)" + rest])
    out_md = [setup, *models_markdown(trains, spec, models), "## Final table", "",
              SPREAD_NOTE + " Step time and memory describe training the model and sit on its as-trained row "
              "(means over seeds of each seed's median step); activation memory is what autograd keeps for one "
              "training forward (the same on every device). Rows marked *baseline* are the no-attention control "
              "and the count models ([baselines](#baselines)).", "", load_note(trains), "",
              md(readable_final(table)), "", "CSV: `tables/final_table.csv`.", ""]
    verdicts, checks, studies_md, gates = [], [], [], {}
    for name, study in (spec.get("studies") or {}).items():
        verdict, study_checks, lines, gate = study_section(name, study, meta, table, trains, curves, evidence, plots)
        gates[name] = gate
        verdicts.append({"study": name, "paper": study.get("paper"), "hypothesis": study.get("hypothesis"),
                         "verdict": verdict})
        checks += [(name, c) for c in study_checks]
        studies_md += lines
    margins = [{"reference": g.reference, "reference_bpb": g.reference_bpb,
                "below_control": None if g.control is None else g.control.below,
                "below_best_count": None if g.count is None else g.count.below,
                "best_count": None if g.count is None else g.count.baseline.name,
                "learned": g.learned} for g in gates.values()]
    pd.DataFrame([{**v, **m} for v, m in zip(verdicts, margins)],
                 columns=["study", "paper", "hypothesis", "verdict", "reference", "reference_bpb", "below_control",
                          "below_best_count", "best_count", "learned"]).to_csv(tables / "verdicts.csv", index=False)
    out_md += baselines_markdown(evidence, gates, spec)
    out_md += ["## Verdicts", "", RULE, "", *seed_spread_note(table),
               md(pd.DataFrame(verdicts, columns=["study", "paper", "hypothesis", "verdict"])), ""]
    out_md += [f"Same function check ({name}): `{c.a}` and `{c.b}` **{c.verdict}** (details in the study)."
               for name, c in checks] + ([""] if checks else [])
    out_md += [*studies_md, *pareto_markdown(table, trains, meta, plots)]
    out_md += approx_markdown(approx_frame(records), spec, plots, tables)
    out_md += not_ok_markdown(records, meta)
    out = run_dir / "report.md"
    out.write_text("\n".join(out_md) + "\n")
    return out


PLOT_BASELINES_WITHIN = 1.5  # bpb above the worst model: baselines higher than that are named, not drawn


def pareto_markdown(table: pd.DataFrame, trains: pd.DataFrame, meta: Mapping[str, Any], plots: Path) -> list[str]:
    role = table["role"] if "role" in table.columns else pd.Series(["model"] * len(table), index=table.index)
    rows = table[(table["setting"] == AS_TRAINED) & table["step_ms"].notna() & (role == "model")]
    if rows.empty:
        return ["## Quality against cost", "", "_No model has both an evaluation and a training record._", ""]
    mem = memory_column(trains)
    refs = table[(role != "model") & ((table["setting"] == AS_TRAINED) | (role == "count model"))]
    ceiling = float(rows["bpb_mean"].max()) + PLOT_BASELINES_WITHIN
    drawn = [(f"{r.model} ({r.role})", float(r.bpb_mean), r.role) for r in refs.itertuples() if r.bpb_mean <= ceiling]
    off = [f"`{r.model}` {r.bpb_mean:.3f}" for r in refs.itertuples() if r.bpb_mean > ceiling]
    hollow = (" Hollow markers (left): at least one seed's training of that model ran under load, so its step time "
              "may be inflated." if rows["under_load"].astype(bool).any() else "")
    lines_note = (" Horizontal lines: the baselines' bpb on the same held-out windows (dash-dot: the no-attention "
                  "control, dotted: count models), not part of the front" + (f"; beyond the plot: {', '.join(off)}"
                                                                              if off else "") + "."
                  if drawn or off else " This run has no baselines to draw.")
    caption = ("Each point is one model as trained: mean held-out bpb over seeds (vertical bars: min–max over "
               "seeds) "
               f"against the mean of each seed's median training-step time (left) and "
               f"{'the CUDA allocator peak' if mem == 'peak_alloc_mib' else 'activation memory saved for backward'} "
               f"(right; horizontal bars: min–max over seeds). Dashed: the Pareto front, models no other model beats "
               f"on both axes (ringed).{hollow}{lines_note} Measured on {meta.get('device')} "
               f"({(meta.get('environment') or {}).get('device_name')}).")
    png = plot_pareto(rows, trains, caption, plots / "pareto.png", drawn)
    return ["## Quality against cost (Pareto)", "", f"![Pareto plots](plots/{png.name})", "", f"_{caption}_", ""]


def approx_markdown(approx: pd.DataFrame, spec: Mapping[str, Any], plots: Path, tables: Path) -> list[str]:
    a = spec.get("lsh_approximation") or {}
    head = ["## LSH approximation of full attention", ""]
    if approx.empty:
        return head + ["_No approximation records._", ""]
    g = approx.groupby(["chunk_len", "n_hashes"])
    summary = pd.DataFrame({"n": g.size(), "n_buckets": g["n_buckets"].first(),
                            **{f"{m}_{f}": g[m].agg(f) for m in ("mass_recall", "relative_error")
                               for f in ("mean", "min", "max", "std")}}).reset_index()
    summary.to_csv(tables / "approximation.csv", index=False)
    view = pd.DataFrame({"chunk_len": summary["chunk_len"], "hash rounds": summary["n_hashes"],
                         "buckets": summary["n_buckets"], "n (rotation × training seeds)": summary["n"],
                         **{f"{m.replace('_', ' ')} mean ± std (min–max)": [
                             f"{r[f'{m}_mean']:.3f} ± {_num(r[f'{m}_std'], '.3f')} "
                             f"({r[f'{m}_min']:.3f}–{r[f'{m}_max']:.3f})"
                             for _, r in summary.iterrows()] for m in ("mass_recall", "relative_error")}})
    caption = (f"Full attention's trained `{a.get('model')}` model, block {a.get('layer')}, on {a.get('windows')} "
               f"held-out windows of {spec.get('seq_len')} bytes per training seed. Mass recall: the share of full "
               "attention's softmax mass on the keys LSH lets each query see; relative error: |LSH output - full "
               "output| / |full output|. Lines: mean over rotation seeds and training seeds; bands: min–max.")
    png = plot_approximation(approx, caption, plots / "lsh_approximation.png")
    return head + [md(view), "", f"![LSH approximation](plots/{png.name})", "", f"_{caption}_", ""]


def not_ok_markdown(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[str]:
    """Points whose latest record is not ok, and planned points with no record at all."""
    latest = store.latest_by_point(records)
    failed = status_frame(latest.values()).drop(columns=["config"])
    failed["reason"] = failed["reason"].map(scrub)
    missing = [p for p in meta.get("planned") or () if p not in latest]
    lines = ["## Points not ok", "", md(failed) if not failed.empty else "_All recorded points are ok._", ""]
    if missing:
        lines += [f"Planned but not recorded ({len(missing)}): " + ", ".join(f"`{p}`" for p in missing), ""]
    return lines
