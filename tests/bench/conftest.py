"""Shared helpers for the harness tests: suite files written from dicts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[..., Path]:
    """Write a suite dict as YAML under tmp_path and return the path."""

    def write(spec: dict[str, Any], name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def lsh_point(seq_len: int, device: str = "cpu"):
    """One LSH attention point of the memory suite: what the cluster executors' tests hand out."""
    from bench.point import GridPoint

    return GridPoint(suite="memory", workload="attention", device=device, dtype="float32", batch_size=1,
                     seq_len=seq_len, model={"attention": "lsh", "n_hashes": 2}, studies=("memory",))


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


@pytest.fixture
def planted_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A W&B key in the environment and another in a netrc file (NETRC): what must never be published."""
    env_key, netrc_key = "wandb-env-key-0123456789abcdef", "netrc-pass-9876543210fedcba"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {netrc_key}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("WANDB_API_KEY", env_key)
    monkeypatch.setenv("NETRC", str(netrc))
    return env_key, netrc_key
