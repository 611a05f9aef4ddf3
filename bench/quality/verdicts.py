"""The quality studies' verdicts, computed from bpb per seed (never written by hand): each claim's
comparisons as differences paired by training seed, the rule that calls a difference real, the
check that recomputation leaves the function alone, and the templated reasons a claim may not
reproduce at this scale. Pure functions over numbers; nothing here reads files or draws."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

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
RULE = (f"**Verdict rule.** Every model trained with seed *s* saw the same batches in the same order, so "
        f"seed effects are shared across models; each comparison therefore pairs seeds: d_s = bpb(model, s) "
        f"- bpb(reference, s), lower is better. A difference is **real** when every seed's d_s has the same "
        f"sign and |mean d| >= {MIN_REAL_BPB} bpb (a practical threshold: smaller gaps are not read off the "
        f"paper's curves either); otherwise it is **within noise**. **reproduces**: real and pointing the way "
        f"the claim says; **does not reproduce**: real and pointing the other way. For claims that a Reformer "
        f"trick is *not worse* (shared QK, reversible layers, the most hash rounds against full attention), "
        f"within noise counts as reproduced. A claim part reproduces when all its comparisons do, fails when "
        f"any fails, and is within noise otherwise; the study's verdict is its weakest part. With one seed no "
        f"spread is known and the threshold alone decides. The unpaired means and min–max over seeds are "
        f"shown beside, for reference only.")

# ---------------------------------------------------------------------------------- paired rule


def classify(diffs: Sequence[float], threshold: float = MIN_REAL_BPB) -> str:
    """'reproduces' (a below the reference) or 'does not reproduce' (above) when every paired
    difference d_s = a_s - b_s has one sign and |mean d| >= threshold; 'within noise' otherwise."""
    if not diffs:
        return "not measured"
    mean = sum(diffs) / len(diffs)
    one_sign = all(d < 0 for d in diffs) or all(d > 0 for d in diffs)
    if not one_sign or abs(mean) < threshold - 1e-12:  # 1e-12: 2.01 - 2.0 is 0.00999...
        return "within noise"
    return "reproduces" if mean < 0 else "does not reproduce"


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

    @property
    def diff(self) -> float:
        return self.d.mean

    @property
    def outcome(self) -> str:
        return self.d.outcome

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
                x: Optional[str] = None) -> list[Comparison]:
    """The comparisons one claim part makes, between (model, setting) pairs measured on a common seed."""
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
                                  accept_noise=part.kind in ("not_worse", "approaches")))
    return out


def part_verdict(cmps: Sequence[Comparison]) -> str:
    if not cmps:
        return "not measured"
    if any(c.outcome == "does not reproduce" for c in cmps):
        return "does not reproduce"
    return "reproduces" if all(c.supports for c in cmps) else "within noise"


def study_verdict(name: str, study: Mapping[str, Any], x_of: Mapping[str, Any], bpb: BySeed,
                  eval_settings: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[PartVerdict]]:
    """The study's verdict (its weakest measured part; 'no rule' for a study CLAIMS does not know)
    and each part's verdict with the comparisons behind it. `bpb`: (model, setting) -> {seed: bpb}."""
    models = list(study.get("models") or ())
    baseline = study.get("baseline") or models[-1]
    parts = []
    for part in CLAIMS.get(name, ()):
        cmps = comparisons(part, models, baseline, x_of, bpb, eval_settings, study.get("eval") or (), study.get("x"))
        parts.append(PartVerdict(part, part_verdict(cmps), tuple(cmps)))
    measured = [p.verdict for p in parts if p.verdict != "not measured"]
    if name not in CLAIMS:
        return "no rule", parts
    return (max(measured, key=OUTCOMES.index) if measured else "not measured"), parts

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
