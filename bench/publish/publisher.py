"""Publishing a suite run: `publish_run` after the fact, `LiveLogger` while it runs. Both turn the
same records into the same W&B run (config, records table, lines vs seq_len, Table 2, learning
curves per study, the quality tables, plots), under one W&B run id per run directory, so publishing
after a live run resumes it instead of adding one."""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bench.publish.curves import curve_keys, curve_rows
from bench.publish.frames import (
    accuracy_matrix, flatten_record, line_series, records_frame, status_counts, study_axes,
)
from bench.publish.rundata import (
    Record, RunInfo, find_plots, read_records, read_run_info, update_wandb_state, wandb_state,
)
from bench.publish.scrub import scrub
from bench.publish.sink import Sink
from bench.publish.training import GLOB as TRAIN_GLOB, STEP_KEY as TRAIN_STEP_KEY
from bench.publish.training import FINAL_TABLE, analysis_tables, final_table, training_history
from bench.publish.wandb_sink import WandbSink, known_secrets

JOB_TYPE = "bench"
MAX_TAG_LEN = 64  # W&B refuses longer tags
DUPLICATION_SUITE = "duplication"
INSTALL_HINT = "install the W&B extra: pip install -e '.[wandb]'"
RUN_ID_MAX = 64
TRAIN_STATE = "train_curves"  # run.json's wandb block: {curve prefix: last step logged}


class PublishError(Exception):
    """A run that cannot be published as asked; the message is one line for the command line."""


def require(module: str) -> None:
    """Refuse early, in words, when an optional W&B package is missing."""
    try:
        __import__(module)
    except ImportError as e:
        raise PublishError(f"{module} is not installed ({e.msg}); {INSTALL_HINT}") from None


def load_run(run_dir: Path, secrets: frozenset[str]) -> tuple[RunInfo, list[Record]]:
    """run.json and the scrubbed records, or a PublishError naming the file and what is wrong."""
    try:
        info = read_run_info(run_dir)
        records = [scrub(r, secrets) for r in read_records(run_dir)]
    except (OSError, ValueError) as e:
        raise PublishError(str(e)) from None
    return info, records


def wandb_run_id(info: RunInfo, run_dir: Path) -> str:
    """The W&B run id of this run directory: the one run.json records (an earlier publish or live
    log), else `<suite>-<run_id>-<hash>` derived from run.json's suite, run_id and created_at, so a
    live logger and a later publish of the same run agree without talking to each other."""
    stored = wandb_state(run_dir).get("run_id")
    if isinstance(stored, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", stored):
        return stored
    digest = hashlib.sha1(f"{info.suite}\n{info.run_id}\n{info.created_at}".encode()).hexdigest()[:8]
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{info.suite}-{info.run_id}")
    return f"{base[: RUN_ID_MAX - 9]}-{digest}"


def run_name(info: RunInfo) -> str:
    """Stable across re-publishing: `<suite>-<run_id>`."""
    return f"{info.suite}-{info.run_id}"


def run_tags(info: RunInfo) -> list[str]:
    """[device name, short git commit, profile], leaving out what is unknown."""
    commit = info.git_commit
    tags = [info.device_name, commit[:7] if commit else None, info.profile]
    return list(dict.fromkeys(str(t)[:MAX_TAG_LEN] for t in tags if t))


def run_config(info: RunInfo, secrets: frozenset[str]) -> dict[str, Any]:
    """The W&B config: what was run, where, with which code; scrubbed of anything secret."""
    config = {
        "suite": info.suite,
        "profile": info.profile,
        "run_id": info.run_id,
        "device": info.device,
        "created_at": info.created_at,
        "environment": info.environment,
        "suite_spec": info.suite_spec,
    }
    return scrub(config, secrets)


def step_metrics(record: Record, step: int) -> dict[str, Any]:
    """What one finished point logs as one W&B step: its status and its numeric params/metrics."""
    row = flatten_record(record)
    out: dict[str, Any] = {"point": step, "status": row["status"], "point_id": row["point_id"]}
    for key, value in row.items():
        if key.startswith(("params.", "effective.", "metrics.")) or key == "wall_s":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key.replace(".", "/", 1)] = value
    return out


