"""The results store: `results/<suite>/<run_id>/` with run.json (written once) and records.jsonl
(append-only, one JSON record per finished point, flushed and fsynced). Resume reads the records
back, tolerating a torn last line, and says which points still need to run.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bench.grid import point_params
from bench.point import GridPoint

Record = dict[str, Any]
STATUSES = ("ok", "oom", "timeout", "error", "skipped")
# Outcomes that are final: resume never re-runs them. `error` and `timeout` re-run on request.
FINISHED = ("ok", "oom", "skipped")
RECORDS = "records.jsonl"
RUN_JSON = "run.json"
TORN = "records.torn"


class StoreError(ValueError):
    """The run directory cannot be used as asked (corrupt records, a run.json that disagrees)."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """Strict-JSON version of a value: NaN/inf become null, tuples lists, numpy scalars numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return jsonable(value.item())
    return str(value)


def make_record(
    point: GridPoint,
    status: str,
    reason: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    effective: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    wall_s: float = 0.0,
    traceback: str | None = None,
    run_id: str | None = None,
) -> Record:
    """One record in the contract's shape. `params` defaults to the point's own settings and is
    completed by whatever the measurement reports."""
    if status not in STATUSES:
        raise ValueError(f"record status={status!r}: expected one of {STATUSES}")
    return jsonable(
        {
            "point_id": point.point_id,
            "run_id": run_id,
            "suite": point.suite,
            "studies": list(point.studies),
            "status": status,
            "reason": reason,
            "point": point.to_json(),
            "params": {**point_params(point), **(params or {})},
            "effective": dict(effective or {}),
            "metrics": dict(metrics or {}),
            "wall_s": float(wall_s),
            "finished_at": now_iso(),
            "traceback": traceback,
        }
    )


def default_run_id(profile: str, device: str) -> str:
    """Same suite, profile and device -> same run directory, so re-running resumes."""
    return f"{profile}-{device}"


def machine_run_id(suite_dir: Path, run_id: str, device_name: str | None) -> str:
    """A default run directory resumes only on the kind of machine that started it: a run dir
    measured on another device (committed results, say) is left alone and this machine writes to
    `<run_id>-<device name>` instead."""
    meta_path = Path(suite_dir) / run_id / RUN_JSON
    if not meta_path.is_file() or not device_name:
        return run_id
    recorded = json.loads(meta_path.read_text()).get("environment", {}).get("device_name")
    if recorded in (None, device_name):
        return run_id
    slug = "-".join("".join(c if c.isalnum() else " " for c in device_name.lower()).split())
    return f"{run_id}-{slug}"


def fresh_run_id(profile: str, device: str, when: _dt.datetime | None = None) -> str:
    stamp = (when or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{profile}-{device}-{stamp}"


def read_records(path: Path) -> list[Record]:
    """All records in a records.jsonl; a torn (unparsable) last line is ignored, a bad line
    elsewhere is a StoreError naming it."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if all(not rest.strip() for rest in lines[number:]):
                break  # torn last line: the writer was killed mid-write
            raise StoreError(f"{path}:{number}: not a JSON record ({exc})") from exc
    return records


def latest_by_point(records: Iterable[Record]) -> dict[str, Record]:
    """The last record of each point_id (a retried point's newest outcome wins)."""
    return {r["point_id"]: r for r in records}


class RunStore:
    """One run directory, opened for appending. Opening repairs a torn last line (moving the
    fragment to records.torn) so the next append starts on a fresh line."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.records_path = self.run_dir / RECORDS
        self.run_json_path = self.run_dir / RUN_JSON
        self.torn_fragment = self._repair()

    def _repair(self) -> bytes | None:
        if not self.records_path.exists():
            return None
        data = self.records_path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        fragment = data[keep:]
        with open(self.run_dir / TORN, "ab") as f:
            f.write(fragment + b"\n")
        with open(self.records_path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        return fragment

    def records(self) -> list[Record]:
        return read_records(self.records_path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line, then flush and fsync, so a finished point survives a crash."""
        line = json.dumps(jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"
        with open(self.records_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_run_json(self) -> dict[str, Any] | None:
        if not self.run_json_path.exists():
            return None
        return json.loads(self.run_json_path.read_text())

    def write_run_json(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Write run.json once (atomically); on resume keep the original, after checking that it
        describes the same suite, profile and device."""
        existing = self.read_run_json()
        if existing is not None:
            for key in ("suite", "profile", "device"):
                if existing.get(key) != meta.get(key):
                    raise StoreError(
                        f"{self.run_json_path}: {key}={existing.get(key)!r} but this run has "
                        f"{key}={meta.get(key)!r}; use another --run-id or --fresh"
                    )
            return existing
        tmp = self.run_json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(jsonable(meta), indent=2) + "\n")
        os.replace(tmp, self.run_json_path)
        return dict(meta)

    def pending(self, point_ids: Sequence[str], retry_failed: bool = False) -> list[str]:
        """The point_ids that still need a run: never recorded, or (with retry_failed) last
        recorded as error/timeout. Finished points (ok/oom/skipped) never run twice."""
        done = latest_by_point(self.records())
        todo = []
        for pid in point_ids:
            record = done.get(pid)
            if record is None or (retry_failed and record["status"] not in FINISHED):
                todo.append(pid)
        return todo
