"""Where one causal LSH layer's fwd + bwd time goes, by reformer_impl.STAGES (one profiled step
after a warm-up, per length and round count). Ranges nest: window_attention holds dup_counts,
lsh_backward holds the backward's gathers. Not a test.

    .venv/bin/python benchmarks/lsh_stages.py [--lengths 4096,16384] [--rounds 1,4] [--n-buckets factorised]
"""
from __future__ import annotations

import argparse
import subprocess

import torch
from torch.profiler import ProfilerActivity, profile

from reformer_impl import STAGES, ReformerConfig, build_attention


def stage_ms(seq_len: int, n_hashes: int, n_buckets) -> tuple[dict, float]:
    cfg = ReformerConfig(d_model=256, n_heads=4, chunk_len=64, n_hashes=n_hashes, hash_seed=0,
                         max_seq_len=seq_len, n_buckets=n_buckets)
    torch.manual_seed(0)
    layer = build_attention(cfg)
    x = torch.randn(1, seq_len, 256, requires_grad=True)
    grad = torch.randn(1, seq_len, 256)
    layer(x).backward(grad)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x).backward(grad)
    events = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in events.values()) / 1e3
    return {s: events[s].cpu_time_total / 1e3 for s in STAGES if s in events}, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 16384])
    parser.add_argument("--rounds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--n-buckets", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"threads {args.threads}, n_buckets={args.n_buckets}; ms of profiled CPU time (stage totals, nested)")
    names = [s.removeprefix("reformer.") for s in STAGES[:7]]
    print("| seq_len | n_hashes | step | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for seq_len in args.lengths:
        for n in args.rounds:
            ms, total = stage_ms(seq_len, n, args.n_buckets)
            cells = " | ".join(f"{ms.get(s, 0.0):.0f}" for s in STAGES[:7])
            print(f"| {seq_len} | {n} | {total:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
