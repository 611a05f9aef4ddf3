"""Stage ranges: every stage of STAGES appears in a profiled LSH training step, none outside it."""
import torch
from torch.profiler import ProfilerActivity, profile

from reformer_impl import STAGES, ReformerLM, lm_loss, profiling
from tests.reformer_impl.conftest import tiny_cfg


def test_every_stage_appears_in_a_profiled_lsh_step():
    model = ReformerLM(tiny_cfg(attention="lsh", n_hashes=2, reversible=True, ff_chunks=2, n_layers=2))
    tokens = torch.randint(0, 13, (2, 24))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        lm_loss(model(tokens), tokens).backward()
    names = {e.key for e in prof.key_averages()}
    assert set(STAGES) <= names, set(STAGES) - names
    assert {n for n in names if n.startswith("reformer.")} == set(STAGES)  # no range outside the list
    assert len(set(STAGES)) == len(STAGES)


def test_stage_is_a_no_op_without_a_profiler():
    assert profiling.stage(profiling.HASH) is profiling.stage(profiling.GATHER)  # the one shared no-op
    with profile(activities=[ProfilerActivity.CPU]):
        assert isinstance(profiling.stage(profiling.HASH), torch.profiler.record_function)
