"""One causal LSH layer (d_model 256, 4 heads of 64, chunk_len 64, batch 1, fp32), old code against
new in one run: fwd + bwd time at each length and round count (interleaved, median of repeats), then
peak RSS against bytes saved for backward, each configuration in a fresh process.

    .venv/bin/python benchmarks/lsh_old_vs_new.py --old-rev REV [--threads 2] [--out results/micro/x.md]

REV: the commit whose reformer_impl is the old code (extracted with `git archive` into a temporary
folder). Not a test: timings belong here, never in pass/fail tests.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, N_HEADS, CHUNK_LEN = 256, 4, 64


def _load(path: str):
    """reformer_impl imported from `path`, replacing any copy already imported."""
    for name in [n for n in sys.modules if n == "reformer_impl" or n.startswith("reformer_impl.")]:
        del sys.modules[name]
    sys.path.insert(0, path)
    try:
        return importlib.import_module("reformer_impl")
    finally:
        sys.path.pop(0)


def _layer_step(ri, seq_len: int, n_hashes: int, n_buckets=None):
    import torch

    cfg = ri.ReformerConfig(d_model=D_MODEL, n_heads=N_HEADS, chunk_len=CHUNK_LEN, causal=True, attention="lsh",
                            n_hashes=n_hashes, hash_seed=0, max_seq_len=seq_len, n_buckets=n_buckets)
    torch.manual_seed(0)
    layer = ri.build_attention(cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, seq_len, D_MODEL, generator=gen, requires_grad=True)
    grad = torch.randn(1, seq_len, D_MODEL, generator=gen)

    def forward():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        return layer(x)

    def step():
        forward().backward(grad)

    return layer, forward, grad, step


def _impls(old_dir: str) -> dict:
    return {"old": (old_dir, None), "new": (str(ROOT), None), "new factorised": (str(ROOT), "factorised")}


PEER = "reformer-pytorch 1.4.4"


def _peer_step(seq_len: int, n_hashes: int):
    """reformer-pytorch's LSHSelfAttention as the harness builds it (bench.workloads), or None."""
    sys.path.insert(0, str(ROOT))
    from bench.point import GridPoint
    from bench.workloads import WorkloadUnavailable, build_workload

    model = dict(d_model=D_MODEL, n_heads=N_HEADS, chunk_len=CHUNK_LEN, causal=True, attention="lsh",
                 n_hashes=n_hashes, shared_qk=True, dropout=0.0, hash_seed=0)
    point = GridPoint(suite="micro", workload="attention", device="cpu", dtype="float32", batch_size=1,
                      seq_len=seq_len, model=model, impl="reformer_pytorch")
    try:
        work = build_workload(point)
    except WorkloadUnavailable:
        return None

    def step():
        work.zero_grad()
        work.backward(work.forward())

    return step


