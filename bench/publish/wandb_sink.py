"""The W&B Sink, offline first: it goes online only with an API key and a reachable server (or when
told to), writes offline runs under the run directory, and prints the `wandb sync` command."""
from __future__ import annotations

import math
import netrc
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence
from urllib.parse import urlparse

import pandas as pd

from bench.publish.frames import LineSeries
from bench.publish.scrub import secret_values

Mode = Literal["online", "offline", "disabled"]
DEFAULT_PROJECT = "reformer-bench"
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0
INIT_TIMEOUT_S = 30.0  # online only: a key but a dead proxy costs at most this, then offline


def wandb_module() -> Any:
    """The wandb package."""
    import wandb  # optional: imported only when publishing (`bench.publish` loads without it)

    return wandb


@dataclass(frozen=True)
class ModeDecision:
    """How W&B will run and why, so the user is told in one line."""

    mode: Mode
    reason: str


def wandb_host(env: Mapping[str, str]) -> str:
    """The W&B server's host name (WANDB_BASE_URL for a self-hosted server)."""
    return urlparse(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname or "api.wandb.ai"


def netrc_password(host: str, env: Mapping[str, str]) -> str | None:
    """The `~/.netrc` password (a W&B API key) for `host`, or None; a broken netrc counts as none."""
    path = Path(env.get("NETRC") or Path.home() / ".netrc")
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth and auth[2] else None


def api_key(env: Mapping[str, str]) -> str | None:
    """The API key W&B would use: WANDB_API_KEY, else the netrc entry for the W&B host."""
    return env.get("WANDB_API_KEY") or netrc_password(wandb_host(env), env)


def can_reach(
    host: str, port: int = 443, timeout_s: float = PROBE_TIMEOUT_S, connect: Callable[..., Any] = socket.create_connection
) -> bool:
    """Whether a TCP connection to host:port opens within timeout_s.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread and is
    abandoned (not waited for) when it is slow: the answer is then False.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with connect((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(result and result[0])


def resolve_mode(
    online: bool | None = None,
    env: Mapping[str, str] | None = None,
    probe: Callable[[str], bool] = can_reach,
) -> ModeDecision:
    """Decide online/offline without ever waiting on the network for long.

    WANDB_MODE, when set, wins. Otherwise: online=False -> offline; no API key -> offline (W&B would
    otherwise prompt for a login); online=True -> online; online=None -> online only if the W&B host
    answers a short TCP probe.
    """
    env = os.environ if env is None else env
    explicit = (env.get("WANDB_MODE") or "").strip().lower()
    if explicit in ("offline", "dryrun"):
        return ModeDecision("offline", f"WANDB_MODE={explicit}")
    if explicit == "disabled":
        return ModeDecision("disabled", "WANDB_MODE=disabled")
    if online is False:
        return ModeDecision("offline", "offline requested")
    host = wandb_host(env)
    if not api_key(env):
        return ModeDecision("offline", f"no WANDB_API_KEY and no ~/.netrc entry for {host}")
    if online is True or explicit == "online":
        return ModeDecision("online", "online requested")
    if not probe(host):
        return ModeDecision("offline", f"{host} not reachable")
    return ModeDecision("online", f"API key found and {host} reachable")


def wandb_settings() -> Any:
    """Quiet settings that collect nothing about the publishing machine: the run's own environment
    (from run.json) is the config, and a stats sampler must not disturb a benchmark. Settings this
    wandb version does not know are left out rather than refused."""
    wandb = wandb_module()
    wanted = dict(
        silent=True,
        console="off",
        init_timeout=INIT_TIMEOUT_S,
        save_code=False,
        disable_git=True,
        x_disable_stats=True,
        x_disable_meta=True,
        x_disable_machine_info=True,
        x_save_requirements=False,
    )
    known = getattr(wandb.Settings, "model_fields", None)
    if known is not None:
        wanted = {k: v for k, v in wanted.items() if k in known}
    return wandb.Settings(**wanted)


def wandb_table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy W&B accepts as a Table: NaN -> None, and a column mixing kinds (str and number) as str."""
    columns = {}
    for col in df.columns:
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in df[col].tolist()]
        present = [v for v in values if v is not None]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
        boolean = all(isinstance(v, bool) for v in present)
        if not (numeric or boolean):
            values = [None if v is None else str(v) for v in values]
        columns[col] = pd.Series(values, index=df.index, dtype=object)
    return pd.DataFrame(columns, index=df.index)  # built at once: no fragmented frame


