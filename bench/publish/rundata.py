"""Reading one run back from disk: `run.json` and `records.jsonl`, the only inputs publishing uses."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]
WANDB_KEY = "wandb"  # run.json's block of what publishing left: W&B run id, next step, report URL


@dataclass(frozen=True)
class RunInfo:
    """What `run.json` says about a suite run (the record contract: docs/runs.md#the-record)."""

    suite: str
    run_id: str
    profile: str | None = None
    device: str | None = None
    created_at: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    suite_spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any], source: Path | str = "run.json") -> "RunInfo":
        for key in ("suite", "run_id"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ValueError(f"{source}: field {key!r} must be a non-empty string, got {d.get(key)!r}")
        for key in ("environment", "suite_spec"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ValueError(f"{source}: field {key!r} must be an object, got {type(d[key]).__name__}")
        return cls(
            suite=d["suite"],
            run_id=d["run_id"],
            profile=d.get("profile"),
            device=d.get("device"),
            created_at=d.get("created_at"),
            environment=dict(d.get("environment") or {}),
            suite_spec=dict(d.get("suite_spec") or {}),
        )

    @classmethod
    def from_record(cls, record: Record, run_dir: Path) -> "RunInfo":
        """A fallback when `run.json` is not written yet: names from the first record or the path."""
        point = record.get("point") or {}
        return cls(
            suite=str(record.get("suite") or run_dir.parent.name),
            run_id=str(record.get("run_id") or run_dir.name),
            device=point.get("device") or (record.get("params") or {}).get("device"),
        )

    @property
    def device_name(self) -> str | None:
        return self.environment.get("device_name") or self.device or self.environment.get("device")

    @property
    def git_commit(self) -> str | None:
        return self.environment.get("git_commit")


def read_run_info(run_dir: Path) -> RunInfo:
    """Parse `run_dir/run.json`; a missing or malformed file is an error naming the path."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run.json; is {run_dir} a run directory (results/<suite>/<run_id>)?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return RunInfo.from_json(data, path)


def read_records(run_dir: Path) -> list[Record]:
    """Every record in `run_dir/records.jsonl`, in file order.

    A torn last line (a run killed mid-write) is skipped with a warning; a bad line elsewhere is an
    error, since the file is append-only and that means it was damaged.
    """
    path = Path(run_dir) / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no records.jsonl in {run_dir}")
    lines = path.read_text().splitlines()
    records: list[Record] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                warnings.warn(f"{path}:{i}: skipping a torn last line ({e})", stacklevel=2)
                continue
            raise ValueError(f"{path}:{i}: not valid JSON ({e})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    return records


def find_plots(run_dir: Path) -> dict[str, Path]:
    """The report's PNGs as {"plots/<name>": path}: `plots/**/*.png`, plus PNGs at the top of the
    run directory (the duplication report writes `table2_heatmap.png` there)."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    found = {f"plots/{p.stem}": p for p in sorted(run_dir.glob("*.png"))}
    if plots.is_dir():
        found.update({f"plots/{p.relative_to(plots).with_suffix('').as_posix()}": p for p in sorted(plots.rglob("*.png"))})
    return found


def _run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def wandb_state(run_dir: Path) -> dict[str, Any]:
    """run.json's `wandb` block ({} when absent): how an earlier publish or live log left W&B."""
    state = _run_json(run_dir).get(WANDB_KEY)
    return dict(state) if isinstance(state, dict) else {}


def update_wandb_state(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into run.json's `wandb` block, atomically; every other key is left as it was.

    run.json is otherwise written once, by the store, before the first point: this runs after a
    run (or its live logger) has finished, so it races with no writer.
    """
    path = Path(run_dir) / "run.json"
    data = _run_json(run_dir)
    if not data:
        return {}
    state = {**wandb_state(run_dir), **fields}
    data[WANDB_KEY] = state
    tmp = path.with_suffix(".json.wandb-tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return state
