"""The quality suite on the common training runner, with faults: a kill -9 mid-training and a rerun
that resumes exactly; an out-of-memory model recorded as `oom`, never retrained, its evaluations
skipped once; bad input refused before anything is written, naming the field; a model evaluated
under another attention setting from the same weights; a model shared by studies trained once
per seed. A tiny suite (length 32, d_model 32, 12 steps) on a tiny corpus keeps each test fast."""
from __future__ import annotations

import copy
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
import yaml

import bench.quality.spec as quality_spec
import bench.options as options
import bench.training.runner as training_runner
from bench.cli import main
from bench.quality.data import Corpus
from bench.quality.spec import load_suite, training_plan
from bench.options import RunOptions
from bench.store import latest_by_point, read_records
from bench.suite import SuiteError
from bench.training.checkpoint import load_checkpoint
from bench.options import NothingToMeasure
from bench.plans.training import print_training_summary
from bench.training.run import run_plan
from reformer_impl import ReformerLM

from .conftest import REPO_ROOT

QUALITY_YAML = REPO_ROOT / "suites" / "quality.yaml"
TINY: dict[str, Any] = {
    "kind": "quality",
    "name": "tinyq",
    "models": {"lsh-1": {"attention": "lsh", "n_hashes": 1}, "full": {"attention": "full"}},
    "eval_settings": {"lsh-8": {"attention": "lsh", "n_hashes": 8}},
    "studies": {
        "hash_rounds": {"hypothesis": "more rounds approach full attention", "models": ["lsh-1", "full"],
                        "eval": ["lsh-8"], "baseline": "full", "x": "n_hashes"},
        "control": {"hypothesis": "the same two models, a second study", "models": ["full", "lsh-1"]},
    },
    "lsh_approximation": {"model": "full", "n_hashes": [1, 2], "chunk_lens": [8], "seeds": [0], "windows": 1},
    "profiles": {"cpu": {
        "seq_len": 32,
        "seeds": [0, 1],
        "model": {"d_model": 32, "d_ff": 32, "n_heads": 2, "n_layers": 1, "chunk_len": 8, "pos_emb": "absolute"},
        "train": {"steps": 12, "batch_size": 2, "lr": 3.0e-3, "warmup_steps": 2, "checkpoint_every": 4,
                  "log_every": 2, "threads": 1},
        "eval": {"windows": 4, "batch_size": 4, "curve_windows": 2, "validate_every": 4},
    }},
}
TEXT = b"".join(f"def f{i}(x):\n    return x * {i % 13} + {i % 7}  # line {i}\n".encode() for i in range(300))


def tiny_corpus() -> Corpus:
    n = len(TEXT)
    return Corpus(name="tiny", data=torch.frombuffer(bytearray(TEXT), dtype=torch.uint8),
                  bounds={"train": (0, n - 1000), "valid": (n - 1000, n)}, sha256=hashlib.sha256(TEXT).hexdigest(),
                  python_version="test")


