"""Reports regenerated from a run's records.jsonl and run.json alone, by stage: frames (records into
tables), exponents (fits vs Table 3), figures (PNGs), markdown (report.md) and labels (words and units).

`write_report(run_dir) -> Path` is the entry point the runner and the CLI call.
"""
from bench.report.exponents import exponent_table
from bench.report.frames import (
    Run, StudyView, load_run, ok_frame, status_counts, status_frame, study_table, study_view,
)
from bench.report.markdown import write_report
from bench.store import read_records

__all__ = [
    "Run", "StudyView", "exponent_table", "load_run", "ok_frame", "read_records", "status_counts",
    "status_frame", "study_table", "study_view", "write_report",
]
