"""Line series as W&B history: one x key per study and one y key per (metric, line), so that a
report's LinePlot panel (x = the study's x key, y = the line keys) redraws our plot, one line per
configuration, over any number of runs. Pure: names and rows only."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.publish.frames import LineSeries

PREFIX = "curves"


@dataclass(frozen=True)
class CurveKeys:
    """Where one chart's points live in a run's history: the x key and, per line label, its y key."""

    x: str
    y: dict[str, str]  # line label (e.g. "attention=full, workload=model") -> history key

    @property
    def glob(self) -> str:
        """Every key of the chart's study, as W&B's `define_metric` globs them."""
        return self.x.rsplit("/", 1)[0] + "/*"


def _slug(text: str) -> str:
    """History keys keep to letters, digits, `_` and `/`: W&B treats `.` as nesting."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "all"


def curve_keys(series: LineSeries) -> CurveKeys:
    """The history keys of `series`: `curves/<study>/<x>` and `curves/<study>/<metric>/<line>`."""
    base = f"{PREFIX}/{_slug(series.study) if series.study else 'all'}"
    y: dict[str, str] = {}
    for label in series.keys:
        key = f"{base}/{series.yname}/{'all' if label == series.yname else _slug(label)}"
        while key in y.values():  # two labels that differ only in punctuation
            key += "_"
        y[label] = key
    return CurveKeys(x=f"{base}/{series.xname}", y=y)


def curve_rows(series: LineSeries) -> list[dict[str, Any]]:
    """One history row per point: {x key: x, y key of its line: y}, each line in increasing x."""
    keys = curve_keys(series)
    rows = []
    for label, xs, ys in zip(series.keys, series.xs, series.ys):
        for x, y in sorted(zip(xs, ys)):
            rows.append({keys.x: x, keys.y[label]: y})
    return rows
