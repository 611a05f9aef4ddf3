"""`python -m bench run|list|report|compare|reference|publish`: the command line the Makefile targets call."""
from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import signal
import threading
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.executors.base import ClusterLost, ExecutorError
from bench.options import ReportFailed, RunError, RunOptions, Terminated, raise_terminated
from bench.listing import counts_cells, outline
from bench.reference import promote
from bench.store import StoreError, check_run_names, is_reference, load_run_json
from bench.suite import DEFAULT_MAX_POINTS, PROFILES, SUITES_DIR, SuiteError, resolve_suite_path, suite_kind


WIDE = 160
CAMPAIGN = Path(__file__).with_name("campaign.py")
# measure_point's switch, named here so the parser does not import torch (tests check they agree).
BREAKDOWN_ENV = "BENCH_BREAKDOWN"


def campaign_suites() -> tuple[str, ...]:
    """bench.campaign.SUITES, read from its source: the parser lists them without importing torch."""
    for node in ast.parse(CAMPAIGN.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUITES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_number(text: str) -> float:
    """The type of every flag that takes a timeout, a slice or the like: a finite number > 0."""
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def budget_seconds(text: str) -> float:
    """The type of every --time-budget-s: a finite number >= 0 (0: stop after the first unit)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a suite: a new run, or this host's unfinished one")
    p.add_argument("suite", help="a suite name in suites/ or a path to a YAML file")
    p.add_argument("--profile", choices=("auto", *PROFILES), default="auto",
                   help="auto: gpu when CUDA is available (or --device cuda), else cpu")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="override every point's device")
    p.add_argument("--run-id", help="continue or create results/runs/<suite>/<ID> (this host's runs only); "
                                    "default: this host's unfinished run of the suite, else a new one")
    p.add_argument("--fresh", action="store_true", help="always start a new, timestamped run")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="quality suites: train on enwik8 at PATH (checked by size and MD5, split 90M/5M/5M) "
                        "instead of the standard library's source")
    p.add_argument("--retry-failed", action="store_true", help="run error/timeout points again")
    p.add_argument("--results-root", type=Path, default=Path("results"))
    p.add_argument("--executor", choices=("local", "ray", "submitit"), default="local",
                   help="ray / submitit: one point per node at a time on a Ray cluster / as Slurm jobs")
    p.add_argument("--ray-address", help="HOST:PORT of a Ray cluster's head, ray://HOST:PORT or auto "
                   "(default: RAY_ADDRESS, else a `ray start` cluster on this machine, else a new local instance)")
    p.add_argument("--ray-connect-timeout-s", type=positive_number, default=30.0, metavar="S",
                   help="give up connecting to the Ray cluster after S seconds (default 30)")
    p.add_argument("--submitit-cluster", choices=("auto", "slurm", "local"), default="auto",
                   help="submitit: auto = Slurm when sbatch exists, else local processes")
    p.add_argument("--slurm-partition", help="submitit: Slurm partition")
    p.add_argument("--slurm-time-min", type=_positive_int, metavar="MIN",
                   help="submitit: job time limit (default: the suite's timeout_s plus 5 minutes)")
    p.add_argument("--slurm-gpus-per-task", type=_positive_int, default=1, metavar="N",
                   help="submitit: GPUs for each CUDA point (CPU points ask for none; default 1)")
    p.add_argument("--slurm-cpus-per-task", type=_positive_int, metavar="N",
                   help="submitit: CPUs per point, also its torch thread count (default: the job's CPUs)")
    p.add_argument("--slurm-arg", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="submitit: any other sbatch option, e.g. account=proj or constraint=a100 (repeatable)")
    p.add_argument("--wandb", action="store_true", help="log each record to Weights & Biases as it lands")
    p.add_argument("--only", action="append", default=[], metavar="STUDY",
                   help="run only this study (repeatable)")
    p.add_argument("--time-budget-s", type=budget_seconds, metavar="S",
                   help="stop launching points after S seconds (e.g. within a 10-minute GPU lease); rerun to resume")
    p.add_argument("--memory-limit-mib", type=float,
                   help="local executor: kill a worker whose RSS exceeds this many MiB (> 0; default 75%% of free RAM)")
    p.add_argument("--max-points", type=_positive_int, default=None, metavar="N",
                   help=f"refuse a profile with more than N grid points, counted before expanding (default {DEFAULT_MAX_POINTS})")
    p.add_argument("--breakdown", action="store_true",
                   help="grid suites: also record the stage times of one extra profiled iteration at every point "
                        "(stage_ms.*, the report's stage plot); a study's `breakdown: true` does it per study")

    p = sub.add_parser("campaign", help="every suite's profile in resumable slices (make bench-gpu)")
    p.add_argument("--profile", choices=PROFILES, default="gpu")
    p.add_argument("--dry-run", action="store_true", help="list the slices and points it would run; run nothing")
    p.add_argument("--slice-s", type=positive_number, default=480.0, metavar="S",
                   help="stop launching work after S seconds (default 480: the slice ends within 9 minutes)")
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help=f"only these suites, in this order (default: {' '.join(campaign_suites()) or 'bench.campaign.SUITES'})")
    p.add_argument("--results-root", type=Path, default=Path("results"))

    p = sub.add_parser("list", help="suites, their studies and point counts per profile")
    p.add_argument("suite", nargs="?", help="one suite (default: all in suites/)")

    p = sub.add_parser("report", help="write report.md, tables and plots for a run directory")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--update-reference", action="store_true",
                   help="allow rewriting the report of a committed reference folder")

    p = sub.add_parser("compare", help="compare run B with run A point by point (time shape, memory)")
    p.add_argument("run_a", type=Path, help="the baseline, e.g. results/<suite>/reference-cpu")
    p.add_argument("run_b", type=Path, help="the run to check against it")
    p.add_argument("--out", type=Path, help="also write the comparison as markdown here")

    p = sub.add_parser("reference", help="make a finished run the reference of its suite and profile")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--results-root", type=Path, default=Path("results"),
                   help="where references live: <root>/<suite>/reference-<profile>/ (default: %(default)s)")
    p.add_argument("--replace", action="store_true", help="replace an existing reference")

    p = sub.add_parser("publish", help="publish run directories to Weights & Biases, with a W&B Report")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                   help="one run, or several runs of one suite gathered in one report")
    p.add_argument("--report", action="store_true",
                   help="create the W&B Report online (its spec, wandb_report.json, is always written)")
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
        ray_address=args.ray_address, ray_connect_timeout_s=args.ray_connect_timeout_s,
        submitit_cluster=args.submitit_cluster, slurm_partition=args.slurm_partition,
        slurm_time_min=args.slurm_time_min, slurm_gpus_per_task=args.slurm_gpus_per_task,
        slurm_cpus_per_task=args.slurm_cpus_per_task, slurm_args=tuple(args.slurm_arg), wandb=args.wandb,
        only=tuple(args.only), memory_limit_mib=args.memory_limit_mib, time_budget_s=args.time_budget_s,
        max_points=args.max_points, data=args.data,
    )
    if opts.fresh and opts.run_id:
        raise RunError("--fresh and --run-id are exclusive: --fresh makes a new timestamped run id")
    limit = opts.memory_limit_mib
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise RunError(f"--memory-limit-mib {limit:g}: must be a positive number of MiB")
    if args.breakdown:
        check_breakdown(args.suite, opts)
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, raise_terminated)  # handled like Ctrl-C: worker killed, exit 143
    # Imported here: a run pays for torch and the plans; `list`, `report` and `--help` do not.
    from bench.lifecycle import run_suite

    before = os.environ.get(BREAKDOWN_ENV)
    if args.breakdown:  # the workers (forked by this process, or Slurm jobs) inherit it
        os.environ[BREAKDOWN_ENV] = "1"
    try:
        run_suite(args.suite, opts, console)
    except ReportFailed as exc:  # the records are complete; the command still fails
        _error(str(exc))
        return 1
    finally:
        if before is None:
            os.environ.pop(BREAKDOWN_ENV, None)
        else:
            os.environ[BREAKDOWN_ENV] = before
    return 0


def check_breakdown(suite: str, opts: RunOptions) -> None:
    """--breakdown profiles grid points; a capacity probe or a training has no timed iteration to add one to,
    and a remote Ray worker would not see the switch."""
    kind = suite_kind(resolve_suite_path(suite))
    if kind != "grid":
        raise RunError(f"--breakdown: not available for {kind} suites (only a grid point has timed iterations "
                       "to profile one more of)")
    if opts.executor == "ray":
        raise RunError("--breakdown: not available with --executor ray (a Ray worker does not see the switch); "
                       "set `breakdown: true` on the suite's studies instead")


def cmd_campaign(args: argparse.Namespace, console: Console) -> int:
    # Imported here: a campaign plans every kind (torch); the other commands do not need it.
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
    table = Table(title="suites", caption="t: trainings, e: evaluations, a: analyses")
    for col in ("suite", "kind", "study / config", *(f"{p}" for p in PROFILES), "description"):
        table.add_column(col, overflow="fold")
    for path in paths:
        o = outline(path)
        # User text (names, descriptions) as Text: printed literally, never read as rich markup.
        table.add_row(Text(o.suite), Text(f"{o.kind}: {o.units}"), "[bold]all[/]",
                      *(Text(c) for c in counts_cells(o.total)), Text(o.total.description))
        for row in o.rows:
            table.add_row("", "", Text(row.name), *(Text(c) for c in counts_cells(row)), Text(row.description))
    console.print(table)
    return 0


def _run_kind(run_dir: Path) -> str:
    """What made a run folder (grid, capacity, duplication or quality): run.json's kind, its suite_spec's, else
    its suite file's; grid when none says."""
    meta = load_run_json(run_dir)
    kind = meta.get("kind") or (meta.get("suite_spec") or {}).get("kind")
    if kind:
        return str(kind)
    try:
        return suite_kind(resolve_suite_path(str(meta.get("suite"))))
    except SuiteError:
        return "grid"


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    run_dir = args.run_dir
    load_run_json(run_dir)  # a clear error for a missing or damaged run.json
    if is_reference(run_dir) and not args.update_reference:
        raise RunError(f"{run_dir}: is a reference; add --update-reference to rewrite its report")
    console.print(f"report: {_write_report(run_dir)}")
    return 0


# Each kind's report module (its `write_report(run_dir)`), imported by name when a report is written.
REPORTS = {"grid": "bench.report", "capacity": "bench.capacity.report", "duplication": "bench.duplication.report",
           "quality": "bench.quality.report"}


def _write_report(run_dir: Path) -> Path:
    kind = _run_kind(run_dir)
    if kind not in REPORTS:
        raise RunError(f"{run_dir}: run.json kind {kind!r}: no report for it (known: {', '.join(REPORTS)})")
    return importlib.import_module(REPORTS[kind]).write_report(run_dir)


def cmd_reference(args: argparse.Namespace, console: Console) -> int:
    dest = promote(args.run_dir, args.results_root, replace=args.replace)
    console.print(f"reference: {dest} (from {args.run_dir})", markup=False)
    try:
        console.print(f"report: {_write_report(dest)}", markup=False)
    except Exception as exc:  # the reference's records are in place; its report can be rebuilt
        _error(f"{dest}: the report could not be written ({type(exc).__name__}: {exc}); rebuild it with: "
               f"python -m bench report {dest} --update-reference")
        return 1
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    # Imported here: the comparison pulls in the report's plotting stack.
    from bench.compare import compare_runs, print_comparison, write_comparison

    try:
        cmp = compare_runs(args.run_a, args.run_b)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    print_comparison(cmp, console)
    if args.out:
        console.print(f"comparison: {write_comparison(cmp, args.out)}", markup=False, highlight=False)
    return 0


def cmd_publish(args: argparse.Namespace, console: Console) -> int:
    # Imported here: publishing pulls in pandas and the W&B sink.
    from bench.publish import PublishError, publish_report, publish_run

    for run_dir in args.run_dirs:  # W&B keys and media files are named after them
        check_run_names(run_dir, load_run_json(run_dir))
    try:
        for run_dir in args.run_dirs:
            publish_run(run_dir, online=args.online)
        publish_report(args.run_dirs, create=args.report, online=args.online)
    except PublishError as exc:
        raise RunError(str(exc)) from None
    return 0


COMMANDS = {"run": cmd_run, "campaign": cmd_campaign, "list": cmd_list, "report": cmd_report,
            "compare": cmd_compare, "reference": cmd_reference, "publish": cmd_publish}


def _error(message: str) -> None:
    Console(stderr=True).print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for the summary table
        console = Console(width=max(console.width, WIDE))
    try:
        return COMMANDS[args.command](args, console)
    except (SuiteError, RunError, StoreError, ExecutorError) as exc:
        _error(str(exc))
        return 2
    except ClusterLost as exc:  # what finished is recorded; rerunning the command runs the rest
        _error(str(exc))
        return 3
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143

