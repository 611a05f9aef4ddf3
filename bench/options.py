"""What `python -m bench run` was asked for, the profile and device it resolves to, and how a run
can end short of its report: the lowest layer of a run, shared by the CLI, the lifecycle, the plans
and the run-folder choice."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class RunError(RuntimeError):
    """The run cannot start as asked (no CUDA, unknown study, a flag this kind refuses, ...)."""


class ReportFailed(RuntimeError):
    """Every record was written, but the report could not be: the run is kept, the command fails."""


class NothingToMeasure(Exception):
    """The run folder already holds a final record of every unit: nothing ran."""

    def __init__(self, run_dir: Path, why: str) -> None:
        super().__init__(why)
        self.run_dir = run_dir


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's preemption, `timeout`, a lease ending): stop like Ctrl-C."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@dataclass(frozen=True)
class RunOptions:
    """What `python -m bench run` was asked for."""

    profile: str = "auto"  # auto | cpu | gpu
    device: str = "auto"  # auto | cpu | cuda
    run_id: str | None = None  # continue or create this run (this host's only)
    fresh: bool = False  # always a new run
    retry_failed: bool = False
    results_root: Path = Path("results")
    executor: str = "local"  # local | ray | submitit
    ray_address: str | None = None
    ray_connect_timeout_s: float = 30.0
    submitit_cluster: str = "auto"  # auto (Slurm when sbatch exists, else local) | slurm | local
    slurm_partition: str | None = None
    slurm_time_min: int | None = None  # default: the point timeout plus a grace
    slurm_gpus_per_task: int = 1  # for CUDA points; CPU points ask for none
    slurm_cpus_per_task: int | None = None
    slurm_args: tuple[tuple[str, str], ...] = ()  # extra sbatch options (KEY, VALUE)
    wandb: bool = False
    only: tuple[str, ...] = ()
    memory_limit_mib: float | None = None  # local executor's watchdog; None = 75% of free RAM
    time_budget_s: float | None = None  # stop launching units after this long; a rerun resumes
    # Grid suites: refuse a profile with more grid points, counted before expanding (None: bench.suite.DEFAULT_MAX_POINTS).
    max_points: int | None = None
    data: Path | None = None  # quality suites: enwik8 at this path instead of the standard library's source


def cuda_available() -> bool:
    import torch  # deferred: planning and `bench list` must not pay for torch

    return torch.cuda.is_available()


def resolve_profile(profile: str, device: str, has_cuda: bool) -> str:
    """`auto` follows an explicit device, else whether CUDA is available."""
    if profile != "auto":
        return profile
    if device != "auto":
        return "gpu" if device == "cuda" else "cpu"
    return "gpu" if has_cuda else "cpu"


def check_gpu_profile(profile: str, device: str, has_cuda: bool) -> None:
    """The paper-scale gpu profile runs on a CPU only when asked for with an explicit `--device cpu`."""
    if profile == "gpu" and not has_cuda and device != "cpu":
        raise RunError("--profile gpu: CUDA is not available on this machine, and the gpu profile is paper "
                       "scale (bf16, lengths to 65536); use --profile cpu, or add --device cpu to insist")


def check_cuda(device: str, has_cuda: bool) -> None:
    if device == "cuda" and not has_cuda:
        raise RunError("--device cuda: CUDA is not available on this machine")
