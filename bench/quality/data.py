"""Byte-level text corpora for the quality study: the running Python's standard library (offline,
every machine has it) or enwik8 when the user has the file. Nothing is downloaded.

stdlib rule (exact, so the sha256 names one corpus per Python build): every regular file whose name
ends in `.py` under `sysconfig.get_paths()["stdlib"]`, walked without following directory links,
skipping any directory named in `STDLIB_EXCLUDED_DIRS` (third-party packages and test suites);
files ordered by their path relative to that root (POSIX form, compared as str), their bytes
concatenated with nothing between them. The last `len // 20` bytes (5%) are the validation split.

enwik8: the 100,000,000-byte file of the Hutter prize, checked by size and by the MD5 published with
it (mattmahoney.net/dc/textdata.html); splits [0, 90M) train, [90M, 95M) valid, [95M, 100M) test.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
STDLIB_VALID_DIVISOR = 20  # the last len // 20 bytes (5%) are held out

ENWIK8_SIZE = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"  # published by M. Mahoney beside the file
# Not published by the author; the value many independent users report for the same file.
ENWIK8_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
ENWIK8_SPLITS = (("train", 0.90), ("valid", 0.05), ("test", 0.05))


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Corpus:
    """A byte corpus and its splits (uint8 tensors viewing one buffer) with the metadata every
    record carries: which corpus, its sha256, its size, and the split boundaries."""

    name: str  # "stdlib" | "enwik8"
    data: torch.Tensor = field(repr=False)  # (N,) uint8
    bounds: dict[str, tuple[int, int]]  # split -> [start, stop)
    sha256: str
    python_version: str
    n_files: Optional[int] = None  # stdlib: how many files were concatenated

    def split(self, name: str) -> torch.Tensor:
        """The bytes of one split, (n,) uint8 (a view)."""
        if name not in self.bounds:
            raise CorpusError(f"corpus {self.name!r} has no split {name!r}; it has {sorted(self.bounds)}")
        start, stop = self.bounds[name]
        return self.data[start:stop]

    def meta(self) -> dict:
        """Flat, JSON-ready description for records and reports."""
        return {
            "corpus": self.name, "corpus_sha256": self.sha256, "corpus_bytes": int(self.data.numel()),
            "python_version": self.python_version, "corpus_files": self.n_files,
            **{f"{split}_bytes": stop - start for split, (start, stop) in self.bounds.items()},
        }


def _as_tensor(raw: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[str]:
    """Relative POSIX paths of the corpus's files under `root`, in corpus order (see module doc)."""
    found = []
    for directory, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if d not in STDLIB_EXCLUDED_DIRS]
        for name in files:
            path = Path(directory, name)
            if name.endswith(".py") and path.is_file():
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def stdlib_corpus(root: Optional[Path] = None) -> Corpus:
    """The standard library's source as one byte corpus, last 5% held out for validation."""
    root = Path(root) if root is not None else stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise CorpusError(f"no .py files under {root}: no standard-library source to train on")
    raw = b"".join((root / rel).read_bytes() for rel in files)
    n_valid = len(raw) // STDLIB_VALID_DIVISOR
    return Corpus(
        name="stdlib", data=_as_tensor(raw),
        bounds={"train": (0, len(raw) - n_valid), "valid": (len(raw) - n_valid, len(raw))},
        sha256=hashlib.sha256(raw).hexdigest(), python_version=platform.python_version(), n_files=len(files),
    )


def enwik8_corpus(path: Path, *, size: int = ENWIK8_SIZE, md5: str = ENWIK8_MD5) -> Corpus:
    """enwik8 from `path`, refused unless it has enwik8's size and MD5. `size` and `md5` exist so
    the split logic can be tested on a small file; the split fractions are the standard 90/5/5."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"--data {path}: no such file")
    actual = path.stat().st_size
    if actual != size:
        raise CorpusError(f"--data {path}: {actual} bytes, enwik8 has {size}")
    raw = path.read_bytes()
    digest = hashlib.md5(raw).hexdigest()
    if digest != md5:
        raise CorpusError(f"--data {path}: md5 {digest}, enwik8's is {md5}")
    bounds, start = {}, 0
    for split, fraction in ENWIK8_SPLITS:
        stop = start + round(size * fraction)
        bounds[split] = (start, stop)
        start = stop
    return Corpus(name="enwik8", data=_as_tensor(raw), bounds=bounds, sha256=hashlib.sha256(raw).hexdigest(),
                  python_version=platform.python_version())


def load_corpus(data: Optional[Path] = None) -> Corpus:
    """The corpus `--data` names: enwik8 at that path, or the standard library when None."""
    return stdlib_corpus() if data is None else enwik8_corpus(data)


@dataclass(frozen=True)
class BatchSampler:
    """Random training windows of seq_len + 1 bytes. Batch `step` depends only on (seed, step), so
    resuming at step s needs nothing but s; no generator state to checkpoint."""

    data: torch.Tensor = field(repr=False)  # (N,) uint8
    batch_size: int
    seq_len: int
    seed: int

    def __post_init__(self) -> None:
        if self.data.numel() < self.seq_len + 1:
            raise CorpusError(f"seq_len={self.seq_len}: the split has only {self.data.numel()} bytes")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64; targets are inputs shifted by one."""
        rng = np.random.default_rng([self.seed, step])  # an independent stream per (seed, step)
        starts = rng.integers(0, self.data.numel() - self.seq_len, size=self.batch_size)
        offsets = torch.from_numpy(starts)[:, None] + torch.arange(self.seq_len + 1)
        windows = self.data[offsets].long()  # (B, seq_len + 1)
        return windows[:, :-1], windows[:, 1:]
