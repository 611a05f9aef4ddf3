"""`attention: local` in suites: accepted, canonicalised (chunk_len matters, LSH-only fields do not), measured."""
from __future__ import annotations

import pytest
import torch

from bench.grid import canonical_model
from bench.point import GridPoint
from bench.suite import SuiteError, load_suite

from .conftest import small_suite


def test_a_suite_with_local_attention_expands_and_keeps_chunk_len_only(write_suite):
    spec = small_suite(studies={"kinds": {"grid": {"attention": ["full", "lsh", "local"], "n_hashes": [1, 2],
                                                    "chunk_len": [16, 32]}}})
    spec["profiles"] = {"cpu": {}}
    points = [p.point for p in load_suite(write_suite(spec)).expand("cpu")]
    local = [p for p in points if p.model["attention"] == "local"]
    # n_hashes cannot change what local attention runs: its two values collapse to one point per chunk_len
    assert sorted(p.model["chunk_len"] for p in local) == [16, 32]
    assert all("n_hashes" not in p.model and "n_buckets" not in p.model for p in local)
    assert len({p.point_id for p in local}) == 2
    assert len([p for p in points if p.model["attention"] == "lsh"]) == 4


def test_canonical_model_of_local_drops_lsh_only_fields_but_chunk_len():
    settings = {"attention": "local", "n_hashes": 4, "chunk_len": 8, "n_buckets": 16, "same_bucket": True,
                "dup_correction": False, "hash_seed": 3, "d_model": 32}
    assert canonical_model(settings, list(settings)) == {"attention": "local", "chunk_len": 8, "d_model": 32}


def test_local_attention_with_separate_qk_is_refused_naming_the_field(write_suite):
    spec = small_suite(studies={"kinds": {"grid": {"attention": ["local"]}}})
    spec["base"]["shared_qk"] = False
    spec["profiles"] = {"cpu": {}}
    with pytest.raises(SuiteError, match="shared_qk"):
        load_suite(write_suite(spec))


def test_a_local_attention_point_is_measured_and_describes_its_chunks():
    from bench.measure_point import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = {"d_model": 32, "n_heads": 2, "shared_qk": True, "causal": True, "attention": "local", "chunk_len": 16}
        result = measure(GridPoint("test", "attention", "cpu", "float32", 2, 60, model, repeats=1, warmup=0))
    finally:
        torch.set_num_threads(threads)
    effective = result["effective"]
    assert (effective["attention"], effective["chunk_len"], effective["padded_len"], effective["n_chunks"]) == (
        "local", 16, 64, 4)
    assert effective["n_hashes"] is None and result["metrics"]["fwd_ms_median"] > 0
