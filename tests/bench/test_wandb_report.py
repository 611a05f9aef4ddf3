"""The W&B Report (wandb-workspaces), offline: built from a committed reference run copied to tmp,
its panels pointing at the history publish logs, deterministic, secret-free; W&B's conventions
(WANDB_DIR, one run id for a live log and a later publish); publish's clear errors."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.publish import LiveLogger, PublishError, RecordingSink, publish_report, publish_run, wandb_run_id
from bench.publish.curves import curve_keys, curve_rows
from bench.publish.frames import LineSeries, study_axes
from bench.publish.report_text import parse_report, read_report_text
from bench.publish.rundata import read_records, read_run_info, wandb_state

pytest.importorskip("wandb_workspaces")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:wandb_workspaces")  # its pydantic v1 validators

REPO = Path(__file__).resolve().parents[2]
NO_PROBE = lambda host: pytest.fail(f"probed {host}")  # noqa: E731


def reference(suite: str) -> Path:
    """The committed CPU reference of `suite`, whatever its folder is called (cpu-cpu, reference-cpu)."""
    found = sorted(p.parent for p in (REPO / "results" / suite).glob("*/run.json")
                   if "cpu" in p.parent.name and (p.parent / "records.jsonl").is_file())
    if not found:
        pytest.skip(f"no committed CPU reference for {suite}")
    return found[0]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("wandb", "wandb_report*.json", "checkpoints"))
    return dst


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """No key, no network, W&B's own files kept in tmp."""
    for var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return tmp_path


def blocks(spec: dict) -> list[dict]:
    return spec["viewspec"]["spec"]["blocks"]


def headings(spec: dict, level: int = 1) -> list[str]:
    return [b["children"][0]["text"] for b in blocks(spec) if b["type"] == "heading" and b["level"] == level]


def markdown(spec: dict) -> str:
    return "\n".join(b["content"] for b in blocks(spec) if b["type"] == "markdown-block")


def study_panels(spec: dict) -> dict[str, list[dict]]:
    """Line plot configs under each `Study <name>` heading."""
    out: dict[str, list[dict]] = {}
    study = None
    for b in blocks(spec):
        if b["type"] == "heading" and b["level"] == 1:
            title = b["children"][0]["text"]
            study = title.removeprefix("Study ") if title.startswith("Study ") else None
        elif b["type"] == "panel-grid" and study:
            out.setdefault(study, []).extend(p["config"] for p in b["metadata"]["panelBankSectionConfig"]["panels"]
                                             if p["viewType"] == "Run History Line Plot")
    return out


def logged_history(run_dir: Path) -> tuple[list[dict], dict[str, str]]:
    """What publish logs as history, and its custom x axes (define_metric)."""
    sink = RecordingSink()
    publish_run(run_dir, sink=sink, secrets=frozenset())
    return [m for _, m in sink.metrics], sink.x_axes


def test_curves_are_one_key_per_line_and_rows_in_increasing_x():
    series = LineSeries(name="memory/vs_seq_len/m_vs_seq_len", title="", xname="seq_len", yname="m",
                        keys=("attention=full, n=1", "attention=full; n=1", "m"), study="vs_seq_len",
                        xs=((512.0, 256.0), (256.0,), (128.0,)), ys=((2.0, 1.0), (3.0,), (4.0,)))
    keys = curve_keys(series)
    assert keys.x == "curves/vs_seq_len/seq_len"
    base = "curves/vs_seq_len/m/"
    assert list(keys.y.values()) == [base + "attention_full_n_1", base + "attention_full_n_1_", base + "all"]
    line = keys.y["attention=full, n=1"]
    assert curve_rows(series)[:2] == [{keys.x: 256.0, line: 1.0}, {keys.x: 512.0, line: 2.0}]


def test_report_text_gives_a_study_its_prose_only():
    text = parse_report("# T\n\nintro\n\n## Environment\n\n| a |\n\n## Study `vs_x`\n\nCaption.\n\n"
                        "| t |\n|---|\n\n![p](p.png)\n\nFinding: flat.\n\n```\n## not a heading\n```\n"
                        "## Study `vs_x2`\n\nOther.\n")
    assert text.title == "T" and text.intro == "intro"
    assert list(text.sections) == ["Environment", "Study `vs_x`", "Study `vs_x2`"]
    assert text.study("vs_x") == "Caption.\n\nFinding: flat." and text.study("vs_x2") == "Other."
    assert text.study("missing") == "" and text.section("environment") == ("Environment", "| a |")


