"""Which run folder a command writes to (a new run, this host's unfinished one, never another host's
run or a reference), one writer per folder, and the store's failures as clear errors (exit 2, or 1
when only the report failed), all through `python -m bench`'s main() with a fake executor."""
from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import bench.lifecycle as lifecycle
import bench.options as options
import bench.plans.grid as grid_plan
import bench.store as store_mod
from bench.cli import main
from bench.store import make_record, read_records

from .conftest import REPO_ROOT, small_suite

REAL_WRITE_REPORT = lifecycle.write_report


class FakeExecutor:
    """Measures nothing: an ok record per point; stops (KeyboardInterrupt) after `stop_after` points."""

    def __init__(self, stop_after: int | None = None):
        self.seen: list[str] = []
        self.stop_after = stop_after

    def run(self, points):
        for p in points:
            if self.stop_after is not None and len(self.seen) >= self.stop_after:
                raise KeyboardInterrupt
            self.seen.append(p.point_id)
            yield make_record(p, "ok", metrics={"fwd_ms_median": 1.0, "peak_rss_mib": 10.0})


@pytest.fixture
def bench_cli(monkeypatch, write_suite, tmp_path, capsys):
    """`bench(*args, host=..., executor=...)`: main(["run", <4-point suite>, ...]) on a results root
    under tmp_path, as host `host` (injected through $BENCH_HOST_ID); returns (exit code, out, err,
    executor). Reports are not written; run folders are under `bench.runs`."""
    suite = write_suite(small_suite())
    root = tmp_path / "results"
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    monkeypatch.setattr(lifecycle, "write_report", lambda run_dir, console, module="bench.report": None)

    def bench(*args: str, host: str = "host-a", executor: FakeExecutor | None = None, suite_path=suite):
        fake = executor or FakeExecutor()
        monkeypatch.setattr(grid_plan, "make_executor", lambda *a, **k: fake)
        monkeypatch.setenv("BENCH_HOST_ID", host)
        try:
            code = main(["run", str(suite_path), "--results-root", str(root), *args])
        except KeyboardInterrupt:
            code = 130
        out, err = capsys.readouterr()
        return code, out, err, fake

    bench.root = root
    bench.runs = root / "runs" / "small"
    bench.suite = suite
    return bench


def run_dirs(bench) -> list[Path]:
    return sorted(p for p in bench.runs.iterdir() if p.is_dir()) if bench.runs.exists() else []


def interrupted_run(bench, host: str = "host-a") -> Path:
    """A run stopped after 2 of its 5 points."""
    code, *_ = bench(host=host, executor=FakeExecutor(stop_after=2))
    assert code == 130
    (run_dir,) = [d for d in run_dirs(bench) if len(read_records(d / "records.jsonl")) == 2]
    return run_dir


# ---------------------------------------------------------------- new run or continue
def test_every_command_makes_a_new_run_once_the_last_one_finished(bench_cli):
    code, out, _, first = bench_cli()
    assert code == 0 and len(first.seen) == 5
    code, out, _, second = bench_cli()
    assert code == 0 and len(second.seen) == 5  # measured again: a finished run is never resumed
    a, b = run_dirs(bench_cli)
    assert f"new run {b}" in out and "resuming" not in out
    assert len(read_records(a / "records.jsonl")) == 5 == len(read_records(b / "records.jsonl"))


def test_an_unfinished_run_of_this_host_is_continued_and_says_so(bench_cli):
    run_dir = interrupted_run(bench_cli)
    code, out, _, fake = bench_cli()
    assert code == 0 and len(fake.seen) == 3
    assert f"resuming {run_dir}: 2 of 5 points done (--fresh starts anew)" in out
    assert run_dirs(bench_cli) == [run_dir]
    assert len({r["point_id"] for r in read_records(run_dir / "records.jsonl")}) == 5


def test_fresh_starts_anew_even_with_an_unfinished_run(bench_cli):
    run_dir = interrupted_run(bench_cli)
    code, out, _, fake = bench_cli("--fresh")
    assert code == 0 and len(fake.seen) == 5 and "resuming" not in out
    assert len(run_dirs(bench_cli)) == 2 and len(read_records(run_dir / "records.jsonl")) == 2


