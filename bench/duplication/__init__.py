"""The paper's duplication task (Table 2) as a harness suite: data, resumable training,
train x eval accuracy matrix, records and report. Entry points: `runner.run_suite`,
`report.write_report`, `python -m bench.duplication`."""
from __future__ import annotations

from pathlib import Path

DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "suites" / "duplication.yaml"

__all__ = ["DEFAULT_SUITE"]
