"""`python -m bench.duplication run|evaluate|report`: the duplication suite through the common
training runner, without the generic CLI (`python -m bench run duplication` does the same)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench.duplication import DEFAULT_SUITE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.duplication", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "train (resuming from checkpoints) and evaluate, then write the report"),
                        ("evaluate", "re-evaluate every finished checkpoint without training, then report")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--profile", default="cpu", choices=("cpu", "gpu"))
        s.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="suite YAML (default: %(default)s)")
        s.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
        s.add_argument("--results-root", type=Path, default=Path("results"), help="(default: %(default)s)")
        s.add_argument("--run-id", default=None,
                       help="continue or create this run (evaluate: required); default: this host's unfinished "
                            "run of the suite, else a new one")
        if name == "run":
            s.add_argument("--fresh", action="store_true", help="always start a new run")
            s.add_argument("--time-budget-s", type=float, default=None,
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
    from bench.duplication.spec import resolve_device
    from bench.options import NothingToMeasure
    from bench.options import RunOptions
    from bench.training.run import run_plan
    from bench.training.suites import training_plan

    try:
        device = resolve_device(args.device, args.profile)
        plan = training_plan(args.suite, "duplication", args.profile)
        opts = RunOptions(profile=args.profile, device=device, run_id=args.run_id, fresh=getattr(args, "fresh", False),
                          retry_failed=True, results_root=args.results_root,
                          time_budget_s=getattr(args, "time_budget_s", None))
        run_dir, _ = run_plan(plan, opts, device, reevaluate=args.command == "evaluate", train=args.command == "run")
    except NothingToMeasure as done:
        print(f"NOTHING MEASURED: {done}", file=sys.stderr)
        return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(write_report(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