def test_another_hosts_unfinished_run_is_never_resumed(bench_cli):
    theirs = interrupted_run(bench_cli, host="host-a")
    code, out, _, fake = bench_cli(host="host-b")
    assert code == 0 and len(fake.seen) == 5
    assert f"unfinished run {theirs} left alone: it began on another host" in out
    assert len(read_records(theirs / "records.jsonl")) == 2  # untouched
    code, _, err, fake = bench_cli("--run-id", theirs.name, host="host-b")
    assert code == 2 and fake.seen == []
    assert "host id host-a" in err and "host id host-b" in err and "Traceback" not in err
    assert json.loads((theirs / "run.json").read_text())["host_id"] == "host-a"


def test_an_unfinished_run_of_another_plan_is_left_alone(bench_cli, write_suite):
    run_dir = interrupted_run(bench_cli)
    spec = small_suite()
    spec["studies"]["hashes"]["grid"]["n_hashes"] = [1, 2, 4]
    code, out, _, fake = bench_cli(suite_path=write_suite(spec, "changed.yaml"))
    assert code == 0 and len(fake.seen) == 6
    assert f"unfinished run {run_dir} left alone: it began with another version of the suite" in out


def test_a_run_in_progress_is_not_joined(bench_cli):
    run_dir = interrupted_run(bench_cli)
    with store_mod.RunLock(run_dir):
        code, out, _, fake = bench_cli()
    assert code == 0 and len(fake.seen) == 5 and f"unfinished run {run_dir} left alone: it is in progress" in out


def test_a_second_writer_is_refused_naming_the_holder(bench_cli):
    """Two commands on one run folder at once: the second is refused (it used to measure every point
    again and write each one twice)."""
    started, release = threading.Event(), threading.Event()

    class Blocking(FakeExecutor):
        def run(self, points):
            started.set()
            release.wait(30)
            yield from super().run(points)

    results = {}
    first = threading.Thread(target=lambda: results.update(first=bench_cli("--run-id", "shared", executor=Blocking())))
    first.start()
    try:
        assert started.wait(30)
        code, _, err, fake = bench_cli("--run-id", "shared")
    finally:
        release.set()
        first.join(30)
    assert code == 2 and fake.seen == []
    assert f"in use by pid {os.getpid()} on host {platform.node()}" in err and "Traceback" not in err
    records = read_records(bench_cli.runs / "shared" / "records.jsonl")
    assert results["first"][0] == 0 and len(records) == len({r["point_id"] for r in records}) == 5


def test_naming_a_finished_run_measures_nothing_and_says_so(bench_cli):
    bench_cli()
    (run_dir,) = run_dirs(bench_cli)
    code, out, _, fake = bench_cli("--run-id", run_dir.name)
    assert code == 0 and fake.seen == [] and "NOTHING MEASURED" in out


# ---------------------------------------------------------------- references
def test_references_are_never_resumed_or_written_by_a_run(bench_cli):
    unfinished = interrupted_run(bench_cli)
    ref = bench_cli.root / "small" / "reference-cpu"
    shutil.copytree(unfinished, ref)  # an unfinished reference: tempting, and still never resumed
    before = {p.name: p.read_bytes() for p in ref.iterdir()}
    shutil.rmtree(unfinished)
    code, out, _, fake = bench_cli()
    assert code == 0 and len(fake.seen) == 5 and "resuming" not in out
    assert {p.name: p.read_bytes() for p in ref.iterdir()} == before
    code, _, err, _ = bench_cli("--run-id", "reference-cpu")
    assert code == 2 and "kept for references" in err


def test_a_reference_is_made_from_a_finished_run_only(bench_cli, monkeypatch, capsys):
    import bench.report

    reports = []
    monkeypatch.setattr(bench.report, "write_report", lambda d: reports.append(d) or d / "report.md")
    unfinished = interrupted_run(bench_cli)
    root = str(bench_cli.root)
    assert main(["reference", str(unfinished), "--results-root", root]) == 2
    assert "only a finished run becomes a reference (2 of 5 points done)" in capsys.readouterr().err
    bench_cli()  # continues the unfinished run to its end
    (finished,) = run_dirs(bench_cli)
    (finished / "notes.txt").write_text(f"built in {REPO_ROOT}/bench by {Path.home()}/x\n")
    assert main(["reference", str(finished), "--results-root", root]) == 0
    ref = bench_cli.root / "small" / "reference-cpu"
    assert reports == [ref] and read_records(ref / "records.jsonl") == read_records(finished / "records.jsonl")
    meta = json.loads((ref / "run.json").read_text())
    assert meta["reference"]["promoted_from"] == f"runs/small/{finished.name}" and not (ref / ".lock").exists()
    assert (ref / "notes.txt").read_text() == "built in bench by ~/x\n"  # no folder of this machine
    assert main(["reference", str(finished), "--results-root", root]) == 2
    assert "add --replace" in capsys.readouterr().err
    assert main(["reference", str(finished), "--results-root", root, "--replace"]) == 0
    # Its report is rewritten only when asked for by name.
    assert main(["report", str(ref)]) == 2 and "--update-reference" in capsys.readouterr().err
    assert main(["report", str(ref), "--update-reference"]) == 0 and reports[-1] == ref


