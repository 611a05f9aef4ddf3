"""What a grid run prints: one line per record as it lands, and a summary table of its points."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.grid import PlannedPoint, point_params

# Main figures in the summary table: the first metric present wins.
TIME_METRICS = ("step_ms_median", "fwd_bwd_ms_median", "fwd_ms_median")
MEMORY_METRICS = ("peak_alloc_mib", "rss_delta_mib", "peak_rss_mib")
STATUS_STYLE = {"ok": "green", "oom": "yellow", "timeout": "magenta", "error": "red", "skipped": "dim"}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def first_metric(metrics: Mapping[str, Any], names: Iterable[str]) -> Any:
    return next((metrics[n] for n in names if metrics.get(n) is not None), None)


def one_line(record: Mapping[str, Any]) -> str:
    status = record["status"]
    metrics = record.get("metrics") or {}
    params = record.get("params") or {}
    what = " ".join(f"{k}={params[k]}" for k in ("workload", "attention", "seq_len", "batch_size") if k in params)
    figures = (f"time={fmt(first_metric(metrics, TIME_METRICS))} ms "
               f"mem={fmt(first_metric(metrics, MEMORY_METRICS))} MiB"
               + (f" ({record['reason']})" if record.get("reason") else "")) if status == "ok" else (record.get("reason") or "")
    if (record.get("load") or {}).get("under_load"):
        figures = "[under load] " + figures
    return f"[{STATUS_STYLE.get(status, 'white')}]{status:>7}[/] {record['point_id']} {escape(what)} {escape(figures[:120])}"


def varying_params(points: Sequence[PlannedPoint]) -> list[str]:
    """The params that take more than one value among the points that have them (a field
    dropped by canonicalisation, e.g. n_hashes for full attention, does not count)."""
    rows = [point_params(p.point) for p in points]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [k for k in keys if len({repr(row[k]) for row in rows if k in row}) > 1]


def print_summary(console: Console, points: Sequence[PlannedPoint], records: Mapping[str, Mapping[str, Any]]) -> None:
    """One row per point of this run: what varies, status, main time and memory figures."""
    keys = varying_params(points)
    table = Table(title="summary", caption=f"time: first of {', '.join(TIME_METRICS)}; "
                                           f"memory: first of {', '.join(MEMORY_METRICS)}")
    table.add_column("point_id", no_wrap=True)
    table.add_column("studies", overflow="fold")
    for col in (*keys, "status", "time ms", "memory MiB"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", overflow="ellipsis", max_width=60)
    counts: dict[str, int] = {}
    for p in points:
        record = records.get(p.point.point_id)
        status = record["status"] if record else "not run"
        counts[status] = counts.get(status, 0) + 1
        metrics = (record or {}).get("metrics") or {}
        params = point_params(p.point)
        table.add_row(
            p.point.point_id, escape(",".join(p.point.studies)), *(escape(fmt(params.get(k))) for k in keys),
            f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
            fmt(first_metric(metrics, TIME_METRICS)), fmt(first_metric(metrics, MEMORY_METRICS)),
            escape((record or {}).get("reason") or ""),
        )
    console.print(table)
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    loaded = sum(bool(((records.get(p.point.point_id) or {}).get("load") or {}).get("under_load")) for p in points)
    if loaded:
        console.print(f"{loaded} of {len(points)} points were measured under load (other processes busy): "
                      "their times are not comparable", style="yellow", markup=False)
