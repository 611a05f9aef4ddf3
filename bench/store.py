"""The results store: a run folder `results/runs/<suite>/<run_id>/` (references:
`results/<suite>/reference-<profile>/`) with run.json (written once) and records.jsonl (append-only,
one JSON record per finished point, flushed and fsynced), locked by one writer. Resume reads the
records back, tolerating a torn last line, and says which points still need to run.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bench.environment import host_id
from bench.grid import point_params
from bench.point import GridPoint

Record = dict[str, Any]
STATUSES = ("ok", "oom", "timeout", "error", "skipped")
# Outcomes that are final: resume never re-runs them. `error` and `timeout` re-run on request.
FINISHED = ("ok", "oom", "skipped")
RECORDS = "records.jsonl"
RUN_JSON = "run.json"
TORN = "records.torn"
LOCK = ".lock"
RUNS = "runs"  # <results_root>/runs/<suite>/<run_id>/: runs (git-ignored)
REFERENCE_PREFIX = "reference-"  # <results_root>/<suite>/reference-<profile>/: committed references
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


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


def fresh_run_id(profile: str, device: str, when: _dt.datetime | None = None) -> str:
    stamp = (when or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{profile}-{device}-{stamp}"


def runs_dir(results_root: Path, suite: str) -> Path:
    """Where a suite's runs live: `<results_root>/runs/<suite>/` (git-ignored)."""
    return Path(results_root) / RUNS / suite


def reference_dir(results_root: Path, suite: str, profile: str) -> Path:
    """The committed reference of a suite and profile (may not exist): `<root>/<suite>/reference-<profile>/`."""
    return Path(results_root) / suite / f"{REFERENCE_PREFIX}{profile}"


def is_reference(run_dir: Path) -> bool:
    """A reference folder: named `reference-<profile>` (run ids may not start so)."""
    return Path(run_dir).name.startswith(REFERENCE_PREFIX)


def check_name(what: str, value: str) -> str:
    """A suite name or run id that is one plain path component: letters, digits, `_`, `.`, `-`,
    starting with a letter or digit, never `.`/`..` or a `/`; refused with a StoreError otherwise."""
    if not _SAFE_NAME.fullmatch(value or "") or ".." in value:
        raise StoreError(f"{what}={value!r}: must be one plain name (letters, digits, '_', '.', '-', "
                         "starting with a letter or digit; no '/', '.' or '..' path components)")
    if what == "--run-id" and is_reference(Path(value)):
        raise StoreError(f"{what}={value!r}: names starting with {REFERENCE_PREFIX!r} are kept for references")
    return value


def inside(path: Path, root: Path) -> Path:
    """`path`, after checking that it resolves inside `root` (symlinks followed); a StoreError if not."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise StoreError(f"{path}: resolves to {resolved}, outside the results folder {base}")
    return path


def load_run_json(run_dir: Path) -> dict[str, Any]:
    """A run folder's run.json; a StoreError naming the file if it is missing or not a JSON object."""
    path = Path(run_dir) / RUN_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{run_dir}: no {RUN_JSON}; not a run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: cannot be read as JSON ({exc}); the run folder is damaged") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def check_run_names(run_dir: Path, meta: Mapping[str, Any]) -> None:
    """The names of a run.json that become file names and W&B keys (its suite and run id, its
    suite_spec's studies, models and evaluation settings): each one plain name, else a StoreError
    naming the field (what a suite the loader refuses today, or an edited run.json, left there)."""
    path = Path(run_dir) / RUN_JSON
    for key in ("suite", "run_id"):
        if meta.get(key) is not None:
            check_name(f"{path}: {key}", str(meta[key]))
    spec = meta.get("suite_spec") if isinstance(meta.get("suite_spec"), Mapping) else {}
    for key in ("studies", "models", "eval_settings"):
        names = spec.get(key)
        for name in names if isinstance(names, Mapping) else ():
            check_name(f"{path}: suite_spec.{key}: name", str(name))


