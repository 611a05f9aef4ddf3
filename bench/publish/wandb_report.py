"""A W&B Report for one or more runs of a suite, built with the official `wandb-workspaces` API
(`wandb_workspaces.reports.v2`): the title, report.md's findings and the environment, per study our report's text and live
line plots over the logged curves (a training study's learning curves against `train/step`; a quality
study led by its figure, hypothesis and verdict), the exponent table beside Table 3, Table 2 for
duplication, the final bits-per-byte and LSH approximation tables for quality.

Offline first: `report_spec` is the library's own serialisation of the report (the viewspec that
`Report.save()` uploads), written as `wandb_report.json`; `save_report` creates it online.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.publish.curves import curve_keys
from bench.publish.frames import LineSeries, StudyAxes, accuracy_matrix, line_series, records_frame, study_axes
from bench.publish.report_text import ReportText, without_paragraphs
from bench.publish.rundata import Record, RunInfo
from bench.publish.scrub import scrub, scrub_text
from bench.publish.training import (
    CURVE_LABELS, FINAL_TABLE, STEP_KEY, analysis_tables, curve_history_keys, curve_label, final_table, is_training,
    study_prefix,
)
from bench.quality.report import study_verdicts
from bench.report.frames import main_memory_metrics
from bench.report.labels import label

SPEC_NAME = "wandb_report.json"
TITLE_MAX = 128  # W&B refuses longer report titles
DUPLICATION_SUITE = "duplication"
QUALITY_KIND = "quality"
TRAIN_METRICS = ("valid_bpb", "loss")  # a training study's panels when its plot hint names none (quality)
MATRIX_TABLE = "duplication/accuracy_matrix"  # the table publish logs (see publisher.log_run_summary)
DEFAULT_Y = ("step_ms_median",)
PANEL_W, PANEL_H, PER_ROW = 12, 8, 2  # two panels a row on W&B's 24-column grid


def reports() -> Any:
    """wandb_workspaces.reports.v2, the W&B Report API."""
    import wandb_workspaces.reports.v2 as wr  # optional: imported only when a report is built

    return wr


@dataclass(frozen=True)
class ReportRun:
    """One run as the report sees it: run.json, scrubbed records, report.md's text, its W&B run id."""

    info: RunInfo
    records: tuple[Record, ...]
    text: ReportText
    wandb_id: str
    name: str  # the W&B run's display name, which the run set filters on


def report_title(runs: Sequence[ReportRun]) -> str:
    """`reformer-bench <suite>: <run id>[ vs <run id> ...]`, cut to W&B's limit."""
    title = f"reformer-bench {runs[0].info.suite}: " + " vs ".join(r.info.run_id for r in runs)
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 3] + "..."


def spec_path(run_dirs: Sequence[Path], runs: Sequence[ReportRun]) -> Path:
    """Beside the results: `RUN_DIR/wandb_report.json` for one run; for several, in the first run's
    parent (the suite's folder), named after the run ids."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / SPEC_NAME
    return Path(run_dirs[0]).parent / f"wandb_report-{'+'.join(r.info.run_id for r in runs)}.json"


def _environment_md(run: ReportRun) -> str:
    section = run.text.section("environment")
    if section:
        return section[1]
    env = run.info.environment
    rows = [f"| {k} | {env[k]} |" for k in sorted(env) if not isinstance(env[k], (dict, list))]
    return "\n".join(["| | value |", "|:--|:--|", *rows]) if rows else "(no environment recorded)"


def _metrics_for(axes: StudyAxes, available: Sequence[str], devices: Sequence[str]) -> list[str]:
    """The study's hinted y metrics that have curves, a memory metric without one (peak_alloc_mib on
    CPU) standing for the devices' main memory figures; default: main memory figures and step time."""
    main = [m for d in devices for m in main_memory_metrics(d)]
    out: list[str] = []
    for metric in axes.y or (*main, *DEFAULT_Y):
        chosen = [metric] if metric in available else (main if metric.endswith("_mib") else [])
        out += [m for m in chosen if m in available and m not in out]
    return out


