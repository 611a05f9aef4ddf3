"""The findings that open a report: sentences with numbers computed from the records, each pointing
at the table or plot it comes from. Pure: views, the exponent and crossover tables in, text out."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from bench.report.crossover import WORDS
from bench.report.derived import peak_gflops, stage_columns, stage_name
from bench.report.explain import GAP_LIMIT, per_step_growth, slope
from bench.report.frames import StudyView, main_memory_metrics, series_label, series_words
from bench.report.labels import plain, short, value_label

TIME = "step_ms_median"


@dataclass(frozen=True)
class Finding:
    """One sentence and where its numbers are shown (markdown link targets)."""

    text: str
    where: tuple[tuple[str, str], ...] = ()  # (link text, target)

    def markdown(self) -> str:
        links = ", ".join(f"[{t}]({u})" for t, u in self.where)
        return f"- {self.text}" + (f" ({links})" if links else "")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


def anchor(study: str) -> str:
    """GitHub's anchor of the heading '## Study `name`'."""
    return "#study-" + re.sub(r"[^a-z0-9_ -]", "", study.lower()).replace(" ", "-")


def _plot(view: StudyView, metric: str) -> tuple[tuple[str, str], ...]:
    links = [("table", anchor(view.name))]
    if metric in view.metrics:
        links.append(("plot", f"plots/{slug(view.name)}__{slug(metric)}.png"))
    return tuple(links)




def _what(metric: str) -> str:
    return WORDS.get(metric) or short(metric)


def _n(v: Any) -> str:
    v = plain(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.3g}" if isinstance(v, (int, float)) else str(v)


def _who(view: StudyView, row: Mapping[str, Any]) -> str:
    words = series_words(row, list(view.series)) if view.series else ""
    return "" if words == "all points" else words


def exponent_findings(view: StudyView, exps: pd.DataFrame) -> list[Finding]:
    """Per metric: every series' fitted exponent against Table 3's, with a verdict."""
    out = []
    mine = exps[exps["study"] == view.name] if not exps.empty else exps
    words = {series_label(r, view.series): _who(view, r) or "all points" for r in view.frame.to_dict("records")}
    for metric in dict.fromkeys(mine["metric"]) if not mine.empty else ():
        rows = mine[mine["metric"] == metric]
        parts = []
        for r in rows.itertuples():
            if r.predicted_slope is None or pd.isna(r.predicted_slope):
                parts.append(f"{words.get(r.series, r.series)} {r.measured_slope:.2f} (no Table 3 term)")
                continue
            gap = r.measured_slope - r.predicted_slope
            verdict = "agrees" if abs(gap) <= GAP_LIMIT else ("grows faster" if gap > 0 else "grows slower")
            parts.append(f"{words.get(r.series, r.series)} {r.measured_slope:.2f} vs {r.predicted_slope:.2f} "
                         f"({verdict}{_offset_words(r.offset_fit_p, r.predicted_slope) if gap < -GAP_LIMIT else ''})")
        out.append(Finding(f"`{view.name}`, {_what(metric)} against {short(view.x)}: fitted exponent vs Table 3's: "
                           + "; ".join(parts) + ".", (("exponents", "#fitted-growth-exponents-vs-table-3"),
                                                      *_plot(view, metric)[1:])))
    return out


def _offset_words(p: Any, predicted: float) -> str:
    """A slower tail may be a constant term (weights, inputs, rounds-independent buffers) not yet
    faded: the exponent of a + b x^p over every point says whether the growing part matches."""
    if p is None or pd.isna(p):
        return ""
    verdict = "agrees" if abs(p - predicted) <= GAP_LIMIT else "still slower" if p < predicted else "faster"
    return f"; with a constant set apart, a + b·x^p over every point: p = {p:.2f}, {verdict}"


def pair_findings(view: StudyView, cross: pd.DataFrame, memory: str) -> list[Finding]:
    """Each pair's ratio at its largest common length, and its crossover on time and main memory."""
    mine = cross[cross["study"] == view.name] if not cross.empty else cross
    out = []
    for (a, b), rows in mine.groupby(["a", "b"], sort=False) if not mine.empty else ():
        by = {r.metric: r for r in rows.itertuples()}
        heads = [f"{by[m].ratio_last:.2g}x {'its' if i else b + chr(39) + 's'} {_what(m)}"
                 for i, m in enumerate(m for m in (TIME, memory, "saved_for_backward_mib")
                                       if m in by and by[m].x_last == rows["x_last"].max())]
        if heads:
            listed = ", ".join(heads[:-1]) + " and " + heads[-1] if len(heads) > 1 else heads[0]
            out.append(Finding(f"`{view.name}`: at {_n(rows['x_last'].max())} tokens {a} takes {listed}.",
                               (("crossovers", "#crossover-lengths"), ("table", anchor(view.name)))))
        for m in (TIME, memory):
            if m in by:
                out.append(Finding(f"`{view.name}`: {by[m].finding}",
                                   (("crossover plot", f"plots/{slug(view.name)}__crossover.png"),)))
    return out


