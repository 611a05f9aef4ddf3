"""Damaged run folders (issue 25, item 4): a records.jsonl line that is valid JSON but not a record is
refused like an unparsable one, naming `records.jsonl:N`; a run folder whose run.json its kind cannot
read (a capacity suite_spec without its search) or whose records are damaged is skipped by the run
chooser with a message, so it never blocks the next run of its suite."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from bench.cli import main
from bench.options import RunOptions
from bench.rundir import choose_run_dir
from bench.store import StoreError, read_records

from .conftest import REPO_ROOT

CAPACITY_REF = REPO_ROOT / "results" / "capacity" / "reference-cpu"
GRID_RUN = REPO_ROOT / "results" / "memory" / "reference-cpu"


def _as_own_run(src: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A copy of a real run folder as this host's unfinished run under `root` (its last record dropped)."""
    meta = json.loads((src / "run.json").read_text())
    run_dir = root / "runs" / meta["suite"] / "cpu-cpu-20260101-000000"
    shutil.copytree(src, run_dir)
    meta.pop("reference", None)
    meta["run_id"] = run_dir.name
    (run_dir / "run.json").write_text(json.dumps(meta))
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    (run_dir / "records.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    monkeypatch.setenv("BENCH_HOST_ID", meta["host_id"])
    return run_dir, meta


def _choose(meta: dict, root: Path) -> tuple[Path, str]:
    out = io.StringIO()
    chosen = choose_run_dir(meta["suite"], meta["profile"], meta["device"], RunOptions(results_root=root),
                            Console(file=out, width=400), plan_key=meta.get("plan_key"))
    return chosen, out.getvalue()


@pytest.mark.parametrize("line", ["[1, 2]", '"a string"', "42", "null", '{"no": "point id"}'])
def test_a_json_line_that_is_not_a_record_is_refused_naming_the_file_and_line(tmp_path, line):
    path = tmp_path / "records.jsonl"
    good = json.dumps({"point_id": "p1", "status": "ok"})
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(StoreError, match=r"records\.jsonl:2: not a record"):
        read_records(path)


def test_the_unfinished_run_is_resumed_when_undamaged(tmp_path, monkeypatch):
    """The control: the copied capacity folder is what the chooser continues."""
    run_dir, meta = _as_own_run(CAPACITY_REF, tmp_path, monkeypatch)
    chosen, said = _choose(meta, tmp_path)
    assert chosen == run_dir and "resuming" in said


@pytest.mark.parametrize("damage", ["suite_spec without search", "a record that is a list", "a record that is a string"])
def test_a_damaged_capacity_folder_is_skipped_with_a_message_and_a_new_run_begins(tmp_path, monkeypatch, damage):
    run_dir, meta = _as_own_run(CAPACITY_REF, tmp_path, monkeypatch)
    if damage == "suite_spec without search":
        del meta["suite_spec"]["search"]
        (run_dir / "run.json").write_text(json.dumps(meta))
    else:
        lines = (run_dir / "records.jsonl").read_text().splitlines()
        lines.insert(1, "[1, 2]" if "list" in damage else '"x"')
        (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n")
    chosen, said = _choose(meta, tmp_path)
    assert chosen != run_dir and chosen.parent == run_dir.parent and chosen.is_dir()
    assert "skipping a damaged run folder" in said and str(run_dir) in said
    if "record" in damage:
        assert "records.jsonl:2" in said


def test_a_damaged_grid_folder_is_skipped_and_its_report_names_the_line(tmp_path, monkeypatch, capsys):
    run_dir, meta = _as_own_run(GRID_RUN, tmp_path, monkeypatch)
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    lines.insert(2, '["not", "a", "record"]')
    (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n")
    chosen, said = _choose(meta, tmp_path)
    assert chosen != run_dir and "skipping a damaged run folder" in said and "records.jsonl:3" in said
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "records.jsonl:3: not a record" in err and "Traceback" not in err
