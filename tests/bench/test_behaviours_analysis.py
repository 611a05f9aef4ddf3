"""Behaviours of the analysis code that a slip would break silently: the LSH approximation's
relative error is measured against the full output's norm, `bench compare` flags a quality run
whose bits per byte improved beyond the noise as well as one that got worse, and the NVML sampler
reads once more when its region ends."""
from __future__ import annotations

import pytest
import torch

from bench import nvml
from bench.cli import main
from bench.compare import compare_runs
from bench.quality.approximation import approximation, lsh_attention, relative_error
from reformer_impl.attention.base import shared_keys
from reformer_impl.attention.full import dense_attention

from .test_compare import _quality_run
from .test_nvml import Live

MIB = 2**20


def test_relative_error_divides_by_the_norm_of_the_reference():
    exact = torch.tensor([3.0, 4.0])  # norm 5
    assert relative_error(3 * exact, exact) == pytest.approx(2.0)  # ||2 exact|| / ||exact||, not / ||3 exact||
    assert relative_error(exact / 2, exact) == pytest.approx(0.5)


def test_the_lsh_approximation_error_is_relative_to_full_attention_s_output():
    gen = torch.Generator().manual_seed(0)
    q, v = (torch.randn(1, 2, 64, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    full = dense_attention(q, shared_keys(q), v, scale=1.0, causal=True, self_mask=True)  # the reference
    lsh, _ = lsh_attention(q, v, n_hashes=1, chunk_len=8, seed=3, causal=True)
    diff, norm_full, norm_lsh = (float(torch.linalg.vector_norm(x)) for x in (lsh - full, full, lsh))
    assert abs(norm_lsh - norm_full) > 0.05 * norm_full  # the two denominators tell apart
    result = approximation(q, v, n_hashes=1, chunk_len=8, seed=3, causal=True)
    assert result.relative_error == pytest.approx(diff / norm_full, rel=1e-9)


def test_compare_flags_a_quality_run_whose_bpb_improved_beyond_the_seed_spread(tmp_path, capsys):
    a = _quality_run(tmp_path / "a")  # seed spread 0.1 on both sides
    b = _quality_run(tmp_path / "b", shift={("lsh-2", "lsh-8"): -0.3, ("full", "as trained"): -0.05})
    q = compare_runs(a, b).quality.set_index(["model", "setting"])
    assert q.loc[("lsh-2", "lsh-8"), "diff"] == pytest.approx(-0.3) and q.loc[("lsh-2", "lsh-8"), "flag"] == "BPB"
    assert q.loc[("full", "as trained"), "flag"] == ""  # better too, but inside the seed spread
    assert (q["flag"] == "BPB").sum() == 1
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "final bpb beyond both runs' seed spreads at 1 of 4: lsh-2 lsh-8 -0.3000" in out
    assert "BPB      lsh-2 lsh-8: B - A -0.3000 bpb" in out


def test_the_sampler_reads_when_the_region_ends_so_a_last_moment_peak_counts():
    """The background thread would sample only after an hour: what the region's last moment holds
    is seen by the reading taken as the region ends."""
    level = {"bytes": 1 * MIB}
    sampler = nvml.PeakSampler(Live(level, watch=None), interval_s=3600.0)
    with sampler:
        level["bytes"] = 96 * MIB  # reached in the last interval, still held when the region ends
    assert sampler.peaks_mib() == {"nvml_device_peak_mib": 96.0, "nvml_process_peak_mib": 48.0}
    assert sampler.n_samples == 2  # entry and exit: the thread never read