def test_a_run_is_compared_with_the_reference_of_its_suite_and_profile(bench_cli, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.SimpleNamespace(
        compare_runs=lambda a, b: calls.append((a, b)) or "cmp",
        write_comparison=lambda cmp, out: out.write_text(cmp) or out,
        print_comparison=lambda cmp, console: console.print("compared!"))
    monkeypatch.setitem(sys.modules, "bench.compare", fake)
    code, out, *_ = bench_cli()
    assert code == 0 and calls == [] and "no reference" in out
    (first,) = run_dirs(bench_cli)
    shutil.copytree(first, bench_cli.root / "small" / "reference-cpu")
    code, out, *_ = bench_cli()
    second = next(d for d in run_dirs(bench_cli) if d != first)
    assert code == 0 and calls == [(bench_cli.root / "small" / "reference-cpu", second)] and "compared!" in out
    assert (second / "comparison.md").read_text() == "cmp"


# ---------------------------------------------------------------- refused before anything is measured
@pytest.mark.parametrize("run_id", ["../../escape", "..", ".", "a/b"])
def test_run_ids_with_path_components_are_refused(bench_cli, tmp_path, run_id):
    code, _, err, fake = bench_cli("--run-id", run_id)
    assert code == 2 and fake.seen == [] and "--run-id=" in err and "Traceback" not in err
    assert not (tmp_path / "escape").exists() and not (bench_cli.root / "escape").exists()


def test_the_gpu_profile_without_cuda_needs_an_explicit_cpu_device(bench_cli):
    code, _, err, fake = bench_cli("--profile", "gpu")
    assert code == 2 and fake.seen == [] and "--profile gpu: CUDA is not available" in err
    code, _, _, fake = bench_cli("--profile", "gpu", "--device", "cpu")
    (run_dir,) = run_dirs(bench_cli)
    assert code == 0 and fake.seen and json.loads((run_dir / "run.json").read_text())["profile"] == "gpu"


def test_a_results_root_that_is_a_file_is_refused(bench_cli, tmp_path):
    bench_cli.root.write_text("not a folder")
    code, _, err, fake = bench_cli()
    assert code == 2 and fake.seen == [] and "is a file, not a folder" in err and "Traceback" not in err


def deny(monkeypatch, path: Path) -> None:
    """Make `path` unwritable: chmod for a normal user, and (as root, whom chmod does not stop) an
    EACCES from every mkdir or write-mode open under it."""
    path.chmod(0o555 if path.is_dir() else 0o444)

    def refused(p) -> bool:
        return Path(p).resolve().is_relative_to(path.resolve())

    if os.geteuid() == 0:
        real_mkdir, real_open = os.mkdir, open

        def mkdir(p, *a, **k):
            if refused(p):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return real_mkdir(p, *a, **k)

        def opener(p, mode="r", *a, **k):
            if refused(p) and any(c in mode for c in "wax+"):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return real_open(p, mode, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(store_mod, "open", opener, raising=False)


def test_an_unwritable_results_root_is_refused(bench_cli, monkeypatch):
    bench_cli.root.mkdir()
    deny(monkeypatch, bench_cli.root)
    try:
        code, _, err, fake = bench_cli()
    finally:
        bench_cli.root.chmod(0o755)
    assert code == 2 and fake.seen == [] and "Permission denied" in err and "Traceback" not in err


def test_a_run_folder_that_cannot_take_records_is_refused_before_measuring(bench_cli, monkeypatch):
    run_dir = interrupted_run(bench_cli)
    deny(monkeypatch, run_dir / "records.jsonl")
    code, _, err, fake = bench_cli()
    (run_dir / "records.jsonl").chmod(0o644)
    assert code == 2 and fake.seen == []  # nothing measured only to be lost
    assert "not writable" in err and "nothing was measured" in err and "Traceback" not in err
    assert len(read_records(run_dir / "records.jsonl")) == 2


def test_a_full_disk_while_appending_is_a_clear_error_and_the_records_are_kept(bench_cli, monkeypatch):
    run_dir = interrupted_run(bench_cli)
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k))
                        if Path(p).name == "records.jsonl" and "a" in mode else real_open(p, mode, *a, **k),
                        raising=False)
    code, _, err, fake = bench_cli()
    assert code == 2 and len(fake.seen) == 1  # the first point's record hit the full disk
    assert "the disk is full" in err and "Traceback" not in err
    monkeypatch.setattr(store_mod, "open", real_open, raising=False)
    assert len(read_records(run_dir / "records.jsonl")) == 2  # kept
    code, out, _, fake = bench_cli()  # space freed: the same command continues
    assert code == 0 and len(fake.seen) == 3 and f"resuming {run_dir}: 2 of 5" in out


