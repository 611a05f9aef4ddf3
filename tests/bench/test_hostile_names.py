"""Hostile study, model and configuration names write nothing outside the results root in any command
(issue 25): `run` refuses them in one line naming the field; `report`, `publish` (W&B offline) and
`compare` on run folders whose run.json and records carry them (edited, or left by an older harness)
either sanitise the names they build files from or refuse naming the field. Each command runs as a
subprocess (one per command, every case in it) with its cwd in the tmp tree, and the test walks every
file under the tmp tree's parent before and after it, plus the absolute targets the names aim at."""
from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO_ROOT, small_suite
from .test_hostile_suites import shipped
from .test_quality_suite import TINY

TOKEN = secrets.token_hex(4)
ESCAPE = Path("/tmp") / f"pwned-{TOKEN}"  # where a name of many `../` lands from any depth
DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from bench.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except BaseException as exc:  # a crash is a result here: the test reports it
                code, _ = 99, err.write(f"CRASH {type(exc).__name__}: {exc}")
        results.append({"argv": argv, "code": code, "err": err.getvalue()})
    print("RESULTS " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("hostile-names")
    here = top / "a" / "b"
    paths = {"top": top, "root": here / "results", "cwd": here / "cwd", "wandb": here / "wandb",
             "suites": here / "suites", "abs": top / "pwned-abs"}
    for key in ("cwd", "wandb", "suites"):
        paths[key].mkdir(parents=True)
    return paths


def hostile(tree: dict[str, Path]) -> list[str]:
    """Relative escapes, an absolute path, markup and a folder, the parent folder itself."""
    return ["../" * 16 + str(ESCAPE).lstrip("/"), str(tree["abs"] / "x"), "a[b]/c", "..", "x/../../y"]


def snapshot(where: Path) -> dict[Path, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(where):
        for name in files:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def command(tree: dict[str, Path], cases: list[list[str]]) -> list[dict[str, Any]]:
    """Run `python -m bench` argv lists in one subprocess; assert that every file it created or
    changed lies in the results root or the W&B folder, and that nothing reached the escapes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_"))}
    wandb = tree["wandb"]
    env.update(PYTHONPATH=str(REPO_ROOT), WANDB_MODE="offline", WANDB_DIR=str(wandb),
               WANDB_CONFIG_DIR=str(wandb / "config"), WANDB_CACHE_DIR=str(wandb / "cache"),
               WANDB_DATA_DIR=str(wandb / "data"), WANDB_ARTIFACT_DIR=str(wandb / "artifacts"),
               WANDB_SILENT="true", OMP_NUM_THREADS="1")
    watched = tree["top"].parent
    before = snapshot(watched)
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=tree["cwd"], env=env,
                          capture_output=True, text=True, timeout=300)
    after = snapshot(watched)
    written = sorted(p for p, stat in after.items() if before.get(p) != stat)
    outside = [p for p in written if not any(p.is_relative_to(tree[k]) for k in ("root", "wandb"))]
    assert outside == [], f"written outside the results root: {outside}"
    assert not ESCAPE.exists() and not tree["abs"].exists()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    return json.loads(line.removeprefix("RESULTS "))


def refused(result: dict[str, Any], *needles: str) -> None:
    """Exit 2 with one `error:` line that names the field (and no traceback)."""
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    assert all(n in lines[0] for n in needles) and "Traceback" not in result["err"], (needles, result)


# ---- run: every kind refuses a hostile name, naming the field, before writing anything ---------------

def _rename_key(mapping: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {new if k == old else k: v for k, v in mapping.items()}


def hostile_suites(name: str) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """(suite, what its error line must name) for one hostile name in each place a suite takes one."""
    quality, capacity, duplication = copy.deepcopy(TINY), shipped("capacity"), shipped("duplication")
    out: dict[str, tuple[dict[str, Any], list[str]]] = {
        "grid suite name": ({**small_suite(), "name": name}, ["name"]),
        "grid study name": ({**small_suite(), "studies": _rename_key(small_suite()["studies"], "kinds", name)},
                            ["studies", "study name"]),
        "quality suite name": ({**quality, "name": name}, ["name"]),
        "quality study name": ({**quality, "studies": _rename_key(quality["studies"], "control", name)},
                               ["studies", "study name"]),
        "quality model name": ({**quality, "models": _rename_key(quality["models"], "lsh-1", name)}, ["models"]),
        "quality eval setting name": ({**quality, "eval_settings": _rename_key(quality["eval_settings"], "lsh-8", name)},
                                      ["eval_settings"]),
        "capacity suite name": ({**capacity, "name": name}, ["name"]),
        "capacity config name": ({**capacity, "configs": [{**capacity["configs"][0], "name": name},
                                                          *capacity["configs"][1:]]}, ["configs.0.name"]),
        "duplication suite name": ({**duplication, "name": name}, ["name"]),
    }
    if "/" in name or "[" in name:  # a duplication model may be called '..': its files are `dup-train-..`
        out["duplication model name"] = (
            {**duplication, "train_models": [{**duplication["train_models"][0], "name": name},
                                             *duplication["train_models"][1:]]}, ["train_models.0.name"])
    return out


def test_run_refuses_every_hostile_name_naming_the_field(tree):
    cases, expected = [], []
    for i, name in enumerate(hostile(tree)):
        for what, (spec, needles) in hostile_suites(name).items():
            path = tree["suites"] / f"{what.replace(' ', '_')}_{i}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            cases.append(["run", str(path), "--profile", "cpu", "--device", "cpu", "--results-root", str(tree["root"])])
            expected.append((what, name, [str(path), *needles]))
        cases.append(["run", "tiny", "--profile", "cpu", "--results-root", str(tree["root"]), "--run-id", name])
        expected.append(("--run-id", name, ["--run-id="]))
    for result, (what, name, needles) in zip(command(tree, cases), expected):
        refused(result, *needles)
    assert not tree["root"].exists()  # refused before a run folder was made


# ---- report, publish, compare: run folders that carry hostile names ---------------------------------

RENAMED = {  # per kind, names of the committed CPU reference renamed to the hostile ones (exact JSON strings)
    "memory": ["vs_seq_len", "vs_layers", "vs_ff_chunks", "vs_n_hashes", "model_vs_seq_len"],
    "capacity": ["full reversible=false", "full reversible=true", "sdpa reversible=false", "sdpa reversible=true",
                 "reformer ff_chunks=8"],
    "quality": ["full-separate-qk", "full-standard-residual", "full-not-reversible"],
    "duplication": ["lsh-4", "lsh-2", "lsh-1", "lsh-8"],
}
# study names that are also model settings (`shared_qk`, `reversible`): renamed where they name a study
# only (suite_spec.studies and study_seeds, each record's studies), with the hostile names left over
STUDIES_RENAMED = {"quality": ["shared_qk", "reversible"]}


def _rename_studies(meta: dict[str, Any], records: str, renames: dict[str, str]) -> str:
    """Rename studies in run.json's suite_spec (in place) and in the records (returned as text)."""
    spec = meta["suite_spec"]
    for key in ("studies", "study_seeds"):
        if isinstance(spec.get(key), dict):
            spec[key] = {renames.get(k, k): v for k, v in spec[key].items()}
    out = []
    for line in records.splitlines():
        rec = json.loads(line)
        for holder in (rec, rec.get("point") or {}):
            if isinstance(holder.get("studies"), list):
                holder["studies"] = [renames.get(x, x) for x in holder["studies"]]
        out.append(json.dumps(rec))
    return "\n".join(out) + "\n"


def hostile_run(tree: dict[str, Path], kind: str) -> Path:
    """A copy of the committed reference of `kind` (run.json and records) as a run of the results
    root, its study, configuration or model names replaced by the hostile ones."""
    run_dir = tree["root"] / "runs" / kind / "hostile"
    if run_dir.exists():
        return run_dir
    src = REPO_ROOT / "results" / kind / "reference-cpu"
    meta = json.loads((src / "run.json").read_text())
    meta.pop("reference", None)
    meta["run_id"] = run_dir.name
    records = (src / "records.jsonl").read_text()
    spare = hostile(tree)[len(RENAMED[kind]):]
    if STUDIES_RENAMED.get(kind):
        records = _rename_studies(meta, records, dict(zip(STUDIES_RENAMED[kind], spare)))
    texts = {"run.json": json.dumps(meta), "records.jsonl": records}
    for old, new in zip(RENAMED[kind], hostile(tree)):
        texts = {f: t.replace(json.dumps(old), json.dumps(new)) for f, t in texts.items()}
    run_dir.mkdir(parents=True)
    for name, text in texts.items():
        assert name == "run.json" or text != (src / name).read_text()  # the names are there to be met
        (run_dir / name).write_text(text)
    return run_dir


KINDS = tuple(RENAMED)


def test_report_sanitises_the_file_names_it_builds_from_hostile_names(tree):
    runs = {kind: hostile_run(tree, kind) for kind in KINDS}
    before = snapshot(tree["top"].parent)
    results = command(tree, [["report", str(run)] for run in runs.values()])
    assert [r["code"] for r in results] == [0] * len(runs), results
    written = [p for p, stat in snapshot(tree["top"].parent).items() if before.get(p) != stat]
    assert written and all(any(p.is_relative_to(run) for run in runs.values()) for p in written), written
    plots = {p.name for p in (runs["memory"] / "plots").iterdir()}
    assert "a_b_c__saved_for_backward_mib.png" in plots and not (runs["memory"] / "plots" / "a[b]").exists()


def test_publish_refuses_hostile_study_and_model_names_and_publishes_sanitised_configurations(tree):
    runs = {kind: hostile_run(tree, kind) for kind in KINDS}
    results = dict(zip(KINDS, command(tree, [["publish", "--offline", str(run)] for run in runs.values()])))
    refused(results["memory"], str(runs["memory"] / "run.json"), "suite_spec.studies: name=",
            repr(hostile(tree)[0]))
    refused(results["quality"], str(runs["quality"] / "run.json"), "suite_spec.studies: name=")
    for kind in ("capacity", "duplication"):  # names only in tables and labels: sanitised on the way
        assert results[kind]["code"] == 0, results[kind]
    assert list((tree["wandb"] / "wandb").glob("offline-run-*-capacity-hostile-*"))


def test_compare_writes_only_its_out_file(tree):
    runs = {kind: hostile_run(tree, kind) for kind in KINDS}
    outs = {kind: tree["root"] / f"compare-{kind}.md" for kind in KINDS}
    results = command(tree, [["compare", str(run), str(run), "--out", str(outs[kind])] for kind, run in runs.items()])
    assert [r["code"] for r in results] == [0] * len(runs), results
    assert all(out.is_file() for out in outs.values())