def wandb_dir(run_dir: Path, env: Mapping[str, str]) -> Path:
    """Where W&B writes its local files: WANDB_DIR when set (W&B's own convention), else the run
    directory, so an offline run sits beside the results it came from (W&B adds `wandb/<run>`)."""
    return Path(env["WANDB_DIR"]).expanduser() if env.get("WANDB_DIR") else Path(run_dir)


class WandbSink:
    """A Sink writing one W&B run, under WANDB_DIR or else the run directory (see `wandb_dir`)."""

    def __init__(
        self,
        dir: Path,
        *,
        online: bool | None = None,
        project: str | None = None,
        entity: str | None = None,
        env: Mapping[str, str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.env = os.environ if env is None else env
        self.dir = wandb_dir(dir, self.env)
        self.online = online
        self.project = project or self.env.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.entity = entity or self.env.get("WANDB_ENTITY") or None
        self.log = log
        self.decision: ModeDecision | None = None
        self.next_step = 0
        self._run: Any = None

    def init(
        self, *, name: str, group: str, tags: Sequence[str], config: Mapping[str, Any], job_type: str,
        run_id: str | None = None, start_step: int = 0,
    ) -> None:
        """Open the run; with `run_id`, resume that run if it exists (W&B's `resume="allow"`), and
        log from `start_step` on, so that steps already logged (a live run) are not overwritten."""
        wandb = wandb_module()
        self.decision = resolve_mode(self.online, self.env)
        self.dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            project=self.project, entity=self.entity, dir=str(self.dir), name=name, group=group,
            tags=list(tags), config=dict(config), job_type=job_type,
        )
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        try:
            self._run = wandb.init(mode=self.decision.mode, settings=wandb_settings(), **kwargs)
        except Exception as e:  # noqa: BLE001 -- any online failure: keep the data, go offline
            if self.decision.mode != "online":
                raise
            self.decision = ModeDecision("offline", f"online init failed ({type(e).__name__}: {e})")
            self._run = wandb.init(mode="offline", settings=wandb_settings(), **kwargs)
        resumed = int(getattr(self._run, "step", 0) or 0)  # online resume: the server's next step
        self.next_step = max(start_step, resumed)
        self.log(f"W&B: {self.decision.mode} ({self.decision.reason}), run {name!r} (id {self._run.id}) "
                 f"in project {self.project!r}")

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else str(self._run.id)

    def _log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Every call is one step, counted here: W&B drops a step below one it has seen."""
        step = self.next_step if step is None else max(step, self.next_step)
        self.run.log(dict(data), step=step)
        self.next_step = step + 1

    @property
    def run(self) -> Any:
        if self._run is None:
            raise RuntimeError("WandbSink: call init() before logging")
        return self._run

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._log(metrics, step)

    def define_x(self, glob: str, x: str) -> None:
        self.run.define_metric(x)
        self.run.define_metric(glob, step_metric=x)

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        wandb = wandb_module()
        self._log({name: wandb.Table(dataframe=wandb_table_frame(df))})

    def log_images(self, images: Mapping[str, Path]) -> None:
        wandb = wandb_module()
        if images:
            self._log({key: wandb.Image(str(path), caption=Path(path).name) for key, path in images.items()})

    def log_line_series(self, series: LineSeries) -> None:
        wandb = wandb_module()
        chart = wandb.plot.line_series(
            xs=[list(x) for x in series.xs],
            ys=[list(y) for y in series.ys],
            keys=list(series.keys),
            title=series.title,
            xname=series.xname,
        )
        self._log({series.name: chart})

    def finish(self) -> str | None:
        """Close the run; for an offline run, print and return its directory for `wandb sync`."""
        run, self._run = self.run, None
        sync_dir = getattr(run.settings, "sync_dir", None)
        run.finish()
        if self.decision is not None and self.decision.mode == "offline" and sync_dir:
            self.log(f"W&B offline run written to {sync_dir}\nUpload it with:\n  wandb sync {sync_dir}")
            return str(sync_dir)
        return None


def known_secrets(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Secret values to mask: secret-looking environment variables and the W&B netrc password."""
    env = os.environ if env is None else env
    return secret_values(env, extra=[netrc_password(wandb_host(env), env) or ""])

