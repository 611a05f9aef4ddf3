"""The quality studies' verdicts, computed from bpb per seed (never written by hand): each claim's
comparisons as differences paired by training seed, the rule that calls a difference real, the
check that recomputation leaves the function alone, and the templated reasons a claim may not
reproduce at this scale. Pure functions over numbers; nothing here reads files or draws."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from bench.quality.report_frames import AS_TRAINED, Spread, spread

# A difference smaller than this is not worth a claim even when every seed agrees on its sign: the
# paper's curves (Figs. 3-6) cannot be read closer than about 0.01-0.02 bpb.
MIN_REAL_BPB = 0.01
# Two models that compute the same function may still differ by float32 rounding in the evaluation
# sums (eps 1.2e-7 relative, ~8 bpb, a few hundred terms): 1e-5 bpb is well above that, far below
# any training effect.
COINCIDE_BPB = 1e-5
OUTCOMES = ("reproduces", "within noise", "does not reproduce")
CONFIDENCE = 0.95  # the intervals of paired differences
# A study's reference model must be at least this far below the no-attention control and below the best
# count model (orders 0-3, add-1/2) before any of its differences is read as a verdict. Why 0.1 bpb:
# (1) it is 10x MIN_REAL_BPB, so a difference the verdicts weigh (0.01 and up) is small beside how far
# the reference has left n-gram statistics behind; (2) it is above the seed-to-seed spread of final
# bpb in this harness's runs (<= 0.03); (3) it is of the size of what a count model's smoothing rule is
# worth: on the stdlib corpus other add-k pseudo-counts (1 down to 0.01) move the order-3 model by +0.10
# to -0.14 bpb around add-1/2's, so passing means beating the counts by about as much as the choice of
# smoothing could move them. A reference near the margin is only near the best 4-gram counts: the
# report prints every margin, for a reader who wants a stricter bar.
LEARNED_MARGIN_BPB = 0.1
AT_NGRAM = "inconclusive: the models are at n-gram level"
NO_BASELINES = "inconclusive: no baselines recorded"
NO_REFERENCE = "inconclusive: the reference model was not evaluated"
RULE = (f"**Verdict rule.** Every model trained with seed *s* saw the same batches in the same order, and every "
        f"model is scored on the same held-out windows, so each comparison pairs them: d_s,w = bpb(model, s, w) "
        f"- bpb(reference, s, w), lower is better. Its **{CONFIDENCE:.0%} interval** is a t-interval of the mean "
        f"d over seeds and windows: the mean's variance over a seeds x windows grid has a part from the seed means "
        f"and one from the window means, each scaled by its own t quantile (S - 1 and W - 1 degrees of freedom: "
        f"two seeds are not read as if they were 256 windows), over windows alone with one seed (then it omits "
        f"seed-to-seed noise); records without per-window bpb (runs before they were kept) have no interval. A "
        f"difference is **real** when every seed's mean d_s has the same sign, the interval excludes 0 and "
        f"|mean d| >= {MIN_REAL_BPB} bpb (a practical threshold: smaller gaps are not read off the paper's "
        f"curves either); otherwise it is **within noise**. **reproduces**: real and pointing the way the claim "
        f"says; **does not reproduce**: real and pointing the other way. For claims that a Reformer trick is "
        f"*not worse* (shared QK, reversible layers, the most hash rounds against full attention), within noise "
        f"counts as reproduced. A claim part reproduces when all its comparisons do, fails when any fails, and "
        f"is within noise otherwise; the study's verdict is its weakest part. **Only models that learned:** a "
        f"study's verdict is *{AT_NGRAM}* unless its reference model's mean bpb is at least "
        f"{LEARNED_MARGIN_BPB} bpb below both the no-attention control (the same network, attention "
        f"replaced by zeros) and the best count model of orders 0-3 (*{NO_BASELINES}* where the run has "
        f"neither); a difference between models that have not begun to use their context says nothing about "
        f"attention. {LEARNED_MARGIN_BPB} bpb is 10x the smallest difference called real, about the seed "
        f"spread of final bpb (this run's largest is stated below) and of the size of what a count model's smoothing "
        f"is worth (other add-k pseudo-counts move the stdlib order-3 model by -0.14 to +0.10 bpb), so a "
        f"reference near the margin is only near the best 4-gram counts: every margin is printed. The unpaired "
        f"means and "
        f"min–max over seeds are shown beside, for reference only.")

# ---------------------------------------------------------------------------------- paired rule


def classify(diffs: Sequence[float], threshold: float = MIN_REAL_BPB, interval: Optional["Interval"] = None) -> str:
    """'reproduces' (a below the reference) or 'does not reproduce' (above) when every paired
    difference d_s = a_s - b_s has one sign, |mean d| >= threshold and `interval` (when known)
    excludes 0; 'within noise' otherwise."""
    if not diffs:
        return "not measured"
    mean = sum(diffs) / len(diffs)
    one_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    if not one_sign or abs(mean) < threshold - 1e-12:  # 1e-12: 2.01 - 2.0 is 0.00999...
        return "within noise"
    if interval is not None and not interval.excludes_zero:
        return "within noise"
    return "reproduces" if mean < 0 else "does not reproduce"

# -------------------------------------------------------------------------------- the interval


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` (> 0, any real) degrees of freedom, by
    bisection on its distribution function; the normal quantile for df = inf."""
    if not 0.5 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile(p={p}, df={df}): needs 0.5 < p < 1 and df > 0")
    tail = 2.0 * (1.0 - p)  # P(|T| > t)
    if math.isinf(df):
        upper = lambda t: math.erfc(t / math.sqrt(2.0))  # noqa: E731
    else:
        upper = lambda t: _betainc(df / 2.0, 0.5, df / (df + t * t))  # noqa: E731
    lo, hi = 0.0, 1.0
    while upper(hi) > tail:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if upper(mid) > tail else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """A CONFIDENCE interval of a mean paired difference over `n_seeds` x `n_windows` values."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    n_windows: int  # 1: the records kept only each evaluation's mean

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    @property
    def over(self) -> str:
        """What the interval's spread comes from, in words."""
        if self.n_windows > 1 and self.n_seeds > 1:
            return f"{self.n_seeds} seeds x {self.n_windows} windows"
        if self.n_windows > 1:
            return f"{self.n_windows} windows of one seed (no seed-to-seed noise)"
        return f"{self.n_seeds} seeds (one window each)"


