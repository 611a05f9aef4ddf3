"""The common training runner: choose the run folder (a new run, or this host's unfinished one),
train every planned model to its last step (resuming from its checkpoint), then evaluate each
trained model under every planned setting and run the analyses of its weights, appending one
record per point to the run's store. An out-of-memory model is an `oom` row, a failing one an
`error` row: the plan goes on, and their evaluations are `skipped` rows saying why."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from rich.console import Console

from bench import load
from bench.store import RunLock, RunStore, latest_by_point, load_run_json, now_iso
from bench.training.checkpoint import CheckpointMismatch, checkpoint_progress, reset_hash_generators
from bench.training.loop import activation_mib, load_trained, train_model
from bench.training.plan import AnalysisPoint, EvalPoint, TrainingPlan, TrainPoint, resume_spec
from bench.training.records import analysis_record, eval_record, train_record
from bench.worker import classify

# record(record) is called with every record as it is appended (the live W&B logger, tests).
OnRecord = Callable[[dict[str, Any]], None]


class NothingToMeasure(Exception):
    """The run already holds an ok record of every point: nothing is trained or evaluated."""

    def __init__(self, run_dir: Path, total: int) -> None:
        super().__init__(f"{run_dir} already holds an ok record of every one of its {total} points; its report "
                         "is left as it was (`python -m bench report` rewrites it, --fresh starts a new run)")
        self.run_dir = run_dir


def checkpoint_path(run_dir: Path, point: TrainPoint) -> Path:
    return Path(run_dir) / "checkpoints" / f"{point.point_id}.pt"


def write_run_json(run_dir: Path, plan: TrainingPlan, device: str) -> None:
    """run.json once per run folder; a continued run must be the same resolved suite."""
    from bench.environment import capture_environment, host_id

    spec = plan.spec_json()
    if (Path(run_dir) / "run.json").exists():
        old = load_run_json(run_dir)
        if resume_spec(old.get("suite_spec") or {}) != resume_spec(spec):
            raise ValueError(f"{run_dir / 'run.json'}: this run was started with another resolved suite (profile "
                             f"{old.get('profile')!r}); pass another run_id or remove the run dir")
        return
    RunStore(run_dir).write_run_json({
        "kind": plan.kind, "suite": plan.suite, "profile": plan.profile, "run_id": Path(run_dir).name,
        "device": device, "host_id": host_id(), "created_at": now_iso(),
        "environment": capture_environment(device), "suite_spec": spec,
        "planned": plan.planned_ids(), "plan_key": plan.resume_key(),
    })


class TrainingRun:
    """One pass over a plan in one run folder (the folder is locked by the caller)."""

    def __init__(self, plan: TrainingPlan, run_dir: Path, device: str, *, deadline: Optional[float] = None,
                 reevaluate: bool = False, train: bool = True, on_record: Optional[OnRecord] = None,
                 say: Callable[[str], None] = print) -> None:
        self.plan, self.run_dir, self.device = plan, Path(run_dir), device
        self.deadline, self.reevaluate, self.train, self.on_record, self.say = deadline, reevaluate, train, on_record, say
        self.store = RunStore(self.run_dir)
        self.latest: dict[str, dict[str, Any]] = {}
        self.run_id = self.run_dir.name

    def append(self, record: dict[str, Any]) -> None:
        self.store.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def run(self) -> bool:
        """Train, evaluate, analyse; False when the time budget stopped training (a rerun resumes)."""
        plan = self.plan
        if self.device == "cpu" and plan.threads:
            torch.set_num_threads(plan.threads)
        write_run_json(self.run_dir, plan, self.device)
        self.store.check_writable()
        if busy := load.busy_reason():
            self.say(f"warning: {busy}; step times measured now will be noisy")
        latest = self.latest = latest_by_point(self.store.records())
        done = {pid for pid, r in latest.items() if r["status"] == "ok"}
        final = {pid for pid, r in latest.items() if r["status"] in ("ok", "oom")}
        final |= {p.point_id for p in (*plan.evals, *plan.analyses)
                  if p.train.point_id in final - done and (latest.get(p.point_id) or {}).get("status") == "skipped"}
        if self.train and not self.reevaluate and final >= set(plan.planned_ids()):
            raise NothingToMeasure(self.run_dir, len(plan.planned_ids()))
        trained: dict[str, str] = {}  # train point id -> why it cannot be evaluated ("" when it can)
        for point in plan.trains:
            step, finished = checkpoint_progress(checkpoint_path(self.run_dir, point))
            if (finished and point.point_id in done) or not self.train or point.point_id in final:
                trained[point.point_id] = "" if finished else self._why_not(latest.get(point.point_id), point)
                continue
            state = self._train_one(point, step)
            if state == "stopped":
                return False
            trained[point.point_id] = "" if state == "finished" else self._why_not(None, point, state)
        for ev in plan.evals:
            self._after_training(ev, done, trained, self._evaluate_one)
        for an in plan.analyses:
            self._after_training(an, done, trained, self._analyse_one)
        return True

    @staticmethod
    def _why_not(record: Optional[dict[str, Any]], point: TrainPoint, state: Optional[str] = None) -> str:
        status = state or (record or {}).get("status") or "not run"
        return f"training of {point.name!r} (seed {point.seed}) did not finish ({status})"

    def _after_training(self, point: EvalPoint | AnalysisPoint, done: set[str], trained: dict[str, str],
                        work: Callable[[Any], None]) -> None:
        why = trained.get(point.train.point_id, "not planned")
        if point.point_id in done and (not self.reevaluate or why):
            return
        if why:
            if (self.latest.get(point.point_id) or {}).get("reason") == why:
                return  # already recorded as skipped for this reason
            record = (eval_record(self.plan, self.run_id, point, self.device, None, "skipped", why, 0.0,
                                  self.plan.task.eval_batch_size)
                      if isinstance(point, EvalPoint) else
                      analysis_record(self.plan, self.run_id, point, self.device, None, "skipped", why, 0.0))
            self.append(record)
            return
        work(point)

    # ------------------------------------------------------------ one point of each kind
    def _train_one(self, point: TrainPoint, step: int) -> str:
        """Train or resume (from its checkpoint, at `step`) one model; its record is appended when it
        finishes or fails. Returns 'finished', 'stopped' (time budget, checkpoint saved), 'oom' or 'error'."""
        ckpt = checkpoint_path(self.run_dir, point)
        steps = point.settings.steps
        self.say(f"resuming {point.point_id} at step {step} of {steps}" if step
                 else f"train {point.point_id} ({steps} steps)")
        t0 = time.perf_counter()
        before, own = load.snapshot(), load.process_cpu_s()
        try:
            outcome = train_model(point.point_id, point.cfg, self.plan.task, point.settings, ckpt, self.device,
                                  validate_every=self.plan.validate_every, deadline=self.deadline,
                                  on_step=self._progress(point, steps))
            saved = self._activation_mib(point, ckpt) if outcome.finished else None
        except CheckpointMismatch:
            raise  # a checkpoint of another configuration: the user must pick another run
        except Exception as err:  # noqa: BLE001 - one model failing is a row; the plan goes on
            status, reason = classify(err)
            self.append(train_record(self.plan, self.run_id, point, self.device, None, status, reason,
                                     time.perf_counter() - t0))
            self.say(f"train {point.point_id}: {status} {reason}")
            _free(self.device)
            return status
        if not outcome.finished:
            self.say(f"train {point.point_id}: stopped at step {outcome.step} (time budget); rerun to resume")
            return "stopped"
        record = train_record(self.plan, self.run_id, point, self.device, outcome, "ok", None,
                              time.perf_counter() - t0, saved)
        record["load"] = load.load_record(before, load.snapshot(), load.process_cpu_s() - own)
        self.append(record)
        last = outcome.curve[-1]
        self.say(f"train {point.point_id}: done, loss {last.loss:.3f}, accuracy {last.accuracy:.3f}, "
                 f"{outcome.train_s:.0f} s")
        return "finished"

    def _activation_mib(self, point: TrainPoint, ckpt: Path) -> float:
        model = load_trained(ckpt, point.cfg, self.device)
        batch = self.plan.task.stream(point.seed).next_batch(point.settings.batch_size).to(self.device)
        return activation_mib(model, batch)

    def _progress(self, point: TrainPoint, total: int):
        start, every = time.monotonic(), point.settings.log_every * 10

        def on_step(step: int) -> None:
            if step % every == 0 or step == total:
                self.say(f"train {point.point_id}: step {step}/{total} ({time.monotonic() - start:.0f}s this session)")
        return on_step

    def _evaluate_one(self, ev: EvalPoint) -> None:
        t0 = time.perf_counter()
        try:
            model = self._load(ev.train, ev.cfg)
            metrics = self.plan.task.evaluate(model, torch.device(self.device))
            status, reason = "ok", None
        except Exception as err:  # noqa: BLE001
            metrics, (status, reason) = None, classify(err)
        self.append(eval_record(self.plan, self.run_id, ev, self.device, metrics, status, reason,
                                time.perf_counter() - t0, self.plan.task.eval_batch_size))
        head = next(iter(metrics.items())) if metrics else ("", "")
        self.say(f"eval {ev.point_id}: {status} {reason or f'{head[0]} {head[1]:.4g}'}")

    def _analyse_one(self, an: AnalysisPoint) -> None:
        t0 = time.perf_counter()
        try:
            result, status, reason = dict(an.run(self._load(an.train, an.train.cfg), torch.device(self.device))), "ok", None
        except Exception as err:  # noqa: BLE001
            result, (status, reason) = None, classify(err)
        self.append(analysis_record(self.plan, self.run_id, an, self.device, result, status, reason,
                                    time.perf_counter() - t0))
        self.say(f"analysis {an.point_id}: {status}{'' if reason is None else ' ' + reason}")

    def _load(self, train: TrainPoint, cfg) -> torch.nn.Module:
        """The trained weights in a model of `cfg`, its LSH rotations seeded as every evaluation's."""
        torch.manual_seed(train.seed)  # the hash_seed an LSH layer draws when built (hash_seed=None) repeats
        model = load_trained(checkpoint_path(self.run_dir, train), cfg, self.device)
        reset_hash_generators(model)
        return model


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_plan(plan: TrainingPlan, opts: Any, device: str, console: Optional[Console] = None, *,
             reevaluate: bool = False, train: bool = True, wandb: bool = False,
             on_record: Optional[OnRecord] = None) -> tuple[Path, bool]:
    """Run a plan in the run folder the harness's rules choose (`bench.rundir.choose_run_dir`):
    `opts.run_id` continues or creates that run, `opts.fresh` starts a new one, else this host's
    unfinished run continues or a new one begins. `opts.time_budget_s` stops training cleanly at a
    checkpoint once spent; `wandb` logs every record (and a training's per-step curve) as it lands.
    Returns (run folder, whether every training reached its end)."""
    from bench.rundir import choose_run_dir

    console = console or Console()
    if not train and not opts.run_id:
        raise ValueError("evaluating without training needs --run-id: the run whose checkpoints to evaluate")
    deadline = None if opts.time_budget_s is None else time.monotonic() + opts.time_budget_s
    run_dir = choose_run_dir(plan.suite, plan.profile, device, opts, console, plan_key=plan.resume_key())
    say = lambda msg: console.print(f"[{plan.kind}] {msg}", markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    logger = None
    if wandb:
        from bench.publish import LiveLogger

        logger = LiveLogger(run_dir)

    def keep(record: dict[str, Any]) -> None:
        if logger is not None:
            logger.log_record(record)
        if on_record is not None:
            on_record(record)

    try:
        with RunLock(run_dir):
            complete = TrainingRun(plan, run_dir, device, deadline=deadline, reevaluate=reevaluate, train=train,
                                   on_record=keep, say=say).run()
    finally:
        if logger is not None:
            logger.finish()
    return run_dir, complete


def print_training_summary(console: Console, plan: TrainingPlan, run_dir: Path) -> None:
    """One row per trained model: status, step time, activation memory, and its evaluations'
    headline figure (bpb or accuracy) per setting; then the count of each status."""
    from rich.table import Table

    latest = latest_by_point(RunStore(run_dir).records())
    table = Table(title=f"{plan.suite}: trainings and evaluations")
    for col in ("model", "seed", "status", "step ms", "activation MiB", "evaluations"):
        table.add_column(col, overflow="fold")
    counts: dict[str, int] = {}
    for rec in latest.values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    for point in plan.trains:
        rec = latest.get(point.point_id) or {}
        metrics = rec.get("metrics") or {}
        evals = []
        for ev in (e for e in plan.evals if e.train.point_id == point.point_id):
            er = latest.get(ev.point_id) or {}
            em = er.get("metrics") or {}
            head = next((k for k in ("bpb", "accuracy") if em.get(k) is not None), None)
            evals.append(f"{ev.setting}: {em[head]:.4g} {head}" if head else f"{ev.setting}: {er.get('status', 'not run')}")
        step, mem = metrics.get("step_ms_median"), metrics.get("saved_for_backward_mib")
        table.add_row(point.name, str(point.seed), rec.get("status", "not run"),
                      "-" if step is None else f"{step:.4g}", "-" if mem is None else f"{mem:.3g}", "; ".join(evals))
    console.print(table)
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