def logged_train_steps(run_dir: Path) -> dict[str, int]:
    """{curve prefix: last step} of the learning curves already in this run's W&B history."""
    marks = wandb_state(run_dir).get(TRAIN_STATE)
    if not isinstance(marks, dict):
        return {}
    return {k: int(v) for k, v in marks.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_learning_curves(
    sink: Sink, records: Sequence[Record], logged: dict[str, int], define_x: bool = True,
) -> int:
    """Log the learning curves of `records` one history row per step, against `train/step` (defined
    before the first row unless `define_x` is False: the caller did already), leaving out the steps
    `logged` holds; `logged` is updated row by row, so that what a failed call did log is known.
    Returns the number of rows logged."""
    n_rows = 0
    for record in records:
        rows = training_history(record, logged)
        if rows and n_rows == 0 and define_x:
            sink.define_x(TRAIN_GLOB, TRAIN_STEP_KEY)
        for row in rows:
            sink.log_metrics(row.values)
            logged.update(dict.fromkeys(row.prefixes, row.step))
            n_rows += 1
    return n_rows


def log_run_summary(
    sink: Sink, info: RunInfo, records: Sequence[Record], run_dir: Path, curves_logged: str | None = None,
) -> str:
    """Everything regenerated from the records: the table, the charts, their curves as history (for
    the W&B Report's panels), Table 2, the report's plots. Returns the curves' digest; curves whose
    digest is `curves_logged` are in the run's history already and are not logged twice (a line plot
    would draw them twice)."""
    frame = records_frame(records)
    sink.log_table("records", frame)
    charts = line_series(frame, study_axes(info.suite_spec))
    for series in charts:
        sink.log_line_series(series)
    for glob, x in sorted({(k.glob, k.x) for k in map(curve_keys, charts)}):
        sink.define_x(glob, x)
    rows = [row for series in charts for row in curve_rows(series)]
    digest = hashlib.sha1(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    if digest != curves_logged:
        for row in rows:
            sink.log_metrics(row)
    if info.suite == DUPLICATION_SUITE:
        matrix = accuracy_matrix(frame)
        if matrix is not None:
            sink.log_table("duplication/accuracy_matrix", matrix.reset_index())
    final = final_table(records)
    if final is not None:
        sink.log_table(FINAL_TABLE, final)
    for name, table in analysis_tables(records).items():
        sink.log_table(name, table)
    sink.log_images(find_plots(run_dir))
    sink.log_metrics({f"summary/{k}": v for k, v in status_counts(records).items()})
    return digest


def _default_sink(run_dir: Path, online: bool | None, project: str | None) -> Sink:
    require("wandb")
    return WandbSink(run_dir, online=online, project=project)


def _secrets() -> frozenset[str]:
    return known_secrets()


def publish_run(
    run_dir: Path,
    *,
    online: bool | None = None,
    project: str | None = None,
    sink: Sink | None = None,
    secrets: frozenset[str] | None = None,
) -> str | None:
    """Turn `run_dir/run.json` + `records.jsonl` (+ `plots/*.png`) into one W&B run.

    Offline unless an API key is present and the server answers (or `online=True`); an offline run
    is written under WANDB_DIR, else `run_dir/wandb/`, and its `wandb sync` command printed. The W&B
    run is the one a live log of this run made (same id, resumed, later steps), and run.json keeps
    its id and next step. Returns the offline run's directory, or None when it went online.
    Raises PublishError for a run that cannot be read or a missing wandb.
    """
    run_dir = Path(run_dir)
    secrets = _secrets() if secrets is None else secrets
    info, records = load_run(run_dir, secrets)
    sink = sink or _default_sink(run_dir, online, project)
    run_id, state = wandb_run_id(info, run_dir), wandb_state(run_dir)
    sink.init(name=run_name(info), group=info.suite, tags=run_tags(info), config=run_config(info, secrets),
              job_type=JOB_TYPE, run_id=run_id, start_step=int(state.get("next_step") or 0))
    digest, logged = state.get("curves_digest"), logged_train_steps(run_dir)
    try:
        log_learning_curves(sink, records, logged)
        digest = log_run_summary(sink, info, records, run_dir, curves_logged=digest)
    finally:
        where = sink.finish()
        update_wandb_state(run_dir, run_id=run_id, next_step=sink.next_step, curves_digest=digest,
                           **{TRAIN_STATE: logged})
    return where


class LiveLogger:
    """Logs each point to W&B as it finishes (one step per record, then a training's learning curve
    one step per logged optimiser step), and the whole summary at the end.

    The W&B run opens on the first record, when `run.json` exists. A tracker failure never stops a
    sweep: it is reported once and logging stops.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        online: bool | None = None,
        project: str | None = None,
        sink: Sink | None = None,
        secrets: frozenset[str] | None = None,
        warn: Callable[[str], None] = lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3),
    ) -> None:
        self.run_dir = Path(run_dir)
        self._sink = sink
        self._online = online
        self._project = project
        self._secrets = secrets
        self._warn = warn
        self._info: RunInfo | None = None
        self._records: list[Record] = []
        self._failed = False
        self._finished = False
        self._logged: dict[str, int] = {}  # learning curves in the W&B run: {prefix: last step}
        self._x_defined = False  # train/step defined as their x in this session

    def _start(self, first: Record) -> None:
        try:
            self._info = read_run_info(self.run_dir)
        except FileNotFoundError:
            self._info = RunInfo.from_record(first, self.run_dir)
        if self._secrets is None:
            self._secrets = _secrets()
        if self._sink is None:
            self._sink = _default_sink(self.run_dir, self._online, self._project)
        info = self._info
        self._logged = logged_train_steps(self.run_dir)
        self._sink.init(
            name=run_name(info), group=info.suite, tags=run_tags(info),
            config=run_config(info, self._secrets), job_type=JOB_TYPE,
            run_id=wandb_run_id(info, self.run_dir),
            start_step=int(wandb_state(self.run_dir).get("next_step") or 0),
        )

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        if self._failed:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- logging must never end a sweep
            self._failed = True
            self._warn(f"W&B live logging stopped at {what}: {type(e).__name__}: {e}")

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Log one finished point as the next step."""
        if self._finished:
            raise RuntimeError("LiveLogger.log_record after finish()")

        def log() -> None:
            if self._info is None:
                self._start(dict(record))
            clean = scrub(dict(record), self._secrets or frozenset())
            self._records.append(clean)
            assert self._sink is not None
            self._sink.log_metrics(step_metrics(clean, len(self._records) - 1))
            if log_learning_curves(self._sink, [clean], self._logged, define_x=not self._x_defined):
                self._x_defined = True
                self._save_state()  # a run killed later must not have its curves logged again

        self._guard(f"record {record.get('point_id')!r}", log)

    def _save_state(self) -> None:
        """run.json's wandb block as now: no other writer touches run.json while a run goes on."""
        assert self._info is not None and self._sink is not None
        update_wandb_state(self.run_dir, run_id=wandb_run_id(self._info, self.run_dir),
                           next_step=self._sink.next_step, **{TRAIN_STATE: self._logged})

    def _all_records(self) -> list[Record]:
        """The whole run's records for the summary (a resumed run logged only its new points), or
        the ones seen here when records.jsonl cannot be read."""
        try:
            return [scrub(r, self._secrets or frozenset()) for r in read_records(self.run_dir)] or self._records
        except (OSError, ValueError):
            return self._records

    def finish(self) -> None:
        """Log the summary (table, charts, plots) and close the run; a second call does nothing."""
        if self._finished:
            return
        self._finished = True
        if self._info is None or self._sink is None:
            return  # no record ever came: nothing to publish

        def close() -> None:
            assert self._info is not None and self._sink is not None
            digest = wandb_state(self.run_dir).get("curves_digest")
            records = self._all_records()
            try:
                # curves of an earlier session that was not logged live
                log_learning_curves(self._sink, records, self._logged, define_x=not self._x_defined)
                digest = log_run_summary(self._sink, self._info, records, self.run_dir, digest)
            finally:
                self._sink.finish()
                update_wandb_state(self.run_dir, run_id=wandb_run_id(self._info, self.run_dir),
                                   next_step=self._sink.next_step, curves_digest=digest,
                                   **{TRAIN_STATE: self._logged})

        self._guard("finish", close)
