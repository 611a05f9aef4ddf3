"""What a run was measured on: device, driver, CUDA, torch, CPU, git commit and dirty flag, date."""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.load import load_record, process_cpu_s, snapshot

REPO_ROOT = Path(__file__).resolve().parents[1]
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
HOST_ID_ENV = "BENCH_HOST_ID"  # set it where the hostname changes on every start (some containers)


def host_id() -> str:
    """A stable, anonymous id of this host: sha256 of the machine id and the hostname (hosts cloned
    from one image share a machine id), else of the hostname and MAC address. Never a CPU model:
    every VM of one kind has the same. `$BENCH_HOST_ID` overrides it."""
    override = os.environ.get(HOST_ID_ENV, "").strip()
    if override:
        return override
    machine = ""
    for path in MACHINE_ID_FILES:
        try:
            machine = path.read_text().strip()
        except OSError:
            continue
        if machine:
            break
    basis = f"machine-id:{machine}" if machine else f"mac:{uuid.getnode():012x}"
    return hashlib.sha256(f"{basis}\nhost:{platform.node()}".encode()).hexdigest()[:16]


def portable_path(path: Path | str) -> str:
    """A path as it may be written into results: relative to the repository when inside it, else
    only its file name (no machine's folders in a committed file)."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return resolved.name


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml_driver() -> str | None:
    try:
        import pynvml  # optional (CUDA machines): a CPU-only install has no NVML

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


# Dense matmul calibration: square fp32 on CPU, bf16 and fp32 on CUDA; the best of the timed
# products (the machine's attainable rate, as a roofline's peak). At least CALIBRATION_REPEATS, and
# on for CALIBRATION_MIN_S: five products of 13 ms once read 96 GFLOP/s on a VM whose steps then ran
# at 98, a share of "101%" in the report; half a second lets the clocks and the scheduler settle.
CALIBRATION = {"cpu": (("float32", 1024),), "cuda": (("bfloat16", 8192), ("float32", 8192))}
CALIBRATION_REPEATS = 5
CALIBRATION_MIN_S = 0.5
CALIBRATION_MAX_REPEATS = 200
CALIBRATE_ENV = "BENCH_CALIBRATE"  # set to 0 to skip the calibration


def matmul_gflops(device: str, dtype_name: str, size: int, repeats: int = CALIBRATION_REPEATS,
                  min_s: float = CALIBRATION_MIN_S) -> float:
    """The best rate over timed size x size products (2 size^3 FLOPs each), in GFLOP/s: at least
    `repeats` of them, and more until `min_s` seconds have passed (at most CALIBRATION_MAX_REPEATS)."""
    import torch  # torch only when measuring: the CLI imports this module (host_id, REPO_ROOT) torch-free

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    cuda = device.startswith("cuda")
    torch.mm(a, b)  # warm-up: threads, kernels, allocator
    best, began, done = float("inf"), time.perf_counter(), 0
    while done < repeats or (time.perf_counter() - began < min_s and done < CALIBRATION_MAX_REPEATS):
        done += 1
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def calibrate(device: str) -> dict[str, Any]:
    """environment fields: `matmul_gflops` {dtype: GFLOP/s}, how it was measured, and the load."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    before, own = snapshot(), process_cpu_s()
    rates = {name: round(matmul_gflops(device, name, size), 2) for name, size in CALIBRATION[kind]}
    load = load_record(before, snapshot(), own_cpu_s=process_cpu_s() - own)
    return {"matmul_gflops": rates,
            "matmul_calibration": {"sizes": {n: s for n, s in CALIBRATION[kind]}, "repeats": CALIBRATION_REPEATS,
                                   "min_s": CALIBRATION_MIN_S, "statistic": "best", **load}}


def capture_environment(device: str = "cpu", calibrate_matmul: bool | None = None) -> dict[str, Any]:
    """A JSON-ready description of this machine and checkout, captured once per run; with the dense
    matmul calibration (default unless $BENCH_CALIBRATE=0) that % of peak is measured against."""
    import torch  # torch only when measuring: the CLI imports this module (host_id, REPO_ROOT) torch-free

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "device_name": _cpu_name() if device == "cpu" else None,
        "cuda": torch.version.cuda,
        "driver": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
        env["driver"] = _nvml_driver()
        env["gpu_memory_mib"] = torch.cuda.get_device_properties(0).total_memory // 2**20
    env.update(git_info())
    if calibrate_matmul is None:
        calibrate_matmul = os.environ.get(CALIBRATE_ENV, "1").strip() not in ("0", "false", "no")
    if calibrate_matmul and (device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available())):
        try:
            env.update(calibrate(device))
        except Exception as exc:  # a calibration never stops a run; the report then has no % of peak
            env["matmul_calibration"] = {"error": f"{type(exc).__name__}: {exc}"}
    return env