def paired_interval(diffs: Any, confidence: float = CONFIDENCE) -> Optional[Interval]:
    """The interval of the mean of d[s, w], paired differences of S seeds x W windows (a 2-D array;
    W = 1 when only each seed's mean is known). Seeds and windows are crossed random effects,
    d = mu + a_s + b_w + e_sw, and the mean's variance sigma_a^2/S + sigma_b^2/W + sigma_e^2/(SW)
    has two estimated parts: MS_seeds / (SW), MS_seeds = W var(seed means) with S - 1 degrees of
    freedom, and MS_windows / (SW), MS_windows = S var(window means) with W - 1. The half-width is
    sqrt((t_{S-1}^2 MS_seeds + t_{W-1}^2 MS_windows) / (SW)): each part scaled by its own t quantile,
    so two seeds are not read as if they were 256 windows (Satterthwaite's pooled degrees of freedom
    covered only 89% with 2 seeds in simulation; this covers 95-98%, and counts sigma_e^2/(SW) once
    more than it should, a share that vanishes with many windows). One seed: the ordinary t-interval
    over windows; one window: the one over seeds. None for a single value."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.size < 2 or not np.isfinite(d).all():
        return None
    n_s, n_w = d.shape
    mean = float(d.mean())
    q = 0.5 + confidence / 2
    scaled = 0.0
    if n_s > 1:
        scaled += t_quantile(q, n_s - 1) ** 2 * n_w * float(np.var(d.mean(axis=1), ddof=1))
    if n_w > 1:
        scaled += t_quantile(q, n_w - 1) ** 2 * n_s * float(np.var(d.mean(axis=0), ddof=1))
    half = math.sqrt(scaled / (n_s * n_w))
    return Interval(mean, mean - half, mean + half, n_s, n_w)


Windows = Mapping[tuple[str, str], Mapping[Any, Sequence[float]]]  # (model, setting) -> {seed: per-window bpb}


def comparison_interval(a: tuple[str, str], b: tuple[str, str], windows: Windows,
                        seeds: Sequence[Any]) -> Optional[Interval]:
    """The interval of a - b over `seeds` and held-out windows, where both sides kept the same number
    of per-window figures for every one of those seeds; None otherwise (records without per-window
    bpb, from before they were kept: the sign rule and the threshold alone decide, as they did)."""
    wa, wb = windows.get(a) or {}, windows.get(b) or {}
    rows = []
    for s in seeds:
        x, y = wa.get(s), wb.get(s)
        if x is None or y is None or len(x) != len(y) or not len(x):
            return None
        rows.append(np.asarray(x, dtype=float) - np.asarray(y, dtype=float))
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return paired_interval(np.stack(rows))


@dataclass(frozen=True)
class Paired:
    """Differences a_s - b_s over the seeds both sides have, in seed order."""

    seeds: tuple[Any, ...]
    diffs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.diffs) / len(self.diffs)

    @property
    def lo(self) -> float:
        return min(self.diffs)

    @property
    def hi(self) -> float:
        return max(self.diffs)

    @property
    def outcome(self) -> str:
        return classify(self.diffs)


def paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> Optional[Paired]:
    """a - b per seed both have; None when they share no seed."""
    seeds = tuple(sorted((s for s in a if s in b), key=str))
    return Paired(seeds, tuple(a[s] - b[s] for s in seeds)) if seeds else None

# ------------------------------------------------------------------------------------ claims


@dataclass(frozen=True)
class Part:
    """One testable part of a study's claim: how its comparisons are built, and the templated reasons
    (keys of WHY) offered when it does not reproduce."""

    kind: str  # not_worse | better | monotone | approaches | eval_gain
    text: str
    why: tuple[str, ...]


CLAIMS: dict[str, tuple[Part, ...]] = {
    "shared_qk": (Part("not_worse", "shared QK is not worse than separate Q and K", ("short_training", "few_seeds")),),
    "hash_rounds": (
        Part("monotone", "bpb falls as hash rounds grow", ("short_context", "short_training", "few_seeds")),
        Part("approaches", "the most hash rounds come within noise of full attention (or beat it)",
             ("short_training", "few_seeds")),
        Part("eval_gain", "evaluating with more hash rounds lowers bpb of a model trained with fewer",
             ("eval_shift", "few_seeds")),
    ),
    "reversible": (Part("not_worse", "reversible layers (and the same two-stream function without recomputation) "
                                     "are not worse than ordinary residual layers", ("short_training", "few_seeds")),),
    "depth": (Part("monotone", "bpb falls as layers are added", ("depth_budget", "few_seeds")),),
    "local_control": (Part("better", "every LSH model beats the local window", ("short_context", "short_training",
                                                                                  "few_seeds")),),
}
# Studies whose models include pairs that must compute one function: two of the study's models that
# differ only in this field (recomputing activations instead of storing them changes memory only).
SAME_FUNCTION: dict[str, str] = {"reversible": "reversible"}
WHY: dict[str, str] = {
    "short_training": ("Training ran {steps} steps of {batch} windows of {seq_len} bytes ({seen:,} bytes per model); "
                       "differences that need longer training to appear may not show yet."),
    "few_seeds": ("Each model has {n_seeds} seed(s); the same-sign test over so few seeds rests on little evidence "
                  "(with one seed, none: the threshold alone decides)."),
    "short_context": ("Sequences are {seq_len} bytes and chunk_len is {chunk_len}, so a local window already sees up "
                      "to {window} preceding bytes ({share:.0%} of the sequence); at this length hashing may have "
                      "little distant context to add."),
    "eval_shift": ("Weights trained with fewer hash rounds may have adapted to that attention pattern; more rounds at "
                   "evaluation show each query keys it was not trained with."),
    "depth_budget": ("Deeper models of width {d_model} were trained for the same {steps} steps; at this budget extra "
                     "layers may not yet be trained enough to help."),
}


@dataclass(frozen=True)
class Comparison:
    """`name` against `versus`: their unpaired spreads over seeds (`a`, `b`, for display) and the
    differences paired by seed that decide; claim: a is lower (or, not-worse, not higher for real)."""

    name: str
    versus: str
    a: Spread
    b: Spread
    d: Paired
    accept_noise: bool
    ci: Optional[Interval] = None  # the interval of the mean paired difference (None: a single value)

    @property
    def diff(self) -> float:
        return self.d.mean

    @property
    def outcome(self) -> str:
        return classify(self.d.diffs, interval=self.ci)

    @property
    def supports(self) -> bool:
        return self.outcome == "reproduces" or (self.accept_noise and self.outcome == "within noise")


@dataclass(frozen=True)
class PartVerdict:
    part: Part
    verdict: str  # one of OUTCOMES, or 'not measured'
    comparisons: tuple[Comparison, ...]


BySeed = Mapping[tuple[str, str], Mapping[Any, float]]


def comparisons(part: Part, models: Sequence[str], baseline: str, x_of: Mapping[str, Any], bpb: BySeed,
                eval_settings: Mapping[str, Mapping[str, Any]], evals: Sequence[str] = (),
                x: Optional[str] = None, windows: Windows = {}) -> list[Comparison]:
    """The comparisons one claim part makes, between (model, setting) pairs measured on a common seed,
    each with its interval (over seeds and, where `windows` has them, held-out windows)."""
    pairs: list[tuple[tuple[str, str], tuple[str, str]]] = []
    with_x = sorted((m for m in models if x_of.get(m) is not None), key=lambda m: x_of[m])
    if part.kind in ("not_worse", "better"):
        pairs = [((m, AS_TRAINED), (baseline, AS_TRAINED)) for m in models if m != baseline]
    elif part.kind == "monotone":
        pairs = [((hi, AS_TRAINED), (lo, AS_TRAINED)) for lo, hi in zip(with_x, with_x[1:])]
    elif part.kind == "approaches" and with_x:
        pairs = [((with_x[-1], AS_TRAINED), (baseline, AS_TRAINED))]
    elif part.kind == "eval_gain" and x is not None:
        for e in evals:
            ex = (eval_settings.get(e) or {}).get(x)
            pairs += [((m, e), (m, AS_TRAINED)) for m in with_x if ex is not None and x_of[m] < ex]
    out = []
    for a, b in pairs:
        if a in bpb and b in bpb and (d := paired(bpb[a], bpb[b])) is not None:
            name = a[0] if a[1] == AS_TRAINED else f"{a[0]} evaluated as {a[1]}"
            vs = b[0] if b[0] != a[0] else f"{b[0]} {AS_TRAINED}"
            out.append(Comparison(name, vs, spread(bpb[a].values()), spread(bpb[b].values()), d,
                                  accept_noise=part.kind in ("not_worse", "approaches"),
                                  ci=comparison_interval(a, b, windows, d.seeds)))
    return out


def part_verdict(cmps: Sequence[Comparison]) -> str:
    if not cmps:
        return "not measured"
    if any(c.outcome == "does not reproduce" for c in cmps):
        return "does not reproduce"
    return "reproduces" if all(c.supports for c in cmps) else "within noise"


def study_verdict(name: str, study: Mapping[str, Any], x_of: Mapping[str, Any], bpb: BySeed,
                  eval_settings: Mapping[str, Mapping[str, Any]], windows: Windows = {},
                  gate: Optional["Gate"] = None) -> tuple[str, list[PartVerdict]]:
    """The study's verdict (its weakest measured part; 'no rule' for a study CLAIMS does not know;
    inconclusive when `gate` says its reference did not learn past the baselines, or has none to
    learn past) and each part's verdict with the comparisons behind it, as the rule would call them.
    `bpb`: (model, setting) -> {seed: bpb}; `windows`: the same -> {seed: per-window bpb}."""
    models = list(study.get("models") or ())
    baseline = study.get("baseline") or models[-1]
    parts = []
    for part in CLAIMS.get(name, ()):
        cmps = comparisons(part, models, baseline, x_of, bpb, eval_settings, study.get("eval") or (), study.get("x"),
                           windows)
        parts.append(PartVerdict(part, part_verdict(cmps), tuple(cmps)))
    measured = [p.verdict for p in parts if p.verdict != "not measured"]
    if name not in CLAIMS:
        return "no rule", parts
    if not measured:
        return "not measured", parts
    if gate is not None and gate.verdict is not None:
        return gate.verdict, parts
    return max(measured, key=OUTCOMES.index), parts

# ------------------------------------------------------------------------ models that learned


@dataclass(frozen=True)
class BaselineScore:
    """A reference line: the no-attention control or a count model, with its per-seed and per-window bpb
    (a count model's are the same for every seed: it is counted once)."""

    name: str
    bpb: float  # mean over seeds (and windows)
    kind: str  # "control" | "count"
    per_window: Optional[Sequence[float]] = None  # count model: its per-window bpb


@dataclass(frozen=True)
class Margin:
    """How far the reference's mean bpb is below one baseline (positive: below), with the interval of
    the paired difference reference - baseline over seeds and windows."""

    baseline: BaselineScore
    below: float
    ci: Optional[Interval]


@dataclass(frozen=True)
class Gate:
    """Whether a study's reference model learned past the baselines: its margin below the best
    no-attention control and below the best count model, each at least `margin`."""

    reference: str
    reference_bpb: Optional[float]
    control: Optional[Margin]
    count: Optional[Margin]
    margin: float = LEARNED_MARGIN_BPB

    @property
    def missing(self) -> list[str]:
        out = []
        if self.reference_bpb is None:
            out.append(f"the reference `{self.reference}` has no evaluation")
        if self.control is None:
            out.append("no no-attention control was evaluated")
        if self.count is None:
            out.append("no count-model baselines were recorded")
        return out

    @property
    def learned(self) -> Optional[bool]:
        if self.missing:
            return None
        return all(m.below >= self.margin - 1e-12 for m in (self.control, self.count))

    @property
    def verdict(self) -> Optional[str]:
        """None when the study may be judged; else the inconclusive verdict that replaces its own."""
        if self.reference_bpb is None:
            return NO_REFERENCE
        learned = self.learned
        return None if learned else (NO_BASELINES if learned is None else AT_NGRAM)


def learned_gate(reference: str, bpb: BySeed, windows: Windows, controls: Sequence[str],
                 counts: Sequence[BaselineScore], margin: float = LEARNED_MARGIN_BPB) -> Gate:
    """The reference model's (as trained) margins below the lowest control and the lowest count model."""
    ref = bpb.get((reference, AS_TRAINED)) or {}
    if not ref:
        return Gate(reference, None, None, None, margin)
    ref_mean = sum(ref.values()) / len(ref)
    ref_windows = (windows.get((reference, AS_TRAINED)) or {})
    control = None
    scored = [(c, bpb[(c, AS_TRAINED)]) for c in controls if bpb.get((c, AS_TRAINED))]
    if scored:
        name, by_seed = min(scored, key=lambda t: sum(t[1].values()) / len(t[1]))
        base = BaselineScore(name, sum(by_seed.values()) / len(by_seed), "control")
        seeds = tuple(sorted((s for s in ref if s in by_seed), key=str))
        ci = comparison_interval((reference, AS_TRAINED), (name, AS_TRAINED), windows, seeds) if seeds else None
        control = Margin(base, base.bpb - ref_mean, ci)
    count = None
    if counts:
        best = min(counts, key=lambda b: b.bpb)
        rows = [np.asarray(ref_windows[s], dtype=float) - np.asarray(best.per_window, dtype=float)
                for s in sorted(ref, key=str) if best.per_window is not None and s in ref_windows
                and len(ref_windows[s]) == len(best.per_window)]
        ci = paired_interval(np.stack(rows)) if rows and len(rows) == len(ref) else None
        count = Margin(best, best.bpb - ref_mean, ci)
    return Gate(reference, ref_mean, control, count, margin)

# ------------------------------------------------------------------------------ same function


def same_function_pairs(models: Sequence[str], configs: Mapping[str, Mapping[str, Any]],
                        field: str) -> list[tuple[str, str]]:
    """Pairs of `models` whose configurations differ in `field` alone, the one with it set first."""
    out = []
    for i, m in enumerate(models):
        for n in models[i + 1:]:
            a, b = configs.get(m), configs.get(n)
            if a is None or b is None:
                continue
            differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            if differ == {field}:
                out.append((m, n) if a.get(field) else (n, m))
    return out


@dataclass(frozen=True)
class Coincidence:
    """How far apart two models that should compute one function ended up: the largest |difference|
    of their held-out and training curves (same seed, same step) and of their final bpb (same seed),
    beside their activation memory (means over seeds)."""

    a: str
    b: str
    n_points: int  # (seed, step) points with a held-out value on both sides
    valid_max: Optional[float]
    train_max: Optional[float]
    final_max: Optional[float]
    memory_a: Optional[float]
    memory_b: Optional[float]

    @property
    def verdict(self) -> str:
        known = [v for v in (self.valid_max, self.train_max, self.final_max) if v is not None]
        if not known:
            return "not measured"
        if max(known) == 0:
            return "identical"
        return "coincide to float rounding" if max(known) <= COINCIDE_BPB else "differ"


def _max_abs(x: pd.Series, y: pd.Series) -> Optional[float]:
    both = pd.concat([x, y], axis=1, join="inner").dropna()
    return float((both.iloc[:, 0] - both.iloc[:, 1]).abs().max()) if len(both) else None


def coincidence(a: str, b: str, curves: pd.DataFrame, bpb: BySeed, trains: pd.DataFrame) -> Coincidence:
    """Compare model a with model b seed by seed and step by step (see Coincidence)."""
    def curve(m: str, metric: str) -> pd.Series:
        return curves[curves["model"] == m].set_index(["seed", "step"])[metric]

    def memory(m: str) -> Optional[float]:
        v = trains.loc[trains["model"] == m, "saved_for_backward_mib"].astype(float)
        return float(v.mean()) if v.notna().any() else None

    valid = pd.concat([curve(a, "valid_bpb"), curve(b, "valid_bpb")], axis=1, join="inner").dropna()
    train_max = _max_abs(curve(a, "train_bpb"), curve(b, "train_bpb"))
    d = paired(bpb.get((a, AS_TRAINED), {}), bpb.get((b, AS_TRAINED), {}))
    return Coincidence(a, b, len(valid), float((valid.iloc[:, 0] - valid.iloc[:, 1]).abs().max()) if len(valid)
                       else None, train_max, max(abs(x) for x in d.diffs) if d else None, memory(a), memory(b))

# -------------------------------------------------------------------------------------- why not


def why_not(part: Part, context: Mapping[str, Any]) -> list[str]:
    """The templated reasons a part may not reproduce at this scale, filled from the run's own
    settings; a reason whose settings are missing, or that does not apply, is left out."""
    out = []
    for key in part.why:
        if key == "few_seeds" and context.get("n_seeds", 0) >= 3:
            continue
        if key == "short_context" and context.get("share", 0) < 0.1:
            continue
        try:
            out.append(WHY[key].format(**context))
        except (KeyError, ValueError, TypeError):
            continue
    return out


def why_context(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Settings the WHY templates quote, from run.json's suite_spec."""
    model, train = spec.get("model") or {}, spec.get("train") or {}
    ctx = {"seq_len": spec.get("seq_len"), "steps": train.get("steps"), "batch": train.get("batch_size"),
           "n_seeds": len(spec.get("seeds") or ()), "chunk_len": model.get("chunk_len"),
           "d_model": model.get("d_model")}
    ctx = {k: v for k, v in ctx.items() if v is not None}
    if {"steps", "batch", "seq_len"} <= ctx.keys():
        ctx["seen"] = ctx["steps"] * ctx["batch"] * ctx["seq_len"]
    if {"chunk_len", "seq_len"} <= ctx.keys():
        ctx["window"] = min(2 * ctx["chunk_len"], ctx["seq_len"])  # own chunk and the one before
        ctx["share"] = ctx["window"] / ctx["seq_len"]
    return ctx