def _layout(index: int) -> Any:
    wr = reports()
    return wr.Layout(x=(index % PER_ROW) * PANEL_W, y=(index // PER_ROW) * PANEL_H, w=PANEL_W, h=PANEL_H)


def _line_plot(study: str, metric: str, axes: StudyAxes, charts: Sequence[tuple[ReportRun, LineSeries]],
               index: int, several: bool) -> Any:
    wr = reports()
    y: list[str] = []
    titles: dict[str, str] = {}
    x_key = ""
    for run, series in charts:
        keys = curve_keys(series)
        x_key = keys.x
        for line, key in keys.y.items():
            if key not in y:
                y.append(key)
            titles[f"{run.wandb_id}:{key}"] = f"{run.info.run_id}: {line}" if several else line
    return wr.LinePlot(
        title=f"{study}: {label(metric)}", x=x_key, y=y, log_x=axes.logx, log_y=axes.logy,
        title_x=label(axes.x), title_y=label(metric), line_titles=titles, layout=_layout(index),
    )


def _kind(info: RunInfo) -> str:
    """run.json's `kind` (its suite_spec keeps it), else the suite's name."""
    return str(info.suite_spec.get("kind") or info.suite)


def _curve_lines(run: ReportRun, study: str) -> list[tuple[str, str]]:
    """(history key, line label) of every learning curve `study` has in `run`, in the study's model
    order (`models`, else record order), each model's seeds in record order; with `models`, only
    theirs (the no-attention control trains for every study but is a baseline, not a line of its
    figure, as in report.md)."""
    spec = (run.info.suite_spec.get("studies") or {}).get(study) or {}
    models = [m for m in spec.get("models") or () if isinstance(m, str)]

    def rank(record: Record) -> int:
        model = (record.get("params") or {}).get("train_model")
        return models.index(model) if model in models else len(models)

    prefix = study_prefix(study)
    lines: dict[str, str] = {}
    for record in sorted(filter(is_training, run.records), key=rank):  # stable: seeds in record order
        if models and (record.get("params") or {}).get("train_model") not in models:
            continue
        for key in curve_history_keys(record):
            if key.startswith(prefix):
                lines.setdefault(key, curve_label(record))
    return list(lines.items())


def _training_plots(study: str, axes: StudyAxes, runs: Sequence[ReportRun], first: int, several: bool) -> list[Any]:
    """The study's learning curves against `train/step`, one panel per metric: those its plot hint
    names (duplication: loss, accuracy), else TRAIN_METRICS; one line per model and seed."""
    wr = reports()
    lines = [(run, key, name) for run in runs for key, name in _curve_lines(run, study)]
    available = {key.rsplit("/", 1)[1] for _, key, _ in lines}
    metrics = [m for m in axes.y if m in available] or [m for m in TRAIN_METRICS if m in available]
    plots = []
    for i, metric in enumerate(metrics, start=first):
        mine = [(run, key, name) for run, key, name in lines if key.endswith("/" + metric)]
        y = list(dict.fromkeys(key for _, key, _ in mine))
        titles = {f"{run.wandb_id}:{key}": f"{run.info.run_id}: {name}" if several else name for run, key, name in mine}
        plots.append(wr.LinePlot(
            title=f"{study}: {CURVE_LABELS.get(metric, metric)}", x=STEP_KEY, y=y,
            title_x=CURVE_LABELS[STEP_KEY], title_y=CURVE_LABELS.get(metric, metric), line_titles=titles,
            layout=_layout(i),
        ))
    return plots


def _quality_verdicts(run: ReportRun) -> dict[str, str]:
    """Each quality study's verdict exactly as report.md words it (bench.quality.report.study_verdicts:
    the learned gate and the intervals included), computed again from the records."""
    return study_verdicts(run.info.suite_spec, run.records)


def _study_lead(run: ReportRun, study: str, verdicts: Mapping[str, str]) -> str:
    """`_Fig. 3._ **Hypothesis:** ... Baseline: `m`. **Verdict: ...**` from run.json's suite_spec and
    the records; "" for a study that states no hypothesis."""
    spec = (run.info.suite_spec.get("studies") or {}).get(study) or {}
    if not spec.get("hypothesis"):
        return ""
    paper = f"_{spec['paper']}._ " if spec.get("paper") else ""
    baseline = f" Baseline: `{spec['baseline']}`." if spec.get("baseline") else ""
    verdict = f"\n\n**Verdict: {verdicts[study]}.**" if study in verdicts else ""
    return f"{paper}**Hypothesis:** {spec['hypothesis']}.{baseline}{verdict}"


def _runset(runs: Sequence[ReportRun], entity: str, project: str) -> Any:
    """The runs this report describes: our group (the suite) and their names."""
    wr = reports()
    names = ", ".join(repr(r.name) for r in runs)
    return wr.Runset(entity=entity, project=project, name=f"{runs[0].info.suite} runs",
                     filters=f"Group = {runs[0].info.suite!r} and Name in [{names}]")


def _without_images(markdown: str) -> str:
    """report.md's image lines point at files beside it, which a W&B Report cannot see."""
    return "\n".join(line for line in markdown.splitlines() if not line.lstrip().startswith("![")).strip()


LINKS = re.compile(r" \((?:\[[^\]]*\]\([^)]*\)(?:, )?)+\)$", re.M)


def _without_links(markdown: str) -> str:
    """Findings' trailing '([table](#...), [plot](plots/...))': files and anchors of report.md."""
    return LINKS.sub("", markdown)


def _per_run(runs: Sequence[ReportRun], texts: Sequence[str]) -> list[Any]:
    """One markdown block when every run says the same, else one per run under its id."""
    wr = reports()
    texts = [_without_images(t) for t in texts]
    if len(set(texts)) <= 1:
        return [wr.MarkdownBlock(texts[0])] if texts and texts[0] else []
    blocks: list[Any] = []
    for run, text in zip(runs, texts):
        if text:
            blocks += [wr.H3(run.info.run_id), wr.MarkdownBlock(text)]
    return blocks


def build_report(runs: Sequence[ReportRun], *, project: str, entity: str = "",
                 runset_entity: str = "", runset_project: str = "") -> Any:
    """The Report for `runs` (all of one suite). Pure: nothing is sent; `entity` "" until online.

    The run set's entity and project stay "" offline (W&B then takes the report's); online they are
    given, which makes the library look the project up when the report is serialised.
    """
    wr = reports()
    if not runs:
        raise ValueError("a report needs at least one run")
    suites = sorted({r.info.suite for r in runs})
    if len(suites) > 1:
        raise ValueError(f"one report gathers runs of one suite, got {', '.join(suites)}")
    first, several = runs[0], len(runs) > 1
    description = str(first.info.suite_spec.get("description") or first.text.intro or "").strip()
    blocks: list[Any] = [wr.TableOfContents()]
    findings = [r.text.section("findings") for r in runs]
    if any(findings):  # report.md's computed findings open the W&B Report too
        blocks.append(wr.H1("Findings"))
        blocks += _per_run(runs, [_without_links(f[1]) if f else "" for f in findings])
    blocks.append(wr.H1("Environment"))
    for run in runs:
        if several:
            blocks.append(wr.H3(f"{run.info.run_id} ({run.info.device_name or run.info.device or '?'})"))
        blocks.append(wr.MarkdownBlock(_without_images(_environment_md(run))))

    axes = study_axes(first.info.suite_spec)
    charts = {id(r): line_series(records_frame(r.records), study_axes(r.info.suite_spec)) for r in runs}
    verdicts = {id(r): _quality_verdicts(r) if _kind(r.info) == QUALITY_KIND else {} for r in runs}
    for study, study_ax in axes.items():
        leads = [_study_lead(r, study, verdicts[id(r)]) for r in runs]
        # the lead states what report.md's hypothesis and verdict paragraphs say: those are left out
        text = _per_run(runs, [lead + "\n\n" + without_paragraphs(r.text.study(study)) if lead else r.text.study(study)
                               for r, lead in zip(runs, leads)])
        mine = [(r, s) for r in runs for s in charts[id(r)] if s.study == study]
        metrics = _metrics_for(study_ax, sorted({s.yname for _, s in mine}), [r.info.device or "cpu" for r in runs])
        panels = [_line_plot(study, m, study_ax, [(r, s) for r, s in mine if s.yname == m], i, several)
                  for i, m in enumerate(metrics)]
        panels += _training_plots(study, study_ax, runs, len(panels), several)
        if not (text or panels):
            continue  # a study with nothing to show
        blocks += [wr.H1(f"Study {study}"), *text]
        if panels:
            blocks.append(wr.PanelGrid(runsets=[_runset(runs, runset_entity, runset_project)], panels=panels))

    crossovers = [r.text.section("crossover") for r in runs]
    if any(crossovers):
        blocks.append(wr.H1("Crossover lengths"))
        blocks += _per_run(runs, [c[1] if c else "" for c in crossovers])

    exponents = [r.text.section("exponent") or r.text.section("table 3") for r in runs]
    if any(exponents):
        blocks.append(wr.H1("Fitted growth exponents vs Table 3"))
        blocks += _per_run(runs, [e[1] if e else "" for e in exponents])

    if first.info.suite == DUPLICATION_SUITE:
        blocks += _table2_blocks(runs, runset_entity, runset_project)
    blocks += _quality_table_blocks(runs, runset_entity, runset_project)
    report = wr.Report(project=project, entity=entity, title=report_title(runs), description=description,
                       blocks=blocks, width="fluid")
    _stable_ids(report)
    return report


def _table2_blocks(runs: Sequence[ReportRun], runset_entity: str, runset_project: str) -> list[Any]:
    """Table 2 as our report words it (measured beside the paper), else the matrix from the records;
    then a live panel over the matrix table that publish logs."""
    wr = reports()
    texts = []
    for run in runs:
        section = run.text.section("trained", "evaluated") or run.text.section("table 2")
        if section:
            texts.append(f"**{section[0]}**\n\n{section[1]}")
            continue
        matrix = accuracy_matrix(records_frame(run.records))
        texts.append(matrix.to_markdown() if matrix is not None else "")
    blocks: list[Any] = [wr.H1("Table 2: accuracy, trained (rows) x evaluated (columns)")]
    blocks += _per_run(runs, texts)
    blocks.append(wr.PanelGrid(runsets=[_runset(runs, runset_entity, runset_project)],
                               panels=[wr.WeavePanelSummaryTable(table_name=MATRIX_TABLE,
                                                                 layout=wr.Layout(w=24, h=10))]))
    training = [r.text.section("training") for r in runs]
    if any(training):
        blocks.append(wr.H1("Training"))
        blocks += _per_run(runs, [t[1] if t else "" for t in training])
    return blocks


def _quality_table_blocks(runs: Sequence[ReportRun], runset_entity: str, runset_project: str) -> list[Any]:
    """A section per table publish logs from quality records (see publisher.log_run_summary): the
    final bits per byte, then each analysis (the LSH approximation); report.md's section on it, then
    a live panel over the table. None for runs without such records."""
    wr = reports()
    names: dict[str, tuple[str, ...]] = {}  # table -> the words its report.md heading holds
    for run in runs:
        if final_table(run.records) is not None:
            names[FINAL_TABLE] = ("final", "table")
        names.update({name: tuple(name.split("/", 1)[1].split("_")) for name in analysis_tables(run.records)})
    blocks: list[Any] = []
    for name, words in names.items():
        sections = [r.text.section(*words) for r in runs]
        heading = next((s[0] for s in sections if s), name)
        blocks += [wr.H1(heading), *_per_run(runs, [s[1] if s else "" for s in sections])]
        blocks.append(wr.PanelGrid(runsets=[_runset(runs, runset_entity, runset_project)],
                                   panels=[wr.WeavePanelSummaryTable(table_name=name, layout=wr.Layout(w=24, h=10))]))
    return blocks


def _stable_ids(report: Any) -> None:
    """Panel and run-set ids from their place in the report, not at random: the same records give
    the same spec. (Ids only need to be unique within one report.)"""
    wr = reports()
    for b, block in enumerate(report.blocks):
        if isinstance(block, wr.PanelGrid):
            for kind, items in (("r", block.runsets), ("p", block.panels)):
                for i, item in enumerate(items):
                    digest = hashlib.sha1(f"{report.title}|{b}|{kind}{i}".encode()).hexdigest()[:11]
                    object.__setattr__(item, "_id", digest)


def report_spec(report: Any, runs: Sequence[ReportRun], command: str) -> dict[str, Any]:
    """The JSON written beside the results: the library's viewspec of the report (what `save()`
    uploads), with what it describes and the command that creates it."""
    try:
        library = f"wandb-workspaces {version('wandb-workspaces')}"
    except PackageNotFoundError:
        library = "wandb-workspaces"
    return {
        "format": "W&B report viewspec (Report._to_model(), as Report.save() uploads it)",
        "library": library,
        "runs": [{"suite": r.info.suite, "run_id": r.info.run_id, "wandb_run_id": r.wandb_id, "name": r.name}
                 for r in runs],
        "create_with": command,
        "viewspec": report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def write_spec(spec: Mapping[str, Any], path: Path, secrets: frozenset[str]) -> Path:
    """Write `spec` as sorted, indented JSON, every known secret value masked."""
    text = json.dumps(scrub(dict(spec), frozenset()), indent=2, sort_keys=True)
    Path(path).write_text(scrub_text(text, secrets) + "\n", encoding="utf-8")
    return Path(path)


def save_report(report: Any, report_id: str | None = None) -> str:
    """Create (or, with the id of one created before, update) the report online; its URL."""
    if report_id:
        report.id = report_id
    report.save()
    return str(report.url)
