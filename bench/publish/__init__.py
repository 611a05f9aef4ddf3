"""Publishing runs to an experiment tracker (Weights & Biases, offline first) behind a Sink interface.

`publish_run(run_dir)` publishes a finished run; `LiveLogger(run_dir)` logs points as they finish;
`publish_report(run_dirs)` builds the W&B Report of one or more runs (a spec offline, created online).
Nothing here imports wandb (or wandb-workspaces) until a run or a report is actually published.
"""
from bench.publish.frames import LineSeries, accuracy_matrix, line_series, records_frame
from bench.publish.publisher import LiveLogger, PublishError, publish_run, wandb_run_id
from bench.publish.report_publisher import ReportOutcome, publish_report
from bench.publish.scrub import scrub
from bench.publish.sink import RecordingSink, Sink
from bench.publish.wandb_sink import WandbSink, resolve_mode

__all__ = [
    "LineSeries",
    "LiveLogger",
    "PublishError",
    "ReportOutcome",
    "RecordingSink",
    "Sink",
    "WandbSink",
    "accuracy_matrix",
    "line_series",
    "publish_report",
    "publish_run",
    "records_frame",
    "resolve_mode",
    "scrub",
    "wandb_run_id",
]

