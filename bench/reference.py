"""References: a finished run promoted to `results/<suite>/reference-<profile>/` (committed), and a
new run compared with the reference of its suite and profile at its end.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

from rich.console import Console

from bench.environment import REPO_ROOT
from bench.plans.progress import run_progress as progress
from bench.store import (
    LOCK, RUN_JSON, RUNS, TORN, StoreError, check_name, is_reference, jsonable, load_run_json, locked, now_iso,
    reference_dir,
)

# Checkpoints are for resuming a run; a reference is finished (they stay in the run folder, git-ignored).
PROMOTE_IGNORE = (LOCK, TORN, ".write-probe", "*.tmp", "wandb", "comparison.md", "checkpoints")


def promote(run_dir: Path, results_root: Path, replace: bool = False) -> Path:
    """Copy a finished run to `<results_root>/<suite>/reference-<profile>/` (an existing reference
    only with `replace`), marking its run.json with where it came from and taking this checkout's
    folders out of its text. Returns the reference folder; its report is the caller's to rewrite."""
    run_dir = Path(run_dir)
    meta = load_run_json(run_dir)
    if is_reference(run_dir):
        raise StoreError(f"{run_dir}: is already a reference")
    done = progress(run_dir, meta)
    if done is None or done[0] < done[1]:
        count = "its run.json does not list its points" if done is None else f"{done[0]} of {done[1]} points done"
        raise StoreError(f"{run_dir}: only a finished run becomes a reference ({count})")
    holder = locked(run_dir)
    if holder:
        raise StoreError(f"{run_dir}: in use by {holder}")
    dest = reference_dir(results_root, check_name("suite", str(meta.get("suite"))), check_name("profile", str(meta.get("profile"))))
    if dest.exists() and not replace:
        raise StoreError(f"{dest}: a reference exists; add --replace to replace it with {run_dir}")
    new, old = dest.with_name(dest.name + ".new.tmp"), dest.with_name(dest.name + ".old.tmp")
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    try:
        shutil.copytree(run_dir, new, ignore=shutil.ignore_patterns(*PROMOTE_IGNORE))
        for path in new.rglob("*"):
            if path.suffix in (".json", ".jsonl", ".md", ".csv", ".txt") and path.is_file():
                path.write_text(scrub_paths(path.read_text()))
        meta = load_run_json(new)
        meta["reference"] = {"promoted_from": f"{RUNS}/{meta['suite']}/{run_dir.name}", "promoted_at": now_iso()}
        (new / RUN_JSON).write_text(json.dumps(jsonable(meta), indent=2) + "\n")
        if dest.exists():
            os.replace(dest, old)
        os.replace(new, dest)
    except OSError as exc:
        raise StoreError(f"{dest}: cannot write the reference ({exc.strerror}); {run_dir} is unchanged") from None
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def scrub_paths(text: str) -> str:
    """Text without this checkout's or this user's folders: the repository root becomes relative,
    the home folder `~`."""
    text = text.replace(f"{REPO_ROOT}/", "").replace(str(REPO_ROOT), ".")
    home = str(Path.home())
    return text.replace(home, "~") if len(home) > 1 else text


def compare_with_reference(run_dir: Path, suite: str, profile: str, device: str, results_root: Path,
                           console: Console) -> Path | None:
    """Compare the run with `<results_root>/<suite>/reference-<profile>/` when it exists and ran on
    the same kind of device (`bench.compare`); a failure is shown, not fatal."""
    ref = reference_dir(Path(results_root), suite, profile)
    if not (ref / RUN_JSON).is_file():
        console.print(f"no reference {ref} to compare with", style="dim", markup=False, soft_wrap=True)
        return None
    try:
        ref_device = load_run_json(ref).get("device")
    except StoreError as exc:
        console.print(f"not compared with the reference: {exc}", style="yellow", markup=False, soft_wrap=True)
        return None
    if ref_device != device:
        console.print(f"not compared with {ref}: it ran on {ref_device}, this run on {device}",
                      style="yellow", markup=False, soft_wrap=True)
        return None
    compare = importlib.import_module("bench.compare")  # at call time: it pulls in the report's plotting stack
    try:
        cmp = compare.compare_runs(ref, run_dir)
        path = compare.write_comparison(cmp, run_dir / "comparison.md")
        compare.print_comparison(cmp, console)
    except Exception as exc:  # the records are safe; `bench compare` can be rerun
        console.print(f"comparison with {ref} failed: {type(exc).__name__}: {exc}", style="red", markup=False, soft_wrap=True)
        return None
    console.print(f"compared with {ref}: {path}", markup=False, soft_wrap=True)
    return path
