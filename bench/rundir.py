"""Which run folder a command writes to: a new run, this host's unfinished run of the same suite,
profile, device and plan (said so), or the run named by --run-id (this host's only); never a
reference. One function, `choose_run_dir`, that every kind of suite calls.
"""
from __future__ import annotations

import io
from pathlib import Path
from platform import node
from typing import Any

from rich.console import Console

from bench.environment import host_id
from bench.options import RunOptions
from bench.plans.progress import run_progress as progress
from bench.store import RUN_JSON, RUNS, StoreError, check_name, fresh_run_id, inside, load_run_json, locked, runs_dir


def choose_run_dir(suite_name: str, profile: str, device: str, opts: RunOptions, console: Console,
                   *, plan_key: str | None = None) -> Path:
    """The run folder of this command, under `<results_root>/runs/<suite>/`: `--run-id` continues or
    creates that run (this host's only); `--fresh` makes a new one; by default this host's newest
    unfinished run of the same suite, profile, device and plan (`plan_key`, see `bench.store.plan_key`)
    is continued, saying so, and otherwise a new run begins. References are never chosen."""
    check_name("suite", suite_name)
    root = Path(opts.results_root)
    if root.exists() and not root.is_dir():
        raise StoreError(f"--results-root {root}: is a file, not a folder")
    base = runs_dir(root, suite_name)
    me = host_id()
    if opts.run_id:
        if opts.fresh:
            raise StoreError("--fresh and --run-id are exclusive: --fresh makes a new timestamped run id")
        run_dir = inside(base / check_name("--run-id", opts.run_id), root / RUNS)
        if (run_dir / RUN_JSON).exists():
            meta = load_run_json(run_dir)
            _check_continuable(run_dir, meta, suite_name, profile, device, me)
            done = progress(run_dir, meta, opts.retry_failed)
            count = f"{done[0]} of {done[1]} points done" if done else "points recorded so far are kept"
            console.print(f"continuing {run_dir}: {count}", markup=False, soft_wrap=True)
        else:
            console.print(f"new run {run_dir} (--run-id)", markup=False, soft_wrap=True)
        _mkdir(run_dir, root)
        return run_dir
    if not opts.fresh:
        found = _unfinished_run(base, suite_name, profile, device, me, plan_key, opts.retry_failed, console)
        if found is not None:
            run_dir, (done, total) = found
            console.print(f"resuming {run_dir}: {done} of {total} points done (--fresh starts anew)",
                          style="bold", markup=False, soft_wrap=True)
            return run_dir
    stem = fresh_run_id(profile, device.split(":")[0])
    for n in range(1, 1000):  # two runs begun in the same second get -2, -3, ...
        run_dir = inside(base / (stem if n == 1 else f"{stem}-{n}"), root / RUNS)
        if _mkdir(run_dir, root, exist_ok=False):
            console.print(f"new run {run_dir}", style="bold", markup=False, soft_wrap=True)
            return run_dir
    raise StoreError(f"{base}: could not make a new run folder named {stem}[-N]")


def continuing_run(suite_name: str, profile: str, device: str, results_root: Path,
                   plan_key: str | None = None) -> Path | None:
    """The run a default command would continue (this host's newest unfinished one), or None when it
    would start a new run; creates nothing (for surveys such as `bench campaign --dry-run`)."""
    base = runs_dir(Path(results_root), check_name("suite", suite_name))
    found = _unfinished_run(base, suite_name, profile, device, host_id(), plan_key, False, Console(file=io.StringIO()))
    return None if found is None else found[0]


def _mkdir(run_dir: Path, root: Path, exist_ok: bool = True) -> bool:
    """Make a run folder; False if it exists and exist_ok is False; a StoreError naming the results
    root when it cannot be made (not writable, a file in the way)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if run_dir.is_dir():
            return False
        raise StoreError(f"{run_dir}: a file is in the way of the run folder") from None
    except OSError as exc:
        raise StoreError(f"--results-root {root}: cannot make the run folder {run_dir} in it "
                         f"({exc.strerror})") from None
    return True


def _check_continuable(run_dir: Path, meta: dict[str, Any], suite: str, profile: str, device: str,
                       me: str) -> None:
    """An explicitly named run continues only if it is this suite, profile and device, on this host."""
    for key, want in (("suite", suite), ("profile", profile), ("device", device)):
        if meta.get(key) != want:
            raise StoreError(f"{run_dir}: {key}={meta.get(key)!r} but this run has {key}={want!r}; "
                             "use another --run-id or --fresh")
    if meta.get("host_id") != me:
        theirs = (meta.get("environment") or {}).get("hostname")
        raise StoreError(f"{run_dir}: began on host {theirs!r} (host id {meta.get('host_id')}), and this is "
                         f"host {node()!r} (host id {me}); a run continues only on the host that began it "
                         "(use --fresh or another --run-id)")


def _not_to_continue(run_dir: Path, meta: dict[str, Any], me: str, key: str | None) -> str | None:
    """Why an unfinished run of the same suite, profile and device is not continued (None: it is)."""
    if meta.get("host_id") != me:
        return f"it began on another host ({(meta.get('environment') or {}).get('hostname')!r})"
    if key is not None and meta.get("plan_key") != key:
        return "it began with another version of the suite (or other --only)"
    holder = locked(run_dir)
    return f"it is in progress ({holder})" if holder else None


def _unfinished_run(base: Path, suite: str, profile: str, device: str, me: str, key: str | None,
                    retry_failed: bool, console: Console) -> tuple[Path, tuple[int, int]] | None:
    """This host's newest run of the suite, profile, device and plan with points left to do; the
    unfinished runs it leaves alone (other host, other plan, in progress) are named."""
    found = []
    for run_dir in sorted(base.iterdir()) if base.is_dir() else ():
        if not (run_dir / RUN_JSON).is_file():
            continue
        try:
            meta = load_run_json(run_dir)
            done = progress(run_dir, meta, retry_failed)
        except StoreError as exc:
            console.print(f"skipping a damaged run folder: {exc}", style="yellow", markup=False, soft_wrap=True)
            continue
        except Exception as exc:  # noqa: BLE001 - a run.json its kind cannot read: one folder, not every run
            console.print(f"skipping a damaged run folder: {run_dir / RUN_JSON}: cannot be read as a run of its "
                          f"kind ({type(exc).__name__}: {exc})", style="yellow", markup=False, soft_wrap=True)
            continue
        if (meta.get("profile"), meta.get("device")) != (profile, device) or done is None or done[0] >= done[1]:
            continue
        why = _not_to_continue(run_dir, meta, me, key)
        if why:
            console.print(f"unfinished run {run_dir} left alone: {why}", style="yellow", markup=False, soft_wrap=True)
            continue
        found.append((str(meta.get("created_at") or ""), run_dir.name, run_dir, done))
    if not found:
        return None
    *_, run_dir, done = max(found)
    return run_dir, done
