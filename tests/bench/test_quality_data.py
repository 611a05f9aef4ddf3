"""Byte corpora: the stdlib rule on a synthetic tree and on the real standard library, enwik8's
checks and split on a small stand-in file, and the resumable batch sampler."""
from __future__ import annotations

import hashlib
import platform
import sysconfig

import pytest
import torch

from bench.quality.data import (
    BatchSampler, CorpusError, enwik8_corpus, load_corpus, stdlib_corpus, stdlib_files,
)


def _tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)


def test_stdlib_rule_on_a_synthetic_tree(tmp_path):
    _tree(tmp_path, {
        "b.py": b"B", "a.py": b"A", "pkg/z.py": b"Z", "pkg/__init__.py": b"I", "notes.txt": b"no",
        "site-packages/x.py": b"no", "test/test_a.py": b"no", "pkg/tests/t.py": b"no",
        "idlelib/idle_test/t.py": b"no", "idlelib/run.py": b"R", "__pycache__/a.py": b"no",
    })
    assert stdlib_files(tmp_path) == ["a.py", "b.py", "idlelib/run.py", "pkg/__init__.py", "pkg/z.py"]
    corpus = stdlib_corpus(tmp_path)
    raw = b"ABRIZ"
    assert bytes(corpus.data.numpy()) == raw and corpus.n_files == 5
    assert corpus.sha256 == hashlib.sha256(raw).hexdigest()
    # 5 bytes: len // 20 = 0 held out; a larger tree holds out exactly its last 5%.
    _tree(tmp_path, {"c.py": bytes(range(200)) * 2})
    corpus = stdlib_corpus(tmp_path)
    n = corpus.data.numel()
    assert corpus.bounds == {"train": (0, n - n // 20), "valid": (n - n // 20, n)}
    assert bytes(corpus.split("valid").numpy()) == (b"AB" + bytes(range(200)) * 2 + b"RIZ")[-(n // 20):]


def test_real_stdlib_corpus_is_deterministic_and_split_95_5():
    first, second = stdlib_corpus(), load_corpus(None)
    assert first.sha256 == second.sha256 and torch.equal(first.data, second.data)
    n = first.data.numel()
    assert n > 1_000_000 and first.n_files > 100  # real source text, not an empty walk
    assert first.split("train").numel() + first.split("valid").numel() == n
    assert first.split("valid").numel() == n // 20
    meta = first.meta()
    assert meta["corpus"] == "stdlib" and meta["python_version"] == platform.python_version()
    assert meta["corpus_sha256"] == hashlib.sha256(bytes(first.data.numpy())).hexdigest()
    assert not any(part in {"site-packages", "test", "tests"} for rel in
                   stdlib_files(sysconfig.get_paths()["stdlib"]) for part in rel.split("/"))


def test_enwik8_checks_size_and_md5_and_splits_90_5_5(tmp_path):
    raw = bytes(range(256)) * 4 + bytes(976)  # 2000 bytes standing in for 10^8
    path = tmp_path / "enwik8"
    path.write_bytes(raw)
    corpus = enwik8_corpus(path, size=2000, md5=hashlib.md5(raw).hexdigest())
    assert corpus.bounds == {"train": (0, 1800), "valid": (1800, 1900), "test": (1900, 2000)}
    assert bytes(corpus.split("test").numpy()) == raw[1900:]
    assert corpus.sha256 == hashlib.sha256(raw).hexdigest()
    with pytest.raises(CorpusError, match="2000 bytes, enwik8 has 100000000"):
        enwik8_corpus(path)  # the real check: a small file is not enwik8
    with pytest.raises(CorpusError, match="md5"):
        enwik8_corpus(path, size=2000)
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(tmp_path / "missing")


def test_batch_sampler_windows_are_contiguous_shifted_and_resumable():
    data = torch.arange(1000, dtype=torch.int64).to(torch.uint8)  # byte i is i % 256
    sampler = BatchSampler(data, batch_size=8, seq_len=32, seed=7)
    x, y = sampler.batch(0)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal((x[:, 1:] - x[:, :-1]) % 256, torch.ones(8, 31, dtype=torch.int64))
    # A resumed sampler (a new object, same seed) gives the same batch at the same step.
    again = BatchSampler(data, batch_size=8, seq_len=32, seed=7)
    assert all(torch.equal(sampler.batch(s)[0], again.batch(s)[0]) for s in (0, 5, 123))
    assert not torch.equal(sampler.batch(1)[0], sampler.batch(0)[0])
    assert not torch.equal(BatchSampler(data, 8, 32, seed=8).batch(0)[0], x)


def test_batch_sampler_reaches_both_ends_of_the_split():
    data = torch.arange(40, dtype=torch.uint8)
    sampler = BatchSampler(data, batch_size=64, seq_len=8, seed=0)
    firsts = torch.cat([sampler.batch(s)[0][:, 0] for s in range(10)])
    lasts = torch.cat([sampler.batch(s)[1][:, -1] for s in range(10)])
    assert firsts.min() == 0 and lasts.max() == 39  # every start in [0, N - seq_len - 1]
    with pytest.raises(CorpusError, match="seq_len=40"):
        BatchSampler(data, batch_size=1, seq_len=40, seed=0)