def _linear_growth(view: StudyView, metric: str) -> dict[Any, tuple[float, pd.DataFrame]]:
    out = {}
    for value, rows in view.frame.groupby("reversible", dropna=False):
        g = per_step_growth(rows[view.x], rows[metric]) if metric in rows else None
        if g is not None:
            out[plain(value)] = (g, rows.sort_values(view.x))
    return out


def layer_findings(view: StudyView, memory: str) -> list[Finding]:
    """What reversible layers save per layer, and what the reversible growth per layer is made of."""
    if view.x != "n_layers" or "reversible" not in view.series:
        return []
    out = []
    for metric in (memory, "saved_for_backward_mib"):
        growth = _linear_growth(view, metric)
        if True not in growth or False not in growth:
            continue
        rev, plain_ = growth[True][0], growth[False][0]
        out.append(Finding(f"`{view.name}`: reversible layers save {plain_ - rev:.1f} MiB of {_what(metric)} per layer "
                           f"({rev:.1f} MiB per added layer against {plain_:.1f} MiB without).", _plot(view, metric)))
        rows = growth[True][1]
        if metric == memory and "state_mib" in rows and rows["state_mib"].notna().all():
            state = per_step_growth(rows[view.x], rows["state_mib"])
            n = per_step_growth(rows[view.x], rows["n_params"])
            if state and n:
                agree = abs(state - rev) / rev if rev else float("inf")
                out.append(Finding(
                    f"`{view.name}`: the reversible growth of {rev:.1f} MiB per layer is the weights + gradients + "
                    f"AdamW moments of one layer: {n:,.0f} parameters x 4 bytes x 4 copies = {state:.1f} MiB "
                    f"({agree:.0%} {'below' if state < rev else 'above'} the measured growth).", _plot(view, metric)))
    return out


def chunk_findings(view: StudyView, memory: str) -> list[Finding]:
    """What feed-forward chunks save at each d_ff: fewest against most chunks, memory and time."""
    if view.x != "ff_chunks":
        return []
    out = []
    groups = view.frame.groupby("d_ff", dropna=False) if "d_ff" in view.frame else [(None, view.frame)]
    for d_ff, rows in groups:
        rows = rows.sort_values(view.x)
        if len(rows) < 2 or memory not in rows:
            continue
        first, last = rows.iloc[0], rows.iloc[-1]
        saved = first[memory] - last[memory]
        text = (f"`{view.name}`: at d_ff = {_n(d_ff)}, {_n(last[view.x])} feed-forward chunks instead of "
                f"{_n(first[view.x])} change {_what(memory)} by {-saved:+.1f} MiB ({-saved / first[memory]:+.0%})")
        if TIME in rows and pd.notna(first[TIME]) and pd.notna(last[TIME]):
            text += f" and time by {last[TIME] / first[TIME] - 1:+.0%}"
        out.append(Finding(text + ".", _plot(view, memory)))
    return out


def range_findings(view: StudyView, memory: str) -> list[Finding]:
    """For other ordered axes: how much each series' time and memory change from the first x to the last."""
    if view.x in ("seq_len", "n_layers", "ff_chunks") or not pd.api.types.is_numeric_dtype(view.frame[view.x]):
        return []
    out = []
    groups = view.frame.groupby(list(view.series), dropna=False, sort=False) if view.series else [((), view.frame)]
    for _, rows in list(groups)[:4]:
        rows = rows.sort_values(view.x)
        if len(rows) < 2:
            continue
        first, last = rows.iloc[0], rows.iloc[-1]
        parts = [f"{_what(m)} x{last[m] / first[m]:.2f}" for m in (TIME, memory) if m in rows and first[m]]
        who = _who(view, first.to_dict())
        out.append(Finding(f"`{view.name}`: from {value_label(view.x, first[view.x])} to "
                           f"{value_label(view.x, last[view.x])}{', ' + who if who else ''}: " + ", ".join(parts) + ".",
                           _plot(view, TIME)))
    return out


SAVED = "saved_for_backward_mib"


def transient_findings(view: StudyView, memory: str) -> list[Finding]:
    """Per series, peak memory over the bytes saved for backward at the first and the last x: how
    much a step holds beyond what autograd keeps (Table 3 counts the saved activations only)."""
    if memory == SAVED or not {memory, SAVED} <= set(view.frame) or not pd.api.types.is_numeric_dtype(view.frame[view.x]):
        return []
    out = []
    groups = view.frame.groupby(list(view.series), dropna=False, sort=False) if view.series else [((), view.frame)]
    for _, rows in list(groups)[:6]:
        rows = rows[(rows[SAVED] > 0) & rows[memory].notna()].sort_values(view.x)
        if rows.empty:
            continue
        ratio = rows[memory] / rows[SAVED]
        first, last = rows.iloc[0], rows.iloc[-1]
        who = _who(view, first.to_dict())
        span = f"{ratio.iloc[0]:.2f}x at {value_label(view.x, first[view.x])}"
        if len(rows) > 1:
            span += f", {ratio.iloc[-1]:.2f}x at {value_label(view.x, last[view.x])}"
        out.append(Finding(f"`{view.name}`{', ' + who if who else ''}: {_what(memory)} over saved-for-backward "
                           f"bytes: {span}.", _plot(view, memory)))
    return out