def test_report_of_the_memory_reference_has_a_section_panels_and_text_per_study(tmp_path, offline_env):
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    info, records = read_run_info(run_dir), read_records(run_dir)
    out = publish_report([run_dir], secrets=frozenset(), env={}, log=lambda m: None)
    assert out.url is None and out.spec == run_dir / "wandb_report.json"
    assert out.command == f"python -m bench publish {run_dir} --online --report"
    spec = json.loads(out.spec.read_text())
    studies = list(info.suite_spec["studies"])
    assert [h for h in headings(spec) if h.startswith("Study ")] == [f"Study {s}" for s in studies]
    assert "Environment" in headings(spec) and any("Table 3" in h for h in headings(spec))
    text = read_report_text(run_dir)
    for study in studies:
        assert text.study(study) and text.study(study) in markdown(spec)  # caption and findings
    assert text.section("exponent")[1] in markdown(spec)  # the exponent table with Table 3's predictions

    history, x_axes = logged_history(run_dir)
    panels = study_panels(spec)
    for study, axes in study_axes(info.suite_spec).items():
        plots = panels[study]
        hinted = info.suite_spec["studies"][study]["plot"]
        # on CPU the hinted peak_alloc_mib has no data: our report plots rss_delta_mib in its place
        wanted = {"rss_delta_mib" if m == "peak_alloc_mib" else m for m in hinted["y"]}
        assert {c["metrics"][0].split("/")[2] for c in plots} == wanted
        for c in plots:
            assert c["xAxis"] == f"curves/{study}/{hinted['x']}"
            assert c.get("xLogScale", False) == hinted.get("logx", hinted["x"] in ("seq_len", "batch_size"))
            assert c.get("yLogScale", False) == hinted.get("logy", hinted["x"] in ("seq_len", "batch_size"))
            assert x_axes[f"curves/{study}/*"] == c["xAxis"]  # W&B's own panels plot them against x too
            for y in c["metrics"]:  # every line is in the history publish logs, beside its x
                rows = [row for row in history if y in row]
                assert rows and all(c["xAxis"] in row for row in rows)
        # one line per hue x style combination of the study's ok points
        ok = [r for r in records if r["status"] == "ok" and study in r["studies"]]
        hue = list(axes.hue)  # the hint's hue/style/col/row (panels become lines), else the other grid axes
        combos = {tuple(r["params"].get(h) for h in hue) for r in ok}
        assert all(len(c["metrics"]) == len(combos) for c in plots)
    run_sets = [b["metadata"]["runSets"] for b in blocks(spec) if b["type"] == "panel-grid"]
    filters = run_sets[0][0]["filters"]["filters"]
    assert [(f["key"]["name"], f["value"]) for f in filters] == [
        ("group", "memory"), ("displayName", [f"memory-{info.run_id}"])]


def test_spec_is_the_same_for_the_same_records(tmp_path, offline_env):
    a = copy_run(reference("memory"), tmp_path / "a" / "memory" / "ref")
    b = copy_run(reference("memory"), tmp_path / "b" / "memory" / "ref")
    specs = []
    for run_dir in (a, a, b):
        out = publish_report([run_dir], secrets=frozenset(), env={}, log=lambda m: None)
        specs.append(json.loads(out.spec.read_text()))
    assert specs[0] == specs[1]
    assert specs[0]["viewspec"] == specs[2]["viewspec"]  # only the command names another folder


