"""Collects each micro-benchmark's time and saved bytes and writes one table with its environment."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROWS: list[dict] = []


@pytest.fixture(scope="session", autouse=True)
def _write_table():
    yield
    if not ROWS:  # filled only when the benchmarks really ran
        return
    from bench.environment import capture_environment

    device = ROWS[0]["device"]
    env = capture_environment(device)
    out = Path(os.environ.get("BENCH_TABLE", f"results/micro/attention_layer_{device}.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# One causal attention layer, forward + backward",
        "",
        f"batch 1, d_model 256, 4 heads of 64, chunk_len / bucket_size 64, {ROWS[0]['dtype']}. "
        "Time: pytest-benchmark median of the rounds; saved: bytes autograd keeps for backward.",
        "",
        f"Device: {env['device_name']} ({env['device']}), torch {env['torch']}, {env['torch_threads']} threads, "
        f"git {str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}, {env['date']}.",
        "",
        "Command: `make bench-micro` (env: BENCH_LENGTHS, BENCH_DEVICE, BENCH_DTYPE)",
        "",
        "| layer | seq_len | fwd+bwd median s | min s | rounds | saved for backward MiB | what ran |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(ROWS, key=lambda r: (r["seq_len"], r["order"])):
        lines.append(
            f"| {r['name']} | {r['seq_len']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['rounds']} "
            f"| {r['saved_mib']:.1f} | {r['effective']} |"
        )
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out}")