def test_a_corrupt_run_json_is_a_clear_error_for_run_and_report(bench_cli, capsys):
    run_dir = interrupted_run(bench_cli)
    (run_dir / "run.json").write_text('{"suite": "small", "prof')
    code, _, err, fake = bench_cli("--run-id", run_dir.name)
    assert code == 2 and fake.seen == [] and "run.json: cannot be read as JSON" in err and "Traceback" not in err
    code, out, _, fake = bench_cli()  # a default run leaves the damaged folder alone and measures
    assert code == 0 and len(fake.seen) == 5 and "skipping a damaged run folder" in out
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "run.json: cannot be read as JSON" in err and "Traceback" not in err


def test_a_report_that_cannot_be_written_fails_the_command_and_keeps_the_records(bench_cli, monkeypatch):
    import bench.report

    def broken(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lifecycle, "write_report", REAL_WRITE_REPORT)  # the runner's own, with a broken report module
    monkeypatch.setattr(bench.report, "write_report", broken)
    code, out, err, fake = bench_cli()
    assert code == 1 and len(fake.seen) == 5
    assert "the report was not (OSError" in err and "python -m bench report" in err and "Traceback" not in err
    (run_dir,) = run_dirs(bench_cli)
    assert len(read_records(run_dir / "records.jsonl")) == 5


# ---------------------------------------------------------------- identity of a host, paths of a checkout
def test_the_host_id_is_stable_and_tells_cloned_hosts_apart(monkeypatch):
    from bench.environment import host_id

    monkeypatch.delenv("BENCH_HOST_ID", raising=False)
    here = host_id()
    assert here == host_id() and re.fullmatch(r"[0-9a-f]{16}", here)
    monkeypatch.setattr(platform, "node", lambda: "another-host")  # same machine id (one image), another host
    assert host_id() != here
    monkeypatch.setenv("BENCH_HOST_ID", "my-box")
    assert host_id() == "my-box"


# Absolute paths: a '/' at the start of a word, followed by at least two components.
ABSOLUTE = re.compile(r"(?<![\w.~/-])/[\w.-]+/[\w./-]+")
TEXT = {".json", ".jsonl", ".md", ".csv", ".txt", ".yaml", ".yml"}


def committed_results() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "results"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True, timeout=30).stdout
        files = [REPO_ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in (REPO_ROOT / "results").rglob("*") if "runs" not in p.relative_to(REPO_ROOT).parts]
    return [p for p in files if p.suffix in TEXT and p.is_file()]


def test_no_committed_result_holds_an_absolute_path():
    files = committed_results()
    assert files, "no committed results found"
    offending = []
    for path in files:
        text = path.read_text(errors="replace")
        for found in ABSOLUTE.findall(text):
            top = Path("/" + found.strip("/").split("/")[0])
            if top.exists() or str(REPO_ROOT) in found or found.startswith(("/home/", "/Users/", "/work/")):
                offending.append(f"{path.relative_to(REPO_ROOT)}: {found}")
        if str(REPO_ROOT) in text:
            offending.append(f"{path.relative_to(REPO_ROOT)}: {REPO_ROOT}")
    assert not offending, "\n".join(offending)


def test_references_are_named_reference_and_runs_are_ignored():
    tops = {p.parent.name for p in committed_results() if p.name == "run.json"}
    assert tops and all(name.startswith("reference-") for name in tops), tops
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/runs/memory/x/records.jsonl"], cwd=REPO_ROOT)
    assert ignored.returncode == 0
