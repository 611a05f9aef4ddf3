"""Publishing a suite run: `publish_run` after the fact, `LiveLogger` while it runs. Both turn the
same records into the same W&B run (config, records table, lines vs seq_len, Table 2, plots)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bench.publish.frames import (
    accuracy_matrix, flatten_record, line_series, records_frame, status_counts, study_axes,
)
from bench.publish.rundata import Record, RunInfo, find_plots, read_records, read_run_info
from bench.publish.scrub import scrub
from bench.publish.sink import Sink

JOB_TYPE = "bench"
MAX_TAG_LEN = 64  # W&B refuses longer tags
DUPLICATION_SUITE = "duplication"


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


def log_run_summary(sink: Sink, info: RunInfo, records: Sequence[Record], run_dir: Path) -> None:
    """Everything regenerated from the records: the table, the charts, Table 2, the report's plots."""
    frame = records_frame(records)
    sink.log_table("records", frame)
    for series in line_series(frame, study_axes(info.suite_spec)):
        sink.log_line_series(series)
    if info.suite == DUPLICATION_SUITE:
        matrix = accuracy_matrix(frame)
        if matrix is not None:
            sink.log_table("duplication/accuracy_matrix", matrix.reset_index())
    sink.log_images(find_plots(run_dir))
    sink.log_metrics({f"summary/{k}": v for k, v in status_counts(records).items()})


def _default_sink(run_dir: Path, online: bool | None, project: str | None) -> Sink:
    from bench.publish.wandb_sink import WandbSink

    return WandbSink(run_dir, online=online, project=project)


def _secrets() -> frozenset[str]:
    from bench.publish.wandb_sink import known_secrets

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
    is written under `run_dir/wandb/` and its `wandb sync` command printed. Returns that offline
    run's directory, or None when it went online.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    secrets = _secrets() if secrets is None else secrets
    records = [scrub(r, secrets) for r in read_records(run_dir)]
    sink = sink or _default_sink(run_dir, online, project)
    sink.init(name=run_name(info), group=info.suite, tags=run_tags(info), config=run_config(info, secrets), job_type=JOB_TYPE)
    try:
        log_run_summary(sink, info, records, run_dir)
    finally:
        where = sink.finish()
    return where


class LiveLogger:
    """Logs each point to W&B as it finishes (one step per record), and the whole summary at the end.

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
        self._sink.init(
            name=run_name(info), group=info.suite, tags=run_tags(info),
            config=run_config(info, self._secrets), job_type=JOB_TYPE,
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
            step = len(self._records) - 1
            assert self._sink is not None
            self._sink.log_metrics(step_metrics(clean, step), step=step)

        self._guard(f"record {record.get('point_id')!r}", log)

    def finish(self) -> None:
        """Log the summary (table, charts, plots) and close the run; a second call does nothing."""
        if self._finished:
            return
        self._finished = True
        if self._info is None or self._sink is None:
            return  # no record ever came: nothing to publish

        def close() -> None:
            assert self._info is not None and self._sink is not None
            try:
                log_run_summary(self._sink, self._info, self._records, self.run_dir)
            finally:
                self._sink.finish()

        self._guard("finish", close)
