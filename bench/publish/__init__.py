"""Publishing runs to an experiment tracker (Weights & Biases, offline first) behind a Sink interface.

`publish_run(run_dir)` publishes a finished run; `LiveLogger(run_dir)` logs points as they finish;
`publish_report(run_dirs)` builds the W&B Report of one or more runs (a spec offline, created online).
Nothing here imports wandb until a WandbSink is actually used.
"""
from bench.publish.frames import LineSeries, accuracy_matrix, line_series, records_frame
from bench.publish.publisher import LiveLogger, PublishError, publish_run, wandb_run_id
from bench.publish.report_publisher import ReportOutcome, publish_report
from bench.publish.scrub import scrub
from bench.publish.sink import RecordingSink, Sink

__all__ = [
    "LineSeries",
    "LiveLogger",
    "PublishError",
    "ReportOutcome",
    "RecordingSink",
    "Sink",
    "accuracy_matrix",
    "line_series",
    "publish_report",
    "publish_run",
    "records_frame",
    "scrub",
    "wandb_run_id",
]


def __getattr__(name: str):  # WandbSink on demand, so `import bench.publish` stays light
    if name in ("WandbSink", "resolve_mode"):
        from bench.publish import wandb_sink

        return getattr(wandb_sink, name)
    raise AttributeError(f"module 'bench.publish' has no attribute {name!r}")
