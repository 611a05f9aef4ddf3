"""`kind: quality` suites resolved per profile into the common training runner's plan: one training
per (model, seed), one evaluation per (trained model, setting), then the LSH approximation study.
The schema is bench.quality.schema."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch

from bench.loader import SuiteError
from bench.quality import baselines
from bench.quality.approximation import capture_qkv, sweep
from bench.quality.data import Corpus, load_corpus
from bench.quality.metrics import eval_starts
from bench.quality.schema import (
    BASELINES_ID, KIND, ApproximationSpec, QualitySuite, controls, load_suite, planned_units, profile_studies,
    resolve_models,
)
from bench.quality.task import TextLM
from bench.training.plan import AnalysisPoint, EvalPoint, TrainingPlan, TrainPoint
from reformer_impl import ReformerConfig

__all__ = ["load_suite", "training_plan"]


def _approximation(spec: ApproximationSpec, corpus: Corpus, seq_len: int):
    def run(model, device) -> dict[str, Any]:
        valid = corpus.split("valid")
        starts = eval_starts(valid.numel(), seq_len, spec.windows)
        tokens = valid[torch.tensor(starts)[:, None] + torch.arange(seq_len)].long().to(device)
        q, v = capture_qkv(model, tokens, spec.layer)
        rows = [dataclasses.asdict(a) for a in sweep(q, v, n_hashes=spec.n_hashes, chunk_lens=spec.chunk_lens,
                                                      seeds=spec.seeds, causal=True)]
        return {"metrics": {"approximation_rows": len(rows)}, "table": rows}
    return run


BASELINES = "count_baselines"  # the analysis name of the count-model baselines


def _baselines(corpus: Corpus, seq_len: int, windows: Optional[int]):
    """Count models of orders 0-3 scored on the evaluation's own windows (bench.quality.baselines);
    they read the corpus, not the model the point hangs on."""
    def run(model, device) -> dict[str, Any]:
        start, stop = corpus.bounds["valid"]
        starts = eval_starts(stop - start, seq_len, windows)
        scored = baselines.count_baselines(corpus.data.numpy(), corpus.bounds["train"],
                                           baselines.window_targets(start, starts, seq_len))
        return {"metrics": {f"count_order_{b.order}_bpb": b.bpb for b in scored},
                "table": [b.row() for b in scored]}
    return run


def training_plan(suite: QualitySuite, profile: str, data: Optional[Path] = None,
                  corpus: Optional[Corpus] = None) -> TrainingPlan:
    """One training point per (model, seed), one evaluation per (trained model, setting): as
    trained, and under each extra setting of every study it is in; then the approximation study and
    the count-model baselines (scored on the evaluation's windows)."""
    if profile not in suite.profiles:
        raise SuiteError(f"profile={profile!r}: not in suite {suite.name!r}; choose one of {sorted(suite.profiles)}")
    p = suite.profiles[profile]
    corpus = corpus or load_corpus(data)
    configs = resolve_models(suite, profile, ReformerConfig)
    task = TextLM(corpus=corpus, seq_len=p.seq_len, eval_windows=p.eval.windows, eval_batch_size=p.eval.batch_size,
                  curve_windows=p.eval.curve_windows)
    units = planned_units(suite, profile, configs)
    trains = {(m, seed): TrainPoint(point_id=f"train-{m}-s{seed}", name=m, seed=seed, cfg=configs[m],
                                    settings=p.train.model_copy(update={"seed": seed}), studies=studies)
              for (m, seed), studies in units.trains.items()}
    evals = [EvalPoint(point_id=f"eval-{m}-s{seed}" + ("" if e is None else f"-as-{e}"), train=trains[(m, seed)],
                       setting="as trained" if e is None else e, cfg=cfg, studies=studies)
             for (m, seed, e), (cfg, studies) in units.evals.items()]
    run_studies = profile_studies(suite, profile)
    analyses, a = [], suite.lsh_approximation
    for point_id, key in units.analyses.items():
        if point_id == BASELINES_ID:  # in every study: `--only` keeps it whatever it names
            analyses.append(AnalysisPoint(
                point_id=point_id, train=trains[key], name=BASELINES, run=_baselines(corpus, p.seq_len, p.eval.windows),
                studies=run_studies, params={"orders": list(baselines.ORDERS), "alpha": baselines.ALPHA},
                needs_model=False))
        else:
            analyses.append(AnalysisPoint(
                point_id=point_id, train=trains[key], name="lsh_approximation",
                run=_approximation(a, corpus, p.seq_len), studies=("lsh_approximation",),
                params={"layer": a.layer, "windows": a.windows}))
    spec = {
        "kind": KIND, "suite": suite.name, "profile": profile, "description": p.description or suite.description,
        "seq_len": p.seq_len, "seeds": list(p.seeds), "data": corpus.meta(),
        "study_seeds": {k: list(v) for k, v in p.study_seeds.items()},
        "model": dict(p.model), "train": p.train.model_dump(mode="json"), "eval": p.eval.model_dump(mode="json"),
        "models": {m: suite.models[m] for m in dict.fromkeys(m for m, _ in units.trains)},
        "eval_settings": dict(suite.eval_settings),
        "studies": {s: suite.studies[s].model_dump(mode="json") for s in run_studies},
        "controls": [m for m in controls(suite) if any(k[0] == m for k in units.trains)],
        "baselines": {"orders": list(baselines.ORDERS), "alpha": baselines.ALPHA},
        "lsh_approximation": None if a is None else a.model_dump(mode="json"),
    }
    return TrainingPlan(kind=KIND, suite=suite.name, profile=profile, task=task, spec=spec, trains=tuple(trains.values()),
                        evals=tuple(evals), analyses=tuple(analyses), validate_every=p.eval.validate_every,
                        threads=p.train.threads)
