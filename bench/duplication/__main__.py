"""`python -m bench.duplication run|evaluate|report`: the duplication suite through the common
training runner, without the generic CLI (`python -m bench run duplication` does the same)."""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from bench.cli import budget_seconds
from bench.duplication import DEFAULT_SUITE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.duplication", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "train (resuming from checkpoints) and evaluate, then write the report"),
                        ("evaluate", "re-evaluate every finished checkpoint without training, then report")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--profile", default="cpu", choices=("cpu", "gpu"))
        s.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="suite YAML (default: %(default)s)")
        s.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                       help="cpu | cuda (default: cuda when available)")
        s.add_argument("--results-root", type=Path, default=Path("results"), help="(default: %(default)s)")
        s.add_argument("--run-id", default=None,
                       help="continue or create this run (evaluate: required); default: this host's unfinished "
                            "run of the suite, else a new one")
        if name == "run":
            s.add_argument("--fresh", action="store_true", help="always start a new run")
            s.add_argument("--time-budget-s", type=budget_seconds, default=None, metavar="S",
                           help="stop training at the next checkpoint after this many seconds; rerun resumes")
    r = sub.add_parser("report", help="regenerate report.md and plots of a run dir from its records")
    r.add_argument("run_dir", type=Path)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # Imported after parsing, like the rest below: `--help` needs neither torch nor the report stack.
    from bench.duplication.report import write_report

    if args.command == "report":
        print(write_report(args.run_dir))
        return 0
    # Imported after parsing: `--help` and `report` need no torch.
    from bench.executors.base import ExecutorError
    from bench.lifecycle import run_plan
    from bench.options import NothingToMeasure, RunError, RunOptions, Terminated, cuda_available, raise_terminated
    from bench.plans.training import TrainingRunPlan

    if threading.current_thread() is threading.main_thread():  # as `bench run`: SIGTERM stops like Ctrl-C
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        opts = RunOptions(profile=args.profile, device=args.device or "auto", run_id=args.run_id,
                          fresh=getattr(args, "fresh", False), retry_failed=True, results_root=args.results_root,
                          time_budget_s=getattr(args, "time_budget_s", None))
        if args.command == "evaluate" and not args.run_id:
            raise RunError("evaluate needs --run-id: the run whose checkpoints to evaluate")
        # The same plan, refusals (a gpu profile on a CPU, no CUDA) and workers as `python -m bench run`.
        plan = TrainingRunPlan.for_options(args.suite, "duplication", opts, cuda_available())
        plan = dataclasses.replace(plan, reevaluate=args.command == "evaluate", train=args.command == "run")
        run_dir, _ = run_plan(plan, opts)
    except NothingToMeasure as done:
        print(f"NOTHING MEASURED: {done}", file=sys.stderr)
        return 0
    except (ValueError, RunError, ExecutorError) as err:  # SuiteError and StoreError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the lifecycle has said what happened and how to resume
        return 130
    except Terminated:
        return 143
    print(write_report(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