def rate_finding(view: StudyView, env: Mapping[str, Any]) -> Optional[Finding]:
    """The achieved GFLOP/s range of the study, against the run's measured matmul rate."""
    if "achieved_gflops" not in view.frame or view.frame["achieved_gflops"].isna().all():
        return None
    rates = view.frame.dropna(subset=["achieved_gflops"])
    lo, hi = rates.loc[rates["achieved_gflops"].idxmin()], rates.loc[rates["achieved_gflops"].idxmax()]
    name = lambda r: " ".join(w for w in (_who(view, r.to_dict()), f"at {short(view.x)} {_n(r[view.x])}") if w)  # noqa: E731
    dtype = plain(rates["dtype"].iloc[0]) if "dtype" in rates else "float32"
    peak = peak_gflops(env, dtype)
    of_peak = (f", {lo['pct_of_peak']:.1f}% to {hi['pct_of_peak']:.1f}% of the {peak:.0f} GFLOP/s {dtype} "
               f"matmul rate measured for this run" if peak else
               "; no matmul calibration in run.json, so no share of peak")
    return Finding(f"`{view.name}`: achieved {lo['achieved_gflops']:.3g} GFLOP/s ({name(lo)}) to "
                   f"{hi['achieved_gflops']:.3g} GFLOP/s ({name(hi)}) of analytic fwd + bwd FLOPs{of_peak}.",
                   (("table", anchor(view.name)),))


def stage_finding(view: StudyView) -> Optional[Finding]:
    """Which stage of the profiled step grows fastest along x, and its share at both ends."""
    stages = [c for c in stage_columns(view.frame) if not c.endswith(".other")]
    if not stages or "stage_total_ms" not in view.frame:
        return None
    if not pd.api.types.is_numeric_dtype(view.frame[view.x]):
        return None  # a slope needs a numeric axis (a study plotted against attention kinds has none)
    best = None
    groups = view.frame.groupby(list(view.series), dropna=False, sort=False) if view.series else [((), view.frame)]
    for _, rows in groups:
        rows = rows.sort_values(view.x).dropna(subset=["stage_total_ms"])
        for c in stages:
            s = slope(rows[view.x], rows[c]) if len(rows) >= 2 else None
            last_share = rows[c].iloc[-1] / rows["stage_total_ms"].iloc[-1] if len(rows) else 0.0
            if s is not None and last_share >= 0.01 and (best is None or s > best[0]):
                best = (s, c, rows)
    if best is None:
        return None
    s, c, rows = best
    share = rows[c] / rows["stage_total_ms"]
    who = _who(view, rows.iloc[0].to_dict())
    return Finding(f"`{view.name}`: the stage growing fastest with {short(view.x)} is `{stage_name(c)}` ({who + ', ' if who else ''}slope "
                   f"{s:.2f}): {share.iloc[0]:.0%} of the profiled step at {_n(rows[view.x].iloc[0])}, "
                   f"{share.iloc[-1]:.0%} at {_n(rows[view.x].iloc[-1])}.",
                   (("stage plot", f"plots/{slug(view.name)}__stages.png"),))


def grid_findings(views: Sequence[StudyView], exps: pd.DataFrame, cross: pd.DataFrame,
                  env: Mapping[str, Any], device: str) -> list[Finding]:
    """Every study's findings, in study order."""
    memory = main_memory_metrics(device)[0]
    out: list[Finding] = []
    for view in views:
        out += pair_findings(view, cross, memory)
        out += layer_findings(view, memory)
        out += chunk_findings(view, memory)
        out += range_findings(view, memory)
        out += transient_findings(view, memory)
        out += [f for f in (stage_finding(view), rate_finding(view, env)) if f is not None]
        out += exponent_findings(view, exps)
    return out


def findings_markdown(findings: Sequence[Finding], heading: str = "## Findings") -> str:
    """The findings block: a heading, one line of provenance, one bullet per finding."""
    if not findings:
        return f"{heading}\n\n_No ok points to draw findings from._\n"
    return "\n".join([heading, "", "_Computed from this run's records; each points at its table or plot._", "",
                      *(f.markdown() for f in findings), ""])


__all__ = ["Finding", "findings_markdown", "grid_findings", "series_label"]
