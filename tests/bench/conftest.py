"""Shared helpers for the harness tests: suite files written from dicts, a stub worker script."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# A worker whose measurement is chosen by point.model["stub"], so executor tests need no model.
STUB_WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    from bench.worker import main

    def measure(point):
        mode = point.model["stub"]
        if mode == "ok":
            print("a stray print that is not a record")
            return {"metrics": {"fwd_ms_median": 1.5}, "effective": {"attention": "stub"},
                    "params": {"extra": 1}}
        if mode == "oom":
            raise MemoryError("stub ran out of host memory")
        if mode == "error":
            raise ValueError("stub failure")
        if mode == "exit":
            sys.stderr.write("stub is dying\\n")
            sys.stderr.flush()
            os._exit(3)
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "sleep":
            time.sleep(60)
        if mode == "hog":
            ballast = b"x" * (400 * 2**20)  # written, so resident
            time.sleep(60)
        raise AssertionError(mode)

    sys.exit(main(measure))
    """
)


@pytest.fixture
def stub_worker(tmp_path: Path) -> list[str]:
    """The command line of the stub worker."""
    import sys

    path = tmp_path / "stub_worker.py"
    path.write_text(STUB_WORKER)
    return [sys.executable, str(path)]


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[..., Path]:
    """Write a suite dict as YAML under tmp_path and return the path."""

    def write(spec: dict[str, Any], name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def small_suite(**changes: Any) -> dict[str, Any]:
    """A valid two-study suite to start each validation test from."""
    spec: dict[str, Any] = {
        "name": "small",
        "description": "test suite",
        "base": {"workload": "attention", "d_model": 32, "n_heads": 2, "attention": "lsh",
                 "n_hashes": 1, "chunk_len": 16, "seq_len": 64},
        "repeats": 2,
        "warmup": 1,
        "timeout_s": 60,
        "studies": {
            "kinds": {"grid": {"attention": ["full", "lsh"], "seq_len": [64, 128]},
                      "plot": {"x": "seq_len", "hue": "attention", "y": ["fwd_ms_median"]}},
            "hashes": {"grid": {"n_hashes": [1, 2]}},
        },
        "profiles": {"cpu": {}, "gpu": {"base": {"dtype": "bfloat16"},
                                        "studies": {"kinds": {"grid": {"seq_len": [256]}}}}},
    }
    spec.update(changes)
    return spec