def test_gathered_report_puts_runs_side_by_side(tmp_path, offline_env):
    runs = []
    for run_id in ("ref-a", "ref-b"):
        run_dir = copy_run(reference("memory"), tmp_path / "memory" / run_id)
        meta = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**meta, "run_id": run_id}))
        runs.append(run_dir)
    out = publish_report(runs, secrets=frozenset(), env={}, log=lambda m: None)
    assert out.spec == tmp_path / "memory" / "wandb_report-ref-a+ref-b.json"
    spec = json.loads(out.spec.read_text())
    assert spec["viewspec"]["displayName"] == "reformer-bench memory: ref-a vs ref-b"
    panel_grid = next(b for b in blocks(spec) if b["type"] == "panel-grid")
    names = panel_grid["metadata"]["runSets"][0]["filters"]["filters"][1]["value"]
    assert names == ["memory-ref-a", "memory-ref-b"]
    titles = panel_grid["metadata"]["panelBankSectionConfig"]["panels"][0]["config"]["overrideSeriesTitles"]
    ids = {wandb_run_id(read_run_info(r), r) for r in runs}
    assert {t.split(":")[0] for t in titles} == ids and len(ids) == 2


def test_duplication_report_has_table2(tmp_path, offline_env):
    run_dir = copy_run(reference("duplication"), tmp_path / "duplication" / "ref")
    spec = json.loads(publish_report([run_dir], secrets=frozenset(), env={}, log=lambda m: None).spec.read_text())
    assert any(h.startswith("Table 2") for h in headings(spec))
    section = read_report_text(run_dir).section("trained", "evaluated")
    assert section and section[1] in markdown(spec)
    assert "![" not in markdown(spec)  # report.md's images are files the W&B Report cannot see
    panels = [p for b in blocks(spec) if b["type"] == "panel-grid"
              for p in b["metadata"]["panelBankSectionConfig"]["panels"]]
    assert any("duplication/accuracy_matrix" in json.dumps(p) for p in panels)


def test_report_spec_carries_no_secret(tmp_path, offline_env, monkeypatch, planted_secrets):
    env_key, netrc_key = planted_secrets
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["environment"].update(wandb_api_key="anything-secret", cmd=f"run --key {env_key}")
    (run_dir / "run.json").write_text(json.dumps(meta))
    with (run_dir / "report.md").open("a") as f:
        f.write(f"\n## Study `vs_seq_len` notes\n\nlogged in with {netrc_key} and {env_key}\n")
    out = publish_report([run_dir], create=True, log=lambda m: None)  # secrets from env and netrc
    text = out.spec.read_text()
    for secret in (env_key, netrc_key):
        assert secret not in text
    assert out.url is None


def test_online_report_is_saved_and_its_url_recorded(tmp_path, offline_env, monkeypatch):
    """The online branch up to the upload, which is W&B's own (`Report.save`)."""
    from bench.publish import wandb_report

    saved = []

    def fake_save(report, report_id=None):
        saved.append((report, report_id))
        return f"https://wandb.ai/me/reformer-bench/reports/x--{len(saved)}"

    monkeypatch.setattr(wandb_report, "save_report", fake_save)
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    env = {"WANDB_API_KEY": "k" * 40, "WANDB_ENTITY": "me", "WANDB_PROJECT": "proj"}
    out = publish_report([run_dir], create=True, online=True, env=env, secrets=frozenset(), log=lambda m: None)
    [(report, report_id)] = saved
    assert (report.entity, report.project, report_id) == ("me", "proj", None)
    assert all(rs.entity == "me" and rs.project == "proj" for b in report.blocks for rs in getattr(b, "runsets", []))
    assert out.url == "https://wandb.ai/me/reformer-bench/reports/x--1"
    assert wandb_state(run_dir)["report_url"] == out.url


def test_online_failure_keeps_the_spec_and_says_how_to_retry(tmp_path, offline_env, monkeypatch):
    from bench.publish import wandb_report

    def refused(report, report_id=None):
        raise ConnectionError("upstream\nrefused")

    monkeypatch.setattr(wandb_report, "save_report", refused)
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    env = {"WANDB_API_KEY": "k" * 40, "WANDB_ENTITY": "me"}
    with pytest.raises(PublishError, match=r"ConnectionError: upstream refused\).*retry with: python -m bench"):
        publish_report([run_dir], create=True, online=True, env=env, secrets=frozenset(), log=lambda m: None)
    assert (run_dir / "wandb_report.json").is_file() and "report_url" not in wandb_state(run_dir)