def write(tmp_path: Path, spec: dict[str, Any], name: str = "tinyq.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # the models' order is the training order
    return path


def tiny(**profile_changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY)
    for key, value in profile_changes.items():
        section, _, field = key.partition("__")
        if field:
            spec["profiles"]["cpu"][section][field] = value
        else:
            spec["profiles"]["cpu"][section] = value
    return spec


def run(path: Path, root: Path, run_id: str | None = None, **kwargs: Any) -> Path:
    """`python -m bench run <path> --profile cpu --device cpu`, short of the report, on the tiny corpus."""
    plan = training_plan(load_suite(path), "cpu", corpus=tiny_corpus())
    opts = RunOptions(profile="cpu", device="cpu", run_id=run_id, retry_failed=True, results_root=root,
                      time_budget_s=kwargs.pop("time_budget_s", None))
    return run_plan(plan, opts, "cpu", **kwargs)[0]


def by_point(run_dir: Path) -> dict[str, dict[str, Any]]:
    records = read_records(run_dir / "records.jsonl")
    assert len({r["point_id"] for r in records}) == len(records), "a point was recorded twice"
    return {r["point_id"]: r for r in records}


pytestmark = pytest.mark.usefixtures("torch_threads_restored")


# ---------------------------------------------------------------- the shipped suite
def test_the_shipped_suite_validates_and_its_cpu_profile_plans_two_studies_by_3_seeds_and_the_baselines():
    suite = load_suite(QUALITY_YAML)
    plan = training_plan(suite, "cpu", corpus=tiny_corpus())
    assert plan.profile == "cpu" and set(plan.spec["studies"]) == {"shared_qk", "reversible"}
    assert plan.spec["controls"] == ["no-attention"] and suite.models["no-attention"]["attention"] == "none"
    cpu_models = {m for s in ("shared_qk", "reversible") for m in suite.studies[s].models} | {"no-attention"}
    assert {(t.name, t.seed) for t in plan.trains} == {(m, s) for m in cpu_models for s in (0, 1, 2)}
    assert len({t.point_id for t in plan.trains}) == len(plan.trains) == 15
    assert all(t.cfg.max_seq_len == 256 and t.settings.steps == 2000 and t.settings.batch_size == 16
               and t.settings.seed == t.seed for t in plan.trains)
    assert {(e.train.name, e.train.seed) for e in plan.evals} == {(t.name, t.seed) for t in plan.trains}
    assert all(e.setting == "as trained" for e in plan.evals)  # no study of this profile asks for lsh-8
    assert [a.point_id for a in plan.analyses] == ["approx-full-s0", "approx-full-s1", "approx-full-s2",
                                                   "baselines-count-models"]
    baselines = plan.analyses[-1]
    assert baselines.train.point_id == "train-no-attention-s0" and set(baselines.studies) == set(plan.spec["studies"])
    gpu = training_plan(suite, "gpu", corpus=tiny_corpus())  # the other profile runs every study
    assert set(gpu.spec["studies"]) == set(suite.studies)
    seeds = {}
    for t in gpu.trains:
        seeds.setdefault(t.name, set()).add(t.seed)
    assert seeds == {m: ({0, 1} if m in ("full-1-layer", "full-4-layers", "full-6-layers") else {0, 1, 2})
                     for m in suite.models}  # depth's own models: 2 seeds; the rest, control included: 3
    as_lsh8 = {(e.train.name, e.train.seed) for e in gpu.evals if e.setting == "lsh-8"}
    # lsh-8 is a study model itself: evaluating it "as lsh-8" is its as-trained evaluation
    assert as_lsh8 == {(m, s) for m in ("lsh-1", "lsh-2", "lsh-4", "full") for s in (0, 1, 2)}


def test_a_profile_runs_its_own_studies_with_their_own_seeds_and_always_the_control(tmp_path):
    spec = _mutate(lambda s: (s["models"].update({"no-attention": {"attention": "none", "reversible": False}}),
                              s["profiles"]["cpu"].update(studies=["hash_rounds"], seeds=[0],
                                                          study_seeds={"hash_rounds": [0, 1, 2]})))
    suite = load_suite(write(tmp_path, spec))
    plan = training_plan(suite, "cpu", corpus=tiny_corpus())
    assert list(plan.spec["studies"]) == ["hash_rounds"] and plan.spec["study_seeds"] == {"hash_rounds": [0, 1, 2]}
    assert [(t.name, t.seed) for t in plan.trains] == [(m, s) for m in ("lsh-1", "full", "no-attention")
                                                       for s in (0, 1, 2)]
    control = [t for t in plan.trains if t.name == "no-attention"]
    assert all(t.studies == ("hash_rounds",) and t.cfg.attention == "none" for t in control)
    assert not any(e.train.name == "no-attention" and e.setting != "as trained" for e in plan.evals)
    assert [a.point_id for a in plan.analyses] == ["approx-full-s0", "baselines-count-models"]
    from bench.plans.training import only_studies
    kept = only_studies(plan, ["hash_rounds"], tmp_path)
    assert {t.name for t in kept.trains} == {"lsh-1", "full", "no-attention"}
    assert "baselines-count-models" in [a.point_id for a in kept.analyses]


# ---------------------------------------------------------------- bad input, refused up front
def _mutate(change):
    spec = copy.deepcopy(TINY)
    change(spec)
    return spec


BAD_SUITES = {
    "unknown model in a study": (
        _mutate(lambda s: s["studies"]["hash_rounds"].update(models=["lsh-1", "lsh-3"])),
        ["studies.hash_rounds.models", "'lsh-3'"]),
    "unknown key": (_mutate(lambda s: s["profiles"]["cpu"]["train"].update(stepz=3)), ["profiles.cpu.train.stepz"]),
    "unknown top-level key": (_mutate(lambda s: s.update(colour="red")), ["colour"]),
    "unknown model field": (_mutate(lambda s: s["models"]["full"].update(n_hash=2)), ["full", "n_hash"]),
    "a field the task fixes": (_mutate(lambda s: s["models"]["full"].update(vocab_size=128)), ["full", "vocab_size"]),
    "impossible model": (_mutate(lambda s: s["models"]["lsh-1"].update(n_buckets=3)),
                         ["models.lsh-1", "n_buckets=3"]),
    "impossible profile model": (_mutate(lambda s: s["profiles"]["cpu"]["model"].update(n_heads=3)),
                                 ["profiles.cpu", "models.lsh-1", "d_model", "n_heads=3"]),
    "validate_every not a multiple of log_every": (
        _mutate(lambda s: s["profiles"]["cpu"]["eval"].update(validate_every=3)),
        ["profiles.cpu", "eval.validate_every=3", "train.log_every=2"]),
    "a repeated seed": (_mutate(lambda s: s["profiles"]["cpu"].update(seeds=[0, 1, 0])), ["profiles.cpu", "seeds"]),
    "two names for one configuration": (  # n_hashes means nothing to full attention: the same model
        _mutate(lambda s: s["models"].update({"full-4": {"attention": "full", "n_hashes": 4}})),
        ["models.full-4", "models.full", "same configuration"]),
    "unknown evaluation setting": (_mutate(lambda s: s["studies"]["hash_rounds"].update(eval=["lsh-16"])),
                                   ["studies.hash_rounds.eval", "'lsh-16'"]),
    "a profile naming an unknown study": (_mutate(lambda s: s["profiles"]["cpu"].update(studies=["hash_round"])),
                                          ["profiles.cpu.studies", "'hash_round'"]),
    "seeds for a study the profile does not run": (
        _mutate(lambda s: s["profiles"]["cpu"].update(studies=["hash_rounds"], study_seeds={"control": [0, 1, 2]})),
        ["profiles.cpu.study_seeds.control", "does not run"]),
    "a repeated study seed": (_mutate(lambda s: s["profiles"]["cpu"].update(study_seeds={"control": [1, 1]})),
                              ["study_seeds.control", "repeats a seed"]),
    "a no-attention control inside a study": (
        _mutate(lambda s: (s["models"].update({"none": {"attention": "none", "reversible": False}}),
                           s["studies"]["control"].update(models=["full", "none"]))),
        ["models.none", "in no study"]),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_a_bad_suite_is_refused_naming_the_field_and_writes_nothing(case, tmp_path, capsys):
    spec, expected = BAD_SUITES[case]
    path = write(tmp_path, spec)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    results = tmp_path / "results"
    assert main(["run", str(path), "--profile", "cpu", "--results-root", str(results)]) == 2
    stderr = capsys.readouterr().err
    assert str(path) in stderr and expected[0] in stderr
    assert not results.exists()


def test_bad_data_is_refused_naming_the_flag_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, TINY)
    results = tmp_path / "results"
    small = tmp_path / "enwik8"
    small.write_bytes(b"not enwik8")
    for data, why in ((tmp_path / "missing", "no such file"), (small, "10 bytes, enwik8 has 100000000")):
        assert main(["run", str(path), "--profile", "cpu", "--results-root", str(results), "--data", str(data)]) == 2
        stderr = capsys.readouterr().err
        assert f"--data {data}" in stderr and why in stderr, stderr
    dup = write(tmp_path, yaml.safe_load((REPO_ROOT / "suites" / "duplication.yaml").read_text()), "dup.yaml")
    assert main(["run", str(dup), "--profile", "cpu", "--results-root", str(results), "--data", str(small)]) == 2
    assert "--data" in capsys.readouterr().err  # the duplication task reads no corpus
    assert not results.exists()


# ---------------------------------------------------------------- one uninterrupted tiny run
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny suite run once, every load of trained weights seen: (run dir, plan, loads)."""
    tmp = tmp_path_factory.mktemp("finished")
    path = write(tmp, TINY)
    loads: list[tuple[str, Any, dict[str, torch.Tensor]]] = []
    real = training_runner.load_trained

    def spy(checkpoint, cfg, device="cpu"):
        model = real(checkpoint, cfg, device)
        loads.append((Path(checkpoint).name, cfg, {k: v.clone() for k, v in model.state_dict().items()}))
        return model
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training_runner, "load_trained", spy)
        run_dir = run(path, tmp / "results")
    torch.set_num_threads(threads)
    return run_dir, training_plan(load_suite(path), "cpu", corpus=tiny_corpus()), loads


def test_a_model_trained_with_one_round_is_evaluated_with_8_from_the_same_weights(finished):
    run_dir, _, loads = finished
    records = by_point(run_dir)
    for seed in (0, 1):
        as_8, as_trained = records[f"eval-lsh-1-s{seed}-as-lsh-8"], records[f"eval-lsh-1-s{seed}"]
        assert as_8["status"] == as_trained["status"] == "ok"
        assert as_8["params"]["eval_setting"] == "lsh-8" and as_8["params"]["train_model"] == "lsh-1"
        assert (as_8["params"]["attention"], as_8["params"]["n_hashes"], as_8["effective"]["n_hashes"]) == ("lsh", 8, 8)
        assert as_trained["params"]["n_hashes"] == 1
        assert as_8["metrics"]["bpb"] != as_trained["metrics"]["bpb"]  # another function was scored
        saved = load_checkpoint(run_dir / "checkpoints" / f"train-lsh-1-s{seed}.pt")["model"]
        (state,) = [s for name, cfg, s in loads if name == f"train-lsh-1-s{seed}.pt" and cfg.n_hashes == 8]
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    full_as_8 = records["eval-full-s0-as-lsh-8"]
    assert (full_as_8["params"]["attention"], full_as_8["params"]["n_hashes"]) == ("lsh", 8)


def test_a_model_in_several_studies_is_trained_once_per_seed(finished):
    run_dir, plan, _ = finished
    records = by_point(run_dir)
    trains = [r for r in records.values() if r["params"]["role"] == "train"]
    assert sorted(r["point_id"] for r in trains) == [f"train-{m}-s{s}" for m in ("full", "lsh-1") for s in (0, 1)]
    assert all(r["status"] == "ok" and r["studies"] == ["hash_rounds", "control"] for r in trains)
    assert all(r["metrics"]["steps_done"] == 12 and len(r["curve"]) == 6 for r in trains)
    assert records["eval-full-s0-as-lsh-8"]["studies"] == ["hash_rounds"]  # only that study asks for lsh-8
    assert records["approx-full-s0"]["status"] == "ok" and records["approx-full-s0"]["table"]
    assert set(records) == set(plan.planned_ids())
    # a model no study (nor the approximation) uses is not trained at all
    spec = _mutate(lambda s: s["models"].update({"lsh-2": {"attention": "lsh", "n_hashes": 2}}))
    write(run_dir.parent, spec, "unused.yaml")
    unused = training_plan(load_suite(run_dir.parent / "unused.yaml"), "cpu", corpus=tiny_corpus())
    assert [t.point_id for t in unused.trains] == [t.point_id for t in plan.trains]


def test_a_run_with_the_control_keeps_per_window_bpb_and_the_count_baselines_and_reports_them(tmp_path):
    """A real tiny run: the no-attention control trains (not reversible), every evaluation keeps each
    window's bpb beside the mean, the count models are scored on the same windows, and the report
    calls a study of 12-step models inconclusive: they are nowhere near the count models."""
    from bench.quality.baselines import count_baselines, window_targets
    from bench.quality.metrics import eval_starts
    from bench.quality.report import write_report
    from bench.quality.verdicts import AT_NGRAM

    spec = _mutate(lambda s: (s["models"].update({"no-attention": {"attention": "none", "reversible": False}}),
                              s["profiles"]["cpu"].update(seeds=[0], studies=["hash_rounds"]),
                              s.pop("lsh_approximation")))
    run_dir = run(write(tmp_path, spec), tmp_path / "results")
    records = by_point(run_dir)
    assert all(r["status"] == "ok" for r in records.values()), {k: r["reason"] for k, r in records.items()}
    for pid in ("eval-full-s0", "eval-lsh-1-s0", "eval-lsh-1-s0-as-lsh-8", "eval-no-attention-s0"):
        rec = records[pid]
        windows = rec["per_window"]["bpb"]
        assert len(windows) == rec["metrics"]["eval_windows"] == 4 and "per_window" not in rec["metrics"]
        assert sum(windows) / 4 == pytest.approx(rec["metrics"]["bpb"], abs=1e-5)
    assert records["train-no-attention-s0"]["metrics"]["n_params"] < records["train-full-s0"]["metrics"]["n_params"]
    counted = records["baselines-count-models"]
    assert counted["params"]["analysis"] == "count_baselines" and counted["studies"] == ["hash_rounds"]
    corpus = tiny_corpus()
    start, stop = corpus.bounds["valid"]
    expected = count_baselines(corpus.data.numpy(), corpus.bounds["train"],
                               window_targets(start, eval_starts(stop - start, 32, 4), 32))
    assert [row["model"] for row in counted["table"]] == [f"count-order-{k}" for k in range(4)]
    assert [row["bpb"] for row in counted["table"]] == pytest.approx([b.bpb for b in expected], rel=1e-12)
    assert all(len(row["window_bpb"]) == 4 for row in counted["table"])
    text = write_report(run_dir).read_text()
    assert "## Baselines" in text and f"**Verdict: {AT_NGRAM}.**" in text


# ---------------------------------------------------------------- out of memory
def test_an_oom_model_is_a_row_its_evaluations_are_skipped_once_and_it_is_never_retrained(
        tmp_path, monkeypatch, capsys):
    path = write(tmp_path, TINY)
    results = tmp_path / "results"
    real_forward = ReformerLM.forward

    def forward(self, tokens):
        if self.training and self.cfg.attention == "lsh" and self.cfg.n_hashes == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real_forward(self, tokens)
    with monkeypatch.context() as mp:
        mp.setattr(ReformerLM, "forward", forward)
        run_dir = run(path, results, time_budget_s=0)  # lsh-1 (both seeds) fails; full stops at its 1st checkpoint
    records = by_point(run_dir)
    assert {pid: r["status"] for pid, r in records.items()} == {"train-lsh-1-s0": "oom", "train-lsh-1-s1": "oom"}
    assert "OutOfMemoryError" in records["train-lsh-1-s0"]["reason"]

    trained: list[str] = []
    real_train = training_runner.train_model

    def train_model(name, *args, **kwargs):
        trained.append(name)
        return real_train(name, *args, **kwargs)
    monkeypatch.setattr(training_runner, "train_model", train_model)
    assert run(path, results) == run_dir  # this host's unfinished run: no forward patched now
    assert trained == ["train-full-s0", "train-full-s1"]  # an oom is final: lsh-1 is not tried again
    records = by_point(run_dir)
    assert {pid for pid, r in records.items() if r["status"] != "ok"} == {
        "train-lsh-1-s0", "train-lsh-1-s1", "eval-lsh-1-s0", "eval-lsh-1-s1",
        "eval-lsh-1-s0-as-lsh-8", "eval-lsh-1-s1-as-lsh-8"}
    # the count models hang on the first training (lsh-1's: no control in this suite) but read only the
    # corpus, so its oom does not skip them
    assert records["baselines-count-models"]["status"] == "ok" and records["baselines-count-models"]["table"]
    skipped = records["eval-lsh-1-s1-as-lsh-8"]
    assert skipped["status"] == "skipped" and skipped["reason"] == "training of 'lsh-1' (seed 1) did not finish (oom)"
    assert records["approx-full-s0"]["status"] == "ok" and records["eval-full-s1-as-lsh-8"]["status"] == "ok"

    console = Console(record=True, width=200)
    print_training_summary(console, training_plan(load_suite(path), "cpu", corpus=tiny_corpus()),
                           latest_by_point(read_records(run_dir / "records.jsonl")))
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in console.export_text().splitlines()
             if line.count("│") > 5]
    rows = {tuple(row[:2]): row for row in cells}
    assert rows[("lsh-1", "1")][2] == "oom" and rows[("lsh-1", "1")][5] == "as trained: skipped; lsh-8: skipped"
    assert rows[("full", "0")][2] == "ok" and rows[("full", "0")][5].startswith("as trained: ")
    assert rows[("full", "0")][5].endswith(" bpb")

    n = len(read_records(run_dir / "records.jsonl"))
    run(path, results, run_dir.name, reevaluate=True, train=False)  # evaluates again what it can
    again = read_records(run_dir / "records.jsonl")[n:]
    assert sorted(r["point_id"] for r in again) == sorted(
        [f"eval-full-s{s}" for s in (0, 1)] + [f"eval-full-s{s}-as-lsh-8" for s in (0, 1)]
        + ["approx-full-s0", "approx-full-s1", "baselines-count-models"])  # no second skipped row for lsh-1

    def no_training(*args, **kwargs):
        raise AssertionError("nothing is left to train")
    monkeypatch.setattr(training_runner, "train_model", no_training)
    monkeypatch.setattr(quality_spec, "load_corpus", lambda data=None: tiny_corpus())
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    before = read_records(run_dir / "records.jsonl")
    capsys.readouterr()
    assert main(["run", str(path), "--profile", "cpu", "--results-root", str(results), "--run-id", run_dir.name]) == 0
    assert "NOTHING MEASURED" in capsys.readouterr().out
    assert read_records(run_dir / "records.jsonl") == before


# ---------------------------------------------------------------- kill -9, then resume
def _start(path: Path, root: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--profile", "cpu", "--results-root", str(root)]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _kill_mid_training(proc: subprocess.Popen, root: Path, timeout_s: float = 120) -> tuple[Path, int]:
    """SIGKILL `proc` as soon as a training point has a checkpoint short of its end; its (path, step)."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        assert proc.poll() is None, "the run finished before it could be killed"
        for ckpt in root.glob("runs/*/*/checkpoints/*.pt"):
            try:
                if not load_checkpoint(ckpt)["finished"]:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    return ckpt, load_checkpoint(ckpt)["step"]  # written atomically: whole, or the previous one
            except (EOFError, RuntimeError, FileNotFoundError):
                continue  # (a checkpoint replaced while read: read the next one)
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on an interruption: the curve (not its timings), the metrics that score the model."""
    metrics = {k: v for k, v in record["metrics"].items()
               if k in ("bpb", "nats_per_byte", "eval_bytes", "final_loss", "train_accuracy", "steps_done",
                        "approximation_rows")}
    curve = [{k: v for k, v in c.items() if k != "train_s"} for c in record.get("curve") or []]
    return {"status": record["status"], "metrics": metrics, "curve": curve, "table": record.get("table")}


def test_kill_9_mid_training_and_a_rerun_resumes_exactly_where_it_stopped(tmp_path):
    path = write(tmp_path, tiny(seeds=[0], train__steps=120))  # long enough to be killed mid-training
    straight = _start(path, tmp_path / "straight", tmp_path / "straight.log")  # the same run, never interrupted
    victim = _start(path, tmp_path / "killed", tmp_path / "killed.log")
    ckpt, step = _kill_mid_training(victim, tmp_path / "killed")
    assert victim.returncode == -signal.SIGKILL and 4 <= step < 120 and step % 4 == 0
    run_dir = ckpt.parents[1]
    point_id = ckpt.stem

    rerun = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--profile", "cpu",
                            "--results-root", str(tmp_path / "killed")], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming {run_dir}:" in rerun.stdout
    assert f"resuming {point_id} at step {step} of 120" in rerun.stdout
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()

    (reference,) = (tmp_path / "straight" / "runs" / "tinyq").iterdir()
    resumed, uninterrupted = by_point(run_dir), by_point(reference)
    assert set(resumed) == set(uninterrupted) and all(r["status"] == "ok" for r in resumed.values())
    for pid, record in uninterrupted.items():
        assert _comparable(resumed[pid]) == _comparable(record), pid
    curve = resumed[point_id]["curve"]
    assert [c["step"] for c in curve] == list(range(2, 121, 2))  # no step lost ...
    assert resumed[point_id]["metrics"]["n_repeats"] == (120 - step) // 2  # ... and none redone after the kill
    assert resumed[point_id]["curve"][-1]["valid"]["valid_bpb"] > 0


def test_reworded_prose_does_not_block_a_resume(finished, tmp_path, capsys):
    """A study's hypothesis, paper and description, the suite's and the profile's description and the
    thread count change no trained weight: the finished run is the same run, with nothing left to do."""
    run_dir, plan, _ = finished
    spec = copy.deepcopy(TINY)
    spec["description"] = "reworded"
    spec["profiles"]["cpu"]["description"] = "reworded too"
    spec["profiles"]["cpu"]["train"]["threads"] = 2
    spec["studies"]["hash_rounds"].update(hypothesis="reworded", paper="Fig. 4", description="reworded")
    path = write(tmp_path, spec)
    reworded = training_plan(load_suite(path), "cpu", corpus=tiny_corpus())
    assert reworded.resume_key() == plan.resume_key()
    before = read_records(run_dir / "records.jsonl")
    with pytest.raises(NothingToMeasure):
        run(path, run_dir.parents[2], run_dir.name)
    assert read_records(run_dir / "records.jsonl") == before
    changed = copy.deepcopy(spec)
    changed["studies"]["hash_rounds"]["eval"] = []  # fewer evaluations: another plan
    other = training_plan(load_suite(write(tmp_path, changed)), "cpu", corpus=tiny_corpus())
    assert other.resume_key() != plan.resume_key()