def time_all(old_dir: str, lengths, rounds, repeats: int, peers: bool = False) -> list[dict]:
    """Median fwd + bwd seconds per (impl, length, rounds); impls interleaved repeat by repeat."""
    rows = []
    for seq_len in lengths:
        for n_hashes in rounds:
            steps = {}
            for name, (path, n_buckets) in _impls(old_dir).items():
                ri = _load(path)
                *_, step = _layer_step(ri, seq_len, n_hashes, n_buckets)
                step()  # warm-up
                steps[name] = step
            peer = _peer_step(seq_len, n_hashes) if peers else None
            if peer is not None:
                peer()
                steps[PEER] = peer
            times = {name: [] for name in steps}
            for _ in range(repeats):
                for name, step in steps.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    step()
                    times[name].append((time.perf_counter() - t0, time.process_time() - c0))
            for name, ts in times.items():
                rows.append(dict(impl=name, seq_len=seq_len, n_hashes=n_hashes,
                                 median_s=sorted(t for t, _ in ts)[len(ts) // 2],
                                 cpu_s=sorted(c for _, c in ts)[len(ts) // 2]))
            print(json.dumps([r for r in rows if r["seq_len"] == seq_len and r["n_hashes"] == n_hashes]), flush=True)
            del steps
    return rows


def memory_one(path: str, n_buckets, seq_len: int, n_hashes: int, threads: int) -> dict:
    """In this (fresh) process: saved-for-backward bytes and the peak RSS of one fwd + bwd over the
    RSS before the layer was built (as a memory-only bench.measure process reads it: every large
    allocation mmapped from the start, heap trimmed, so freed blocks never stay resident)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from bench.measure import (SavedTensorCounter, current_rss_mib, mmap_large_allocations, peak_rss_mib,
                               reset_peak_rss, trim_host_heap)

    torch.set_num_threads(threads)
    mmap_large_allocations()  # nothing is timed here
    ri = _load(path)
    baseline = current_rss_mib()
    layer, forward, grad, step = _layer_step(ri, seq_len, n_hashes, n_buckets)
    step()
    with SavedTensorCounter(exclude=list(layer.parameters())) as counter:
        out = forward()
    out.backward(grad)
    del out
    trim_host_heap()
    resident = current_rss_mib()  # libraries, weights, inputs and their gradients, after a step
    scope = "iteration" if reset_peak_rss() else "process"
    step()
    peak = peak_rss_mib()
    return dict(saved_mib=counter.mib, peak_rss_mib=peak, baseline_rss_mib=baseline, rss_delta_mib=peak - baseline,
                step_rss_mib=peak - resident, ratio=(peak - resident) / counter.mib, scope=scope)


def memory_all(old_dir: str, seq_len: int, rounds, threads: int) -> list[dict]:
    rows = []
    for n_hashes in rounds:
        for name, (path, n_buckets) in _impls(old_dir).items():
            arg = json.dumps([path, n_buckets, seq_len, n_hashes, threads])
            done = subprocess.run([sys.executable, __file__, "--memory-one", arg], capture_output=True, text=True, check=True)
            row = dict(impl=name, seq_len=seq_len, n_hashes=n_hashes, **json.loads(done.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _markdown(args, timing, memory, load_before, load_after) -> str:
    lines = [
        "# One causal LSH layer, old code against new, in one run", "",
        f"d_model {D_MODEL}, {N_HEADS} heads of {D_MODEL // N_HEADS}, chunk_len {CHUNK_LEN}, batch 1, fp32, "
        f"{args.threads} threads. Old: reformer_impl at {args.old_rev}. `new factorised`: n_buckets='factorised'.", "",
        f"Command: `.venv/bin/python benchmarks/lsh_old_vs_new.py --old-rev {args.old_rev} --threads {args.threads}"
        f"{' --skip-memory' if args.skip_memory else ''}{' --skip-timing' if args.skip_timing else ''}"
        f"{' --peers' if args.peers else ''}{f' --repeats {args.repeats}' if args.repeats != 3 else ''}`", "",
        f"Load before: `{load_before}`; after: `{load_after}`.", "",
    ]
    if timing:
        lines += [
            "## fwd + bwd time (median of repeats, s)", "",
            "Wall time, and the process's CPU time (all threads; with one thread it is the least disturbed by load).", "",
            "| seq_len | n_hashes | old | new | new / old | new factorised | factorised / old "
            "| old CPU | new CPU | new / old CPU |", "|---|---|---|---|---|---|---|---|---|---|",
        ]
    by = {(r["impl"], r["seq_len"], r["n_hashes"]): r for r in timing}
    for seq_len in args.lengths if timing else ():
        for n in args.rounds:
            old, new, fac = (by[(impl, seq_len, n)] for impl in ("old", "new", "new factorised"))
            lines.append(f"| {seq_len} | {n} | {old['median_s']:.3f} | {new['median_s']:.3f} "
                         f"| {new['median_s'] / old['median_s']:.2f} | {fac['median_s']:.3f} "
                         f"| {fac['median_s'] / old['median_s']:.2f} | {old['cpu_s']:.3f} | {new['cpu_s']:.3f} "
                         f"| {new['cpu_s'] / old['cpu_s']:.2f} |")
    peer_rows = [r for r in timing if r["impl"] == PEER]
    if peer_rows:
        lines += ["", f"### against {PEER} (its LSHSelfAttention as bench.workloads builds it), same run", "",
                  "| seq_len | n_hashes | reformer-pytorch | old / rp | new / rp | new factorised / rp |",
                  "|---|---|---|---|---|---|"]
        for r in peer_rows:
            key = (r["seq_len"], r["n_hashes"])
            ratios = " | ".join(f"{by[(impl, *key)]['median_s'] / r['median_s']:.2f}" for impl in ("old", "new", "new factorised"))
            lines.append(f"| {key[0]} | {key[1]} | {r['median_s']:.3f} | {ratios} |")
    if not memory:
        return "\n".join(lines) + "\n"
    lines += ["", f"## peak RSS against bytes saved for backward, {args.memory_len} tokens (fresh process each)", "",
              "RSS delta: peak RSS of one fwd + bwd minus the RSS before the layer was built (weights, inputs, "
              "their gradients and the libraries' first-use pages included). Step RSS: that peak minus the RSS "
              "just before the step (after a warm-up step, heap trimmed): what the step itself adds. Every "
              "allocation above 128 KiB is mmapped from the process's start, so RSS follows live memory.", "",
              "| n_hashes | impl | saved MiB | peak RSS MiB | RSS delta MiB | RSS delta / saved | step RSS MiB "
              "| step RSS / saved |", "|---|---|---|---|---|---|---|---|"]
    for r in memory:
        lines.append(f"| {r['n_hashes']} | {r['impl']} | {r['saved_mib']:.1f} | {r['peak_rss_mib']:.0f} "
                     f"| {r['rss_delta_mib']:.0f} | {r['rss_delta_mib'] / r['saved_mib']:.2f} "
                     f"| {r['step_rss_mib']:.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-rev", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 16384])
    parser.add_argument("--rounds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--memory-len", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default results/micro/lsh_old_vs_new_cpu_<threads>t.md")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--peers", action="store_true", help="also time reformer-pytorch's layer (when installed)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old_rev, "reformer_impl"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        load_before = _uptime()
        timing = [] if args.skip_timing else time_all(tmp, args.lengths, args.rounds, args.repeats, args.peers)
        memory = [] if args.skip_memory else memory_all(tmp, args.memory_len, args.rounds, args.threads)
        load_after = _uptime()
    part = "memory" if args.skip_timing else f"time_{args.threads}t" if args.skip_memory else f"{args.threads}t"
    part += "_peers" if args.peers and not args.skip_timing else ""
    args.out = args.out or ROOT / f"results/micro/lsh_old_vs_new_cpu_{part}.md"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_markdown(args, timing, memory, load_before, load_after))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-one":
        path, n_buckets, seq_len, n_hashes, threads = json.loads(sys.argv[2])
        print(json.dumps(memory_one(path, n_buckets, seq_len, n_hashes, threads)))
    else:
        main()
