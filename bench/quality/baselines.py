"""Count-model baselines for the quality report: how many bits per byte a model that only counts
which byte followed each context of k bytes in the training split scores on the very bytes the
trained models are scored on. Pure functions over numpy byte arrays; nothing is fitted but counts.

Rule (exact, so the report can state it): an order-k model predicts byte x_t from the k bytes
before it, c = x_{t-k} .. x_{t-1}, with the add-1/2 estimate over the 256-byte alphabet

    p(b | c) = (n(c, b) + 1/2) / (n(c) + 256 / 2),

where n(c, b) counts the positions of the training split (those with k bytes before them in it)
whose context is c and whose byte is b, and n(c) = sum_b n(c, b). 1/2 is the Krichevsky-Trofimov
(Jeffreys-prior) pseudo-count: fixed in advance, fitted on nothing, the same for every order. An
unseen context gets the uniform 8 bits. The scored bytes are the evaluation windows' targets (see
bench.quality.metrics.eval_starts); a target's context is the k bytes before it in the corpus, so
the first targets of a window may look up to k (<= 3) bytes before the window, which the trained
models cannot: at most 3 of each window's seq_len targets get that extra context.

Counting is exact and vectorised: contexts and (context, byte) pairs are integer keys (at most
8 * (k + 1) <= 32 bits), sorted once, and looked up with searchsorted; no hashing collisions, no
Python loop over bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

ALPHABET = 256
ALPHA = 0.5  # the pseudo-count added to every (context, byte) count
ORDERS = (0, 1, 2, 3)
MAX_ORDER = 3  # keys of order k use 8 * (k + 1) bits: 32 at order 3, safe in int64
RULE = (f"Count models of orders {', '.join(map(str, ORDERS))}: order k predicts each byte from the k bytes before "
        f"it with p(b | c) = (n(c, b) + {ALPHA}) / (n(c) + {ALPHABET} x {ALPHA}), counts n from the training split "
        f"(add-{ALPHA} over the {ALPHABET}-byte alphabet, the Krichevsky-Trofimov pseudo-count: fitted on nothing; an "
        f"unseen context scores 8 bits), scored on the same held-out windows and target bytes as the trained models "
        f"(a target's context is the k bytes before it in the corpus).")


def _keys(data: np.ndarray, positions: np.ndarray, order: int) -> np.ndarray:
    """(context << 8) | byte for each position: the `order` bytes before it, nearest lowest, then its own."""
    key = data[positions].astype(np.int64)
    for i in range(1, order + 1):
        key |= data[positions - i].astype(np.int64) << (8 * i)
    return key


@dataclass(frozen=True)
class CountModel:
    """The sorted (context, byte) keys of a training text, for order `order`."""

    order: int
    keys: np.ndarray  # sorted int64
    alpha: float = ALPHA

    def bits(self, data: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """-log2 p(data[t] | its `order` preceding bytes) for each t in `positions` (each >= order)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and positions.min() < self.order:
            raise ValueError(f"order {self.order}: position {int(positions.min())} has fewer bytes before it")
        q = _keys(np.asarray(data, dtype=np.uint8), positions, self.order)
        pair = np.searchsorted(self.keys, q, "right") - np.searchsorted(self.keys, q, "left")
        ctx_keys, ctx = self.keys >> 8, q >> 8
        seen = np.searchsorted(ctx_keys, ctx, "right") - np.searchsorted(ctx_keys, ctx, "left")
        return -np.log2((pair + self.alpha) / (seen + ALPHABET * self.alpha))


def fit_count_model(train: np.ndarray, order: int, alpha: float = ALPHA) -> CountModel:
    """Count every (context, byte) of `train` ((N,) uint8) with `order` bytes before it in `train`."""
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order={order}: count models of orders 0..{MAX_ORDER} only")
    if alpha <= 0:
        raise ValueError(f"alpha={alpha}: the pseudo-count must be positive")
    train = np.asarray(train, dtype=np.uint8)
    return CountModel(order, np.sort(_keys(train, np.arange(order, train.size), order)), alpha)


def window_targets(offset: int, starts: Sequence[int], seq_len: int) -> np.ndarray:
    """(W, seq_len) corpus positions of the targets of windows starting at `starts` of a split at `offset`."""
    return offset + np.asarray(starts, dtype=np.int64)[:, None] + 1 + np.arange(seq_len)


@dataclass(frozen=True)
class Baseline:
    """One count model's score on the evaluation windows: overall bpb and each window's."""

    order: int
    alpha: float
    bpb: float
    window_bpb: tuple[float, ...]
    n_bytes: int

    def row(self, digits: int = 5) -> dict[str, Any]:
        return {"model": f"count-order-{self.order}", "order": self.order, "alpha": self.alpha,
                "bpb": self.bpb, "n_bytes": self.n_bytes, "window_bpb": [round(v, digits) for v in self.window_bpb]}


def count_baselines(data: np.ndarray, train: tuple[int, int], targets: np.ndarray,
                    orders: Iterable[int] = ORDERS, alpha: float = ALPHA) -> list[Baseline]:
    """Each order's bpb on `targets` ((W, L) positions in `data`), counted on data[train[0]:train[1]]."""
    data = np.asarray(data, dtype=np.uint8)
    out = []
    for k in orders:
        bits = fit_count_model(data[train[0]:train[1]], k, alpha).bits(data, targets.ravel()).reshape(targets.shape)
        out.append(Baseline(k, alpha, float(bits.mean()), tuple(float(v) for v in bits.mean(axis=1)), int(bits.size)))
    return out

