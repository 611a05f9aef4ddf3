"""report.md assembled from the frames, figures and exponent table, and write_report, the one entry
point that reads a run dir and writes report.md, tables/*.csv and plots/*.png into it."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.environment import REPO_ROOT, portable_path
from bench.report.answer_figures import plot_crossovers, plot_stages
from bench.report.crossover import crossover_table, study_pairs
from bench.report.derived import add_derived, stage_columns
from bench.report.exponents import GAP_LIMIT, exponent_table
from bench.report.figures import plot_metric
from bench.report.findings import findings_markdown, grid_findings
from bench.report.frames import (
    Run, load_run, load_summary, ok_frame, status_counts, status_frame, study_names, study_table, study_view,
)
from bench.report.labels import has_label, label

MEMORY_NOTE = (
    "**Memory figures.** On GPU the main figure is `peak_alloc_mib`, the torch allocator's peak over "
    "one training iteration (weights, inputs, optimizer state and activations; NVML device and process "
    "figures sit beside it and include the CUDA context and the allocator cache). On CPU it is "
    "`rss_delta_mib`, the process's peak RSS during one iteration minus its RSS before the workload was "
    "built (each point runs in a fresh process). `saved_for_backward_mib` counts the bytes autograd "
    "keeps from one forward for the backward (parameters excluded, each storage once) and is the same "
    "on every device. Where memory was read in several processes, the figure is their median and "
    "`_min`/`_max` give the spread. 1 MiB = 2^20 bytes."
)
EXPONENT_NOTE = (
    "Least-squares slope of log(metric) against log(x) per series, fitted on the largest sizes (the "
    "upper half of the sizes, at least 3; `fit_range`, `n`), next to the slope of the same Table 3 term "
    "(memory or time) over the same points, with c = 2 * chunk_len keys per query. Table 3's terms are "
    "leading terms: at small sizes weights, inputs and other lower-order terms weigh too, which is why "
    "the fit uses the largest sizes. `offset_fit_p` is p in a + b*x^p fitted over all points (4 or "
    "more sizes), the growth once a constant is set apart. A two-point slope has no R^2 (`too few "
    f"points`). `GAP`: |measured - predicted| > {GAP_LIMIT}. A gap is explained only by a figure of this run "
    "(weights + gradients + optimizer state from n_params, the transient peak minus saved bytes, the analytic "
    "FLOP count against the achieved rate, a stage of the profiled step, the load record), else it says "
    "\"unexplained\"."
)
CROSSOVER_NOTE = (
    "For every pair of series sharing the length axis (LSH or local attention against each dense kind; ours "
    "against each peer), the ratio a / b per common length on time and on each memory figure. Where it passes "
    "1 the two measured lengths are given with a log-log interpolated estimate; where it never does, the "
    "measured span. A crossing next to a point measured under load, or where a ratio lies within the two "
    "points' spreads (time: interquartile range; memory: min-max over processes), says so."
)


def md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_"
    return df.to_markdown(index=False, floatfmt=".4g")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


def header_markdown(run: Run, run_dir: Path, findings: str = "") -> str:
    """Title, the findings, environment and the commands that reproduce the run and this report."""
    meta, env = run.meta, run.environment
    suite = meta.get("suite") or (run.records[0].get("suite") if run.records else "?")
    run_id = meta.get("run_id") or run_dir.name
    profile = meta.get("profile") or "auto"
    commit = env.get("git_commit")
    dirty = " (dirty)" if env.get("git_dirty") else ""
    facts = [
        ("device", f"{run.device} ({env.get('device_name') or 'unknown'})"),
        ("torch", env.get("torch")), ("CUDA / driver", f"{env.get('cuda')} / {env.get('driver')}"),
        ("CPU", f"{env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads)"),
        ("python", env.get("python")), ("git commit", f"{commit}{dirty}" if commit else "unknown"),
        ("date", env.get("date") or meta.get("created_at")), ("profile", profile),
    ]
    table = pd.DataFrame(facts, columns=["", "value"])
    resolved = Path(run_dir).resolve()
    # Relative inside the repo (committed references carry no machine's folders); a run elsewhere names its folder.
    rel = portable_path(resolved) if resolved.is_relative_to(REPO_ROOT) else str(resolved)
    checkout = f"git checkout {commit}\n" if commit else ""
    reference = Path(run_dir).name.startswith("reference-")
    again = (f"python -m bench run {suite} --profile {profile} --device {run.device}   # a new run on this machine\n"
             f"python -m bench compare {rel} results/runs/{suite}/<new run id>" if reference else
             f"python -m bench run {suite} --profile {profile} --device {run.device} --fresh\n"
             f"python -m bench report {rel}")
    return "\n".join([
        f"# Report: suite `{suite}`, run `{run_id}`", "",
        str((meta.get("suite_spec") or {}).get("description") or "").strip(), "",
        findings,
        "## Environment", "", md(table), "",
        "## Reproduce", "", "```", f"{checkout}{again}", "```", "",
        MEMORY_NOTE, "",
    ])


def load_line(loaded: int, known: int, total_ok: int) -> str:
    """The summary sentence on machine load; older records do not say."""
    if not known:
        return "_The records do not say whether the machine was busy (recorded before load was measured)._"
    unknown = f" ({total_ok - known} ok points without a load record)" if known < total_ok else ""
    if not loaded:
        return f"All {known} ok points were measured on an otherwise idle machine{unknown}."
    return (f"**{loaded} of {known} ok points were measured under load** (other processes used the CPU "
            f"during the point); their times are not comparable, they are marked `under_load` in the "
            f"tables and hollow in the plots{unknown}.")


SPREAD_HEADINGS = {"_q25": "25th pct", "_q75": "75th pct", "_min": "min", "_max": "max"}


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """Column headings in words with units, the record column beside them; spreads as short tags."""
    def heading(c: str) -> str:
        for suffix, tag in SPREAD_HEADINGS.items():
            if c.endswith(suffix) and c not in ("n_hashes",):
                return tag
        return f"{label(c)} `{c}`" if has_label(c) and label(c) != c else c
    return table.rename(columns={c: heading(c) for c in table.columns})


def write_report(run_dir: Path) -> Path:
    """Regenerate report.md, tables/*.csv and plots/*.png in `run_dir` from records.jsonl and run.json."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    tables, plots = run_dir / "tables", run_dir / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png") if plots.exists() else ():
        old.unlink()

    df = add_derived(ok_frame(run.records), run.environment)
    counts, failed = status_counts(run.records), status_frame(run.records)
    df.to_csv(tables / "records.csv", index=False)
    counts.to_csv(tables / "status.csv", index=False)
    failed.to_csv(tables / "not_ok.csv", index=False)
    loaded, known = load_summary(run.records)

    parts = ["## Status", "", md(counts), "", load_line(loaded, known, len(df)), ""]
    if not failed.empty:
        parts += ["Points that did not finish ok:", "", md(failed), ""]

    specs = (run.meta.get("suite_spec") or {}).get("studies") or {}
    views = []
    for name in study_names(run):
        view = study_view(df, name, specs.get(name) or {}, run.device) if not df.empty else None
        if view is not None:
            views.append(view)
    exps = exponent_table(views)
    exps.to_csv(tables / "exponents.csv", index=False)
    cross = crossover_table(views)
    cross.drop(columns=["a_key", "b_key"]).to_csv(tables / "crossovers.csv", index=False)
    findings = grid_findings(views, exps, cross, run.environment, run.device)
    parts.insert(0, header_markdown(run, run_dir, findings_markdown(findings)))

    for name in study_names(run):
        view = next((v for v in views if v.name == name), None)
        parts += [f"## Study `{name}`", ""]
        if view is None:
            parts += ["_No ok points with a varying axis to show._", ""]
            continue
        table = study_table(view)
        table.to_csv(tables / f"{slug(name)}.csv", index=False)
        series = ", ".join(f"`{c}`" for c in view.series) or "none"
        parts += [view.description, "", f"x = `{view.x}`; series by {series}.", "", md(readable_table(table)), ""]
        for metric in view.metrics:
            fig = plot_metric(view, metric, plots / f"{slug(name)}__{slug(metric)}.png", run.environment,
                              run.device, exps)
            parts += [f"![{name}: {metric}](plots/{fig.path.name})", "", f"_{fig.caption}_", ""]
        extra = [plot_crossovers(view, study_pairs(view), plots / f"{slug(name)}__crossover.png"),
                 plot_stages(view, plots / f"{slug(name)}__stages.png")]
        for fig in (f for f in extra if f is not None):
            parts += [f"![{name}: {fig.path.stem.split('__')[-1]}](plots/{fig.path.name})", "", f"_{fig.caption}_", ""]
        stages = stage_columns(view.frame)
        if stages:  # the numbers behind the stacked bars
            keep = [*view.series, view.x, "stage_total_ms", *stages]
            view.frame[[c for c in keep if c in view.frame]].to_csv(tables / f"{slug(name)}__stages.csv", index=False)
            parts += [f"Stage times per point: `tables/{slug(name)}__stages.csv`.", ""]

    if not cross.empty:
        shown = cross[["study", "metric", "a", "b", "finding"]]
        parts += ["## Crossover lengths", "", CROSSOVER_NOTE, "", md(shown), ""]
    flagged = exps[exps["flag"] == "GAP"] if not exps.empty else exps
    parts += [
        "## Fitted growth exponents vs Table 3", "", EXPONENT_NOTE, "",
        md(exps.drop(columns=["explanation"])), "",
        f"### Gaps over {GAP_LIMIT} ({len(flagged)})", "",
    ]
    parts += [f"- `{r.study}` {r.series}, `{r.metric}`: measured {r.measured_slope:.2f} vs Table 3 "
              f"{r.predicted_slope:.2f}. {r.explanation[:1].upper() + r.explanation[1:]}." for r in flagged.itertuples()] or ["_none_"]
    parts.append("")
    out = run_dir / "report.md"
    out.write_text("\n".join(parts))
    return out