# ---- W&B conventions ----------------------------------------------------------------------------

def test_live_log_then_publish_is_one_run_continued(tmp_path):
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    records = read_records(run_dir)
    live_sink, later_sink = RecordingSink(), RecordingSink()
    live = LiveLogger(run_dir, sink=live_sink, secrets=frozenset())
    for r in records:
        live.log_record(r)
    live.finish()
    publish_run(run_dir, sink=later_sink, secrets=frozenset())
    [first], [second] = live_sink.inits, later_sink.inits
    assert first.run_id and first.run_id == second.run_id == wandb_state(run_dir)["run_id"]
    assert second.start_step == live_sink.next_step  # logged after the live steps, none overwritten
    curves = lambda sink: [m for _, m in sink.metrics if any(k.startswith("curves/") for k in m)]  # noqa: E731
    assert curves(live_sink) and not curves(later_sink)  # the same lines are not drawn twice


def test_real_offline_live_log_then_publish_share_one_run_id_under_wandb_dir(tmp_path, offline_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    live = LiveLogger(run_dir)  # what `bench run --wandb` makes
    for r in read_records(run_dir)[:3]:
        live.log_record(r)
    live.finish()
    assert main(["publish", str(run_dir)]) == 0
    offline = sorted((tmp_path / "wandb-home" / "wandb").glob("offline-run-*"))
    run_id = wandb_state(run_dir)["run_id"]
    # offline-run-<time>-<id>; W&B adds -1 to the second folder when both began within one second
    named = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?")
    assert len(offline) == 2 and all(named.fullmatch(p.name) for p in offline), [p.name for p in offline]
    assert not (run_dir / "wandb").exists()  # WANDB_DIR set: nothing of W&B's in the run folder
    assert (run_dir / "wandb_report.json").is_file()


def test_cli_publish_offline_prints_where_and_how_to_create_the_report(tmp_path, offline_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    assert main(["publish", str(run_dir), "--report"]) == 0
    out = capsys.readouterr().out
    assert f"W&B report spec written to {run_dir / 'wandb_report.json'}" in out
    assert f"python -m bench publish {run_dir} --online --report" in out
    assert list((run_dir / "wandb").glob("offline-run-*"))  # WANDB_DIR unset: beside the results
    assert "report_url" not in wandb_state(run_dir)


# ---- clear errors ------------------------------------------------------------------------------

def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_publish_without_records_is_a_clear_error(tmp_path, offline_env, capsys):
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    (run_dir / "records.jsonl").unlink()
    assert main(["publish", str(run_dir), "--offline"]) == 2
    assert "records.jsonl" in _error(capsys)


def test_publish_with_a_garbage_line_is_a_clear_error(tmp_path, offline_env, capsys):
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    (run_dir / "records.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    assert main(["publish", str(run_dir), "--offline"]) == 2
    assert "records.jsonl:2" in _error(capsys)


@pytest.mark.parametrize("missing", ["wandb", "wandb_workspaces"])
def test_publish_without_the_wandb_extra_says_what_to_install(tmp_path, offline_env, monkeypatch, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # the import fails as if not installed
    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    assert main(["publish", str(run_dir), "--offline", "--report"]) == 2
    err = _error(capsys)
    assert missing in err and "pip install -e '.[wandb]'" in err
    with pytest.raises(PublishError):
        publish_report([run_dir], create=True, secrets=frozenset(), env={})


def test_report_opens_with_the_findings_of_report_md(tmp_path, offline_env):
    from bench.report import write_report

    run_dir = copy_run(reference("memory"), tmp_path / "memory" / "ref")
    write_report(run_dir)  # the findings block is the regenerated report's
    spec = json.loads(publish_report([run_dir], secrets=frozenset(), env={}, log=lambda m: None).spec.read_text())
    assert headings(spec)[:2] == ["Findings", "Environment"]
    body = read_report_text(run_dir).section("findings")[1]
    first = next(line for line in body.splitlines() if line.startswith("- "))
    sentence = first[: first.rindex(" ([")]
    assert sentence in markdown(spec) and "](plots/" not in markdown(spec).split("Environment")[0]
    assert "Crossover lengths" in headings(spec)
