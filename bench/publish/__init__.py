"""Publishing runs to an experiment tracker (Weights & Biases, offline first) behind a Sink interface.

`publish_run(run_dir)` publishes a finished run; `LiveLogger(run_dir)` logs points as they finish.
Nothing here imports wandb until a WandbSink is actually used.
"""
from bench.publish.frames import LineSeries, accuracy_matrix, line_series, records_frame
from bench.publish.publisher import LiveLogger, publish_run
from bench.publish.scrub import scrub
from bench.publish.sink import RecordingSink, Sink

__all__ = [
    "LineSeries",
    "LiveLogger",
    "RecordingSink",
    "Sink",
    "accuracy_matrix",
    "line_series",
    "publish_run",
    "records_frame",
    "scrub",
]


def __getattr__(name: str):  # WandbSink on demand, so `import bench.publish` stays light
    if name in ("WandbSink", "resolve_mode"):
        from bench.publish import wandb_sink

        return getattr(wandb_sink, name)
    raise AttributeError(f"module 'bench.publish' has no attribute {name!r}")
