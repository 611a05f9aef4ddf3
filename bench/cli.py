"""`python -m bench run|list|report|publish`: the command line the Makefile targets call."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from bench.runner import RunError, RunOptions, run
from bench.store import RUN_JSON, StoreError
from bench.suite import PROFILES, SUITES_DIR, SuiteError, load_suite, resolve_suite_path, suite_kind


WIDE = 160


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run or resume a suite")
    p.add_argument("suite", help="a suite name in suites/ or a path to a YAML file")
    p.add_argument("--profile", choices=("auto", *PROFILES), default="auto",
                   help="auto: gpu when CUDA is available (or --device cuda), else cpu")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="override every point's device")
    p.add_argument("--run-id", help="run directory name (default: <profile>-<device>, which resumes)")
    p.add_argument("--fresh", action="store_true", help="start a new, timestamped run directory")
    p.add_argument("--retry-failed", action="store_true", help="run error/timeout points again")
    p.add_argument("--results-root", type=Path, default=Path("results"))
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--wandb", action="store_true", help="log each record to Weights & Biases as it lands")
    p.add_argument("--only", action="append", default=[], metavar="STUDY",
                   help="run only this study (repeatable)")
    p.add_argument("--time-budget-s", type=float, metavar="S",
                   help="stop launching points after S seconds (e.g. within a 10-minute GPU lease); rerun to resume")
    p.add_argument("--memory-limit-mib", type=float,
                   help="local executor: kill a worker whose RSS exceeds this (default 75%% of free RAM; 0 = off)")

    p = sub.add_parser("campaign", help="every suite's profile in resumable slices (make bench-gpu)")
    p.add_argument("--profile", choices=PROFILES, default="gpu")
    p.add_argument("--dry-run", action="store_true", help="list the slices and points it would run; run nothing")
    p.add_argument("--slice-s", type=float, default=480.0, metavar="S",
                   help="stop launching work after S seconds (default 480: the slice ends within 9 minutes)")
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="only these suites, in this order (default: memory speed lsh_vs_full peers capacity duplication)")
    p.add_argument("--results-root", type=Path, default=Path("results"))

    p = sub.add_parser("list", help="suites, their studies and point counts per profile")
    p.add_argument("suite", nargs="?", help="one suite (default: all in suites/)")

    p = sub.add_parser("report", help="write report.md, tables and plots for a run directory")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("publish", help="publish a run directory to Weights & Biases")
    p.add_argument("run_dir", type=Path)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--online", dest="online", action="store_true", default=None,
                      help="publish online (default: online only with an API key and a reachable host)")
    mode.add_argument("--offline", dest="online", action="store_false",
                      help="write an offline run and print the `wandb sync` command")
    return parser


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    opts = RunOptions(
        profile=args.profile, device=args.device, run_id=args.run_id, fresh=args.fresh,
        retry_failed=args.retry_failed, results_root=args.results_root, executor=args.executor,
        ray_address=args.ray_address, wandb=args.wandb, only=tuple(args.only),
        memory_limit_mib=args.memory_limit_mib, time_budget_s=args.time_budget_s,
    )
    if opts.fresh and opts.run_id:
        raise RunError("--fresh and --run-id are exclusive: --fresh makes a new timestamped run id")
    run(args.suite, opts, console)
    return 0


def cmd_campaign(args: argparse.Namespace, console: Console) -> int:
    from bench.campaign import SUITES, dry_run, run_campaign

    if not 0 < args.slice_s <= 540:
        raise RunError(f"--slice-s {args.slice_s:g}: must be in (0, 540] (a slice ends within 9 minutes)")
    suites = tuple(args.suite) or SUITES
    for name in suites:
        resolve_suite_path(name)
    if args.dry_run:
        return dry_run(suites, args.profile, args.results_root, args.slice_s, console)
    run_campaign(suites, args.profile, args.results_root, args.slice_s, console)
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    paths = [resolve_suite_path(args.suite)] if args.suite else sorted(SUITES_DIR.glob("*.yaml"))
    table = Table(title="suites")
    for col in ("suite", "study", *(f"{p} points (run/skip)" for p in PROFILES), "description"):
        table.add_column(col, overflow="fold")
    for path in paths:
        kind = suite_kind(path)
        if kind != "grid":
            table.add_row(path.stem, "-", *("-" for _ in PROFILES), f"kind: {kind} (own runner)")
            continue
        suite = load_suite(path)
        per_profile = {p: suite.expand(p, auto_device='cuda' if p == 'gpu' else 'cpu') for p in suite.spec.profiles}
        table.add_row(suite.name, "[bold]all[/]", *(_counts(per_profile.get(p)) for p in PROFILES),
                      suite.spec.description.strip().splitlines()[0] if suite.spec.description else "")
        for study, spec in suite.spec.studies.items():
            table.add_row("", study, *(
                _counts([x for x in per_profile[p] if study in x.point.studies]) if p in per_profile else "-"
                for p in PROFILES), spec.description.strip())
    console.print(table)
    return 0


def _counts(points) -> str:
    if points is None:
        return "-"
    skipped = sum(p.skip_reason is not None for p in points)
    return f"{len(points) - skipped}/{skipped}"


def _is_duplication_run(run_dir: Path) -> bool:
    """Duplication runs come from their own runner; recognise them by run.json or suite file."""
    try:
        meta = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("kind") == "duplication" or (meta.get("suite_spec") or {}).get("kind") == "duplication":
        return True
    try:
        return suite_kind(resolve_suite_path(str(meta.get("suite")))) == "duplication"
    except SuiteError:
        return False


def _run_kind(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / RUN_JSON).read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        return None


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    run_dir = args.run_dir
    if not (run_dir / RUN_JSON).is_file():
        raise RunError(f"{run_dir}: no {RUN_JSON}; not a run directory")
    if _run_kind(run_dir) == "capacity":
        from bench.capacity.report import write_report as write
    elif _is_duplication_run(run_dir):
        from bench.duplication.report import write_report as write
    else:
        from bench.report import write_report as write
    console.print(f"report: {write(run_dir)}")
    return 0


def cmd_publish(args: argparse.Namespace, console: Console) -> int:
    from bench.publish import publish_run

    if not (args.run_dir / RUN_JSON).is_file():
        raise RunError(f"{args.run_dir}: no {RUN_JSON}; not a run directory")
    publish_run(args.run_dir, online=args.online)
    return 0


COMMANDS = {"run": cmd_run, "campaign": cmd_campaign, "list": cmd_list, "report": cmd_report, "publish": cmd_publish}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for the summary table
        console = Console(width=max(console.width, WIDE))
    try:
        return COMMANDS[args.command](args, console)
    except (SuiteError, RunError, StoreError) as exc:
        Console(stderr=True).print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130