def plan_key(spec: Mapping[str, Any], planned: Iterable[str]) -> str:
    """What a continued run must share with the one that began it: the resolved suite (without its
    file's location or prose) and the planned point ids. Equal content gives equal keys on any checkout."""
    core = {k: v for k, v in jsonable(spec).items() if k not in ("path", "description")}
    blob = json.dumps({"spec": core, "planned": sorted(planned)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def same_spec(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two resolved suites describe the same runs (where their file lives does not matter)."""
    strip = lambda spec: {k: v for k, v in jsonable(spec).items() if k != "path"}  # noqa: E731
    return strip(a) == strip(b)


def watchdog_retryable(record: Record) -> bool:
    """An `oom` that the RSS watchdog decided at a limit the user set: `--retry-failed` runs it
    again (a limit the user chose is not the machine's, unlike an allocator's out-of-memory)."""
    eff = record.get("effective") or {}
    return (record.get("status") == "oom" and eff.get("oom_detected_by") == "rss_watchdog"
            and eff.get("memory_limit_set_by") == "user")


def pending_ids(records: Iterable[Record], point_ids: Sequence[str], retry_failed: bool = False) -> list[str]:
    """The point_ids that still need a run: never recorded, or (with retry_failed) last recorded as
    error/timeout or killed by the watchdog at the user's limit. Other finished points (ok, oom,
    skipped) never run twice."""
    done = latest_by_point(records)
    return [pid for pid in point_ids
            if (r := done.get(pid)) is None
            or (retry_failed and (r.get("status") not in FINISHED or watchdog_retryable(r)))]


class RunLock:
    """An exclusive lock on a run folder (`fcntl.flock` on `.lock`): one writer per run. A second
    writer is refused with the holder's pid and host, which the holder writes into the lock file."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._file: Any = None

    def __enter__(self) -> "RunLock":
        try:
            f = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot open its lock file ({exc.strerror})") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = _holder(f.read())
            f.close()
            raise StoreError(f"{self.path.parent}: in use by {holder}; one run writes to a run folder at a "
                             "time (wait for it, or start another run)") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "hostname": platform.node(), "host_id": host_id(),
                            "since": now_iso()}) + "\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def locked(run_dir: Path) -> str | None:
    """Who holds a run folder's lock now ('pid N on host H'), or None when nobody does."""
    path = Path(run_dir) / LOCK
    if not path.exists():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _holder(f.read())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['hostname']} (host id {info['host_id']}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process (pid not yet written)"


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
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if all(not rest.strip() for rest in lines[number:]):
                break  # torn last line: the writer was killed mid-write
            raise StoreError(f"{path}:{number}: not a JSON record ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("point_id"), str) \
                or not isinstance(record.get("status"), str):
            got = type(record).__name__ if not isinstance(record, dict) else "an object without point_id and status"
            raise StoreError(f"{path}:{number}: not a record (a JSON object with a point_id and a status); "
                             f"got {got}; the run folder is damaged")
        records.append(record)
    return records


def latest_by_point(records: Iterable[Record]) -> dict[str, Record]:
    """The last record of each point_id (a retried point's newest outcome wins)."""
    return {r["point_id"]: r for r in records}


class RunStore:
    """One run directory, opened for appending. Opening repairs a torn last line (moving the
    fragment to records.torn) so the next append starts on a fresh line."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.run_dir}: cannot create the run folder ({exc.strerror})") from None
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

    def check_writable(self) -> None:
        """Before anything is measured: the folder takes new files and records.jsonl takes appends
        (opened for appending, nothing written), so a point is never measured only to be lost."""
        probe = self.run_dir / ".write-probe"
        try:
            with open(probe, "w"):
                pass
            probe.unlink()
            if self.records_path.exists():
                with open(self.records_path, "a"):
                    pass
        except OSError as exc:
            raise StoreError(f"{self.run_dir}: not writable ({exc.strerror}: {Path(exc.filename or '').name}); "
                             "nothing was measured") from None

    def records(self) -> list[Record]:
        return read_records(self.records_path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line, then flush and fsync, so a finished point survives a crash.
        A failed write (disk full, say) is a StoreError: the records before it stay intact, and a
        partial line is repaired as a torn one when the run folder is next opened."""
        line = json.dumps(jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"
        try:
            with open(self.records_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise StoreError(f"{self.records_path}: cannot append the record of point {record.get('point_id')} "
                             f"({why}); the records before it are kept, and that point runs again when "
                             "the same command is rerun") from None

    def read_run_json(self) -> dict[str, Any] | None:
        if not self.run_json_path.exists():
            return None
        return load_run_json(self.run_dir)

    def write_run_json(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Write run.json once (atomically); on resume keep the original, after checking that it
        describes the same suite, profile, device and host."""
        existing = self.read_run_json()
        if existing is not None:
            for key in ("suite", "profile", "device", "host_id"):
                if key in meta and existing.get(key) != meta.get(key):
                    raise StoreError(
                        f"{self.run_json_path}: {key}={existing.get(key)!r} but this run has "
                        f"{key}={meta.get(key)!r}; use another --run-id or --fresh"
                    )
            return existing
        tmp = self.run_json_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(jsonable(meta), indent=2) + "\n")
            os.replace(tmp, self.run_json_path)
        except OSError as exc:
            raise StoreError(f"{self.run_json_path}: cannot be written ({exc.strerror}); nothing was measured") from None
        return dict(meta)

    def pending(self, point_ids: Sequence[str], retry_failed: bool = False) -> list[str]:
        """The point_ids that still need a run (see `pending_ids`)."""
        return pending_ids(self.records(), point_ids, retry_failed)
