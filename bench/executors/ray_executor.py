"""RayExecutor: one Ray task per grid point, each holding a whole node (all its CPUs and GPUs) so a
timed point never shares its machine, as under the local executor. The task runs the point in a
subprocess exactly as the local executor does, with an explicit torch thread count, and its record
says which node it ran on (`record["node"]`)."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from bench.executors.base import ClusterLost, ExecutorError, Record
from bench.executors.local import DEFAULT_PROCESSES
from bench.executors.ray_address import LOCAL, cluster_target, dead_hint
from bench.executors.remote_task import RunPoint, failure_record, point_runner, run_point_remote
from bench.point import GridPoint

__all__ = ["RayExecutor", "failure_record", "run_point_task", "enable_token_auth"]

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 1.0  # how often the driver looks at the cluster while points run
LOSS_GRACE_S = 3.0  # the head unreachable this long means the cluster is gone
NODE_REFRESH_S = 10.0  # how often idle capacity looks for nodes that joined
TOKEN_HELP = ("for a cluster with token authentication (`ray start` in Ray >= 2.59), make its token "
              "available here: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")


@dataclass(frozen=True)
class Node:
    """An alive node and what a point reserves on it: all of its CPUs and GPUs."""

    node_id: str
    host: str
    cpus: float
    gpus: float


def cluster_nodes(ray: Any) -> dict[str, Node]:
    """The alive nodes that can run a point (at least one CPU), by node id."""
    nodes = {}
    for n in ray.nodes():
        res = n.get("Resources") or {}
        if n.get("Alive") and res.get("CPU", 0) >= 1:
            nodes[n["NodeID"]] = Node(n["NodeID"], n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "?"),
                                      res["CPU"], res.get("GPU", 0.0))
    return nodes


def host_port(address: str | None, source: str = "--ray-address") -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for None, `auto`, `local`."""
    if not address or address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        what = f"{source} {address!r}" if source.startswith("--") else f"{address!r} ({source})"
        raise ExecutorError(f"{what}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def reachable(hp: tuple[str, int], timeout_s: float) -> str | None:
    """None if a TCP connection to hp opens within timeout_s, else why not."""
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def token_available(env: dict[str, str] | os._Environ = os.environ) -> bool:
    return bool(env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def enable_token_auth(ray: Any) -> bool:
    """Turn on Ray's token authentication (RAY_AUTH_MODE=token) when a token is available and the
    mode is unset: Ray does this itself only for `auto`, not for an explicit address."""
    if "RAY_AUTH_MODE" in os.environ or not token_available():
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    os.environ["RAY_AUTH_MODE"] = "token"
    config = getattr(getattr(ray, "_raylet", None), "Config", None)
    if config is not None:  # Ray caches its config at import; re-read it (as Ray's own `auto` does)
        config.initialize("")
    return True


@contextmanager
def _deadline(seconds: float, message: str) -> Iterator[None]:
    """Ray's connect retries in C++ and cannot be interrupted: past `seconds`, say why and exit 2."""
    def give_up() -> None:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def run_point_task(point: GridPoint, timeout_s: float, memory_limit_mib: int | None,
                   run_point: RunPoint | None, threads: int | None = None) -> Record:
    """The body of one Ray task: as many torch threads as CPUs the task holds (the whole node's)."""
    import ray  # optional dependency, imported only where Ray runs

    ctx = ray.get_runtime_context()
    cpus = int(ctx.get_assigned_resources().get("CPU", 1))
    return run_point_remote(point, timeout_s, memory_limit_mib, run_point, threads or max(cpus, 1),
                            {"ray_node_id": ctx.get_node_id()})


def _reason(error: BaseException) -> str:
    """A short cause for a failed task: the task's own exception when Ray wrapped one."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"ray task raised {type(cause).__name__}: {cause}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"ray: {type(error).__name__}: {first}"


class RayExecutor:
    """Runs points as Ray tasks, one per node at a time, and yields their records as they finish.

    address: `HOST:PORT` (GCS), `ray://HOST:PORT` (Ray Client), `auto`, or None (Ray's own choice:
    RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a new local instance,
    stopped at the end). Each point runs in `processes` worker processes (the suite's), measured by
    `measure`, unless `run_point` replaces the whole task body (tests). A task is never retried (a crash is a result) and gets a fresh worker
    (`max_calls=1`). A task that fails becomes an `error` record. A node that dies under a point
    leaves that point unrecorded; losing the whole cluster ends the run with ClusterLost.
    """

    def __init__(
        self,
        address: str | None = None,
        timeout_s: float = 600.0,
        *,
        connect_timeout_s: float = 30.0,
        torch_threads: int | None = None,
        memory_limit_mib: int | None = None,
        run_point: RunPoint | None = None,
        processes: int = DEFAULT_PROCESSES,
        measure: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        for name, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            if value <= 0:
                raise ValueError(f"RayExecutor: {name} must be > 0, got {value!r}")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"RayExecutor: torch_threads must be >= 1, got {torch_threads!r}")
        self.address = address
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.torch_threads = torch_threads
        self.memory_limit_mib = memory_limit_mib
        self.run_point = run_point or point_runner(processes, measure)  # the suite's memory processes per point
        self.init_kwargs = dict(init_kwargs or {})
        self.log = log or (lambda message: None)
        self._head: tuple[str, int] | None = None

    # ---- connecting -------------------------------------------------------------------------

    def _connect(self, ray: Any) -> bool:
        """Connect (or start a local instance) unless Ray is already up; True when we connected."""
        if ray.is_initialized():
            return False
        target, source = cluster_target(self.address)  # RAY_ADDRESS or a `ray start` file when none is given
        where = LOCAL if target is None else target if source == "--ray-address" else f"{target} ({source})"
        hp = host_port(target, source)
        if hp is not None and (why := reachable(hp, self.connect_timeout_s)) is not None:  # at once when refused
            raise ExecutorError(f"ray: cannot reach {where} within {self.connect_timeout_s:g} s ({why}); "
                                f"{dead_hint(source)}")
        token = enable_token_auth(ray)
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
        if "runtime_env" not in kwargs:
            # Workers of a local instance must import `bench` even when run from another directory.
            path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}} if self.address is None else None
        failed = (f"ray: could not connect to {where} within {self.connect_timeout_s:g} s; check that the "
                  f"cluster is running and, {TOKEN_HELP}")
        try:
            with _deadline(self.connect_timeout_s, failed):
                ray.init(address=self.address, **{k: v for k, v in kwargs.items() if v is not None})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            hint = TOKEN_HELP if not token else "check that its token matches the cluster's"
            raise ExecutorError(f"ray: could not connect to {where}: {first}; {hint}") from exc
        self._head = hp or host_port(ray.get_runtime_context().gcs_address)
        node = getattr(getattr(ray, "_private", None), "worker", None)
        started = getattr(getattr(node, "_global_node", None), "head", False)
        self.log(f"ray: {'started a local instance' if started else 'connected to'} {self._head[0]}:{self._head[1]}")
        return True

    def _cluster_alive(self) -> bool:
        return self._head is None or reachable(self._head, 1.0) is None

    # ---- running ----------------------------------------------------------------------------

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]:
        import ray  # optional dependency, imported only when this executor runs

        connected = self._connect(ray)
        lost = False
        try:
            yield from self._dispatch(ray, deque(points))
        except ClusterLost:
            lost = True
            raise
        finally:
            if connected and not lost:  # a dead cluster cannot be disconnected from cleanly
                ray.shutdown()

    def _dispatch(self, ray: Any, queue: deque[GridPoint]) -> Iterator[Record]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # optional dependency

        node_died = getattr(ray.exceptions, "NodeDiedError", ())
        task = ray.remote(max_calls=1, max_retries=0)(run_point_task)
        nodes = cluster_nodes(ray)
        if queue and not any(_fits(p, n) for p in queue for n in nodes.values()):
            raise ExecutorError(f"ray: no node of the cluster can run these points: {len(nodes)} alive node(s) "
                                f"with a CPU, devices needed: {', '.join(sorted({p.device for p in queue}))}")
        self.log(f"ray: {len(nodes)} node(s), one point per node at a time: "
                 + ", ".join(f"{n.host} ({n.cpus:g} CPU, {n.gpus:g} GPU)" for n in nodes.values()))
        running: dict[Any, tuple[GridPoint, str]] = {}
        died: list[GridPoint] = []
        unreachable_since: float | None = None
        refreshed = time.monotonic()
        try:
            while queue or running:
                busy = {node_id for _, node_id in running.values()}
                for node in nodes.values():
                    point = None if node.node_id in busy else _take(queue, node)
                    if point is not None:
                        ref = task.options(
                            num_cpus=node.cpus, num_gpus=node.gpus,
                            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
                        ).remote(point, self.timeout_s, self.memory_limit_mib, self.run_point, self.torch_threads)
                        running[ref] = (point, node.node_id)
                if not running:
                    raise self._lost("no alive node can run the remaining points "
                                     f"({', '.join(sorted({p.device for p in queue}))})", died, {}, queue)
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                if not done:
                    if not self._cluster_alive():
                        unreachable_since = unreachable_since or time.monotonic()
                        if time.monotonic() - unreachable_since > LOSS_GRACE_S:
                            raise self._lost("lost the cluster (its head stopped answering)", died, running, queue)
                    else:
                        unreachable_since = None
                        if time.monotonic() - refreshed > NODE_REFRESH_S:  # nodes that joined since
                            nodes, refreshed = cluster_nodes(ray), time.monotonic()
                    continue
                point, _node_id = running.pop(done[0])
                try:
                    record = ray.get(done[0])
                except node_died:
                    died.append(point)  # the point did not finish: not recorded, the next run retries it
                    if not self._cluster_alive():
                        raise self._lost("lost the cluster", died, running, queue) from None
                    nodes = cluster_nodes(ray)
                    continue
                except Exception as e:  # noqa: BLE001 -- RayTaskError, WorkerCrashedError, ...: a row, not a crash
                    yield failure_record(point, _reason(e), traceback=str(e))
                    continue
                yield _checked(record, point)
            if died:
                raise self._lost("node(s) died", died, {}, deque())
        except GeneratorExit:  # the consumer stopped early (time budget): leave nothing running
            for ref in running:
                ray.cancel(ref)  # not forced: the task's own cleanup kills the point's worker
            raise

    def _lost(self, what: str, died: list[GridPoint], running: dict[Any, tuple[GridPoint, str]],
              queue: Iterable[GridPoint]) -> ClusterLost:
        unfinished = [*died, *(p for p, _ in running.values())]
        never = list(queue)
        where = f"{self._head[0]}:{self._head[1]}" if self._head else "the cluster"
        return ClusterLost(
            f"ray: {what} at {where}; {len(unfinished)} point(s) were running and {len(never)} never "
            "started: none of them is recorded, run the same command again to run them",
            tuple(p.point_id for p in [*unfinished, *never]),
        )


def _take(queue: deque[GridPoint], node: Node) -> GridPoint | None:
    """The first queued point this node can run (a CUDA point needs a GPU), removed from the queue."""
    for point in queue:
        if _fits(point, node):
            queue.remove(point)
            return point
    return None


def _fits(point: GridPoint, node: Node) -> bool:
    return node.gpus >= 1 or not point.device.startswith("cuda")


def _checked(record: Any, point: GridPoint) -> Record:
    if not isinstance(record, dict) or record.get("point_id") != point.point_id:
        got = record.get("point_id") if isinstance(record, dict) else type(record).__name__
        return failure_record(point, f"ray task returned a record for {got!r}, not point {point.point_id!r}")
    return record
