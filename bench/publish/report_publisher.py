"""`publish_report`: the W&B Report of one run (or of several runs of a suite), always written as a
spec beside the results, created online only when asked and possible; its URL goes to run.json."""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from bench.publish import wandb_report as wrep
from bench.publish.publisher import PublishError, load_run, require, run_name, wandb_run_id
from bench.publish.report_text import read_report_text
from bench.publish.rundata import update_wandb_state, wandb_state
from bench.publish.scrub import scrub_text
from bench.publish.wandb_sink import DEFAULT_PROJECT, known_secrets, resolve_mode, wandb_module


@dataclass(frozen=True)
class ReportOutcome:
    """Where the report went: its spec file always, its URL when it was created online."""

    spec: Path
    url: str | None
    command: str  # the one command that creates it (again)


def create_command(run_dirs: Sequence[Path]) -> str:
    return "python -m bench publish " + " ".join(shlex.quote(str(d)) for d in run_dirs) + " --online --report"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _entity(env: Mapping[str, str]) -> str:
    """WANDB_ENTITY, else (online only) the key's default entity."""
    if env.get("WANDB_ENTITY"):
        return env["WANDB_ENTITY"]
    return str(wandb_module().Api().default_entity or "")


def publish_report(
    run_dirs: Sequence[Path],
    *,
    create: bool = False,
    online: bool | None = None,
    project: str | None = None,
    secrets: frozenset[str] | None = None,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> ReportOutcome | None:
    """Build the report of `run_dirs`, write its spec (see `wandb_report.spec_path`), and with
    `create` and an online W&B (see `resolve_mode`) create it and record its URL in every run.json.

    Offline, nothing waits on the network: the spec is written and the command that creates it later
    printed. Without wandb-workspaces: None and a note, or with `create` a PublishError, as for a
    run that cannot be read.
    """
    try:
        require("wandb")
        require("wandb_workspaces")
    except PublishError as e:
        if create:
            raise
        log(f"W&B report spec not written: {e}")
        return None
    env = os.environ if env is None else env
    secrets = known_secrets(env) if secrets is None else secrets
    run_dirs = [Path(d) for d in run_dirs]
    runs = []
    for d in run_dirs:
        info, records = load_run(d, secrets)
        text = read_report_text(d)
        if not text.sections:
            log(f"note: {d} has no report.md: the W&B report gets panels but not our text "
                f"(write it first with: python -m bench report {shlex.quote(str(d))})")
        text = type(text)(scrub_text(text.title, secrets), scrub_text(text.intro, secrets),
                          {h: scrub_text(b, secrets) for h, b in text.sections.items()})
        runs.append(wrep.ReportRun(info, tuple(records), text, wandb_run_id(info, d), run_name(info)))
    project = project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT
    command = create_command(run_dirs)
    mode = resolve_mode(online, env).mode if create else "offline"
    try:
        offline_report = wrep.build_report(runs, project=project, entity=env.get("WANDB_ENTITY", ""))
    except ValueError as e:
        raise PublishError(str(e)) from None
    spec = wrep.write_spec(wrep.report_spec(offline_report, runs, command), wrep.spec_path(run_dirs, runs), secrets)
    log(f"W&B report spec written to {spec}")
    if mode != "online":
        what = "W&B is offline: the report was not created." if create else "The report is not created yet."
        log(f"{what} Create it once online with:\n  {command}")
        return ReportOutcome(spec, None, command)
    key = spec.name
    try:
        entity = _entity(env)
        report = wrep.build_report(runs, project=project, entity=entity, runset_entity=entity, runset_project=project)
        url = wrep.save_report(report, report_id=(wandb_state(run_dirs[0]).get("report_ids") or {}).get(key))
    except Exception as e:  # noqa: BLE001 -- W&B's errors vary; the spec is kept, the user told how to retry
        raise PublishError(f"W&B report not created ({type(e).__name__}: {_one_line(e)}); its spec is {spec}; "
                           f"retry with: {command}") from None
    for d in run_dirs:
        state = wandb_state(d)
        fields = {"reports": {**(state.get("reports") or {}), key: url},
                  "report_ids": {**(state.get("report_ids") or {}), key: report.id}}
        if len(run_dirs) == 1:
            fields["report_url"] = url
        update_wandb_state(d, **fields)
    log(f"W&B report: {url}")
    return ReportOutcome(spec, url, command)
