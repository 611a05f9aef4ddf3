"""Compare two runs of a suite point by point: B over A for time and every memory figure, with the
spread of both sides. Time is split into the machine's overall speed (one factor, the median time
ratio) and the shape (each point's ratio over that factor, and within-run ratios such as LSH over
full attention at each length); only shape differences beyond the noise are flagged. Memory is
compared as is. For quality runs (run.json kind "quality") the final bits per byte of each (model,
evaluation setting) are compared too, B - A, flagged only beyond both runs' seed spreads. Pure apart
from reading the two run dirs and writing the markdown."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from bench.quality.report_frames import AS_TRAINED, bpb_spreads, eval_frame
from bench.report.frames import MEMORY_METRICS, Run, config_label, load_run
from bench.report.labels import short
from bench.report.markdown import md

TIME_METRIC = "step_ms_median"
TIME_FLOOR = 0.10  # relative: two runs of one machine differ by this much without a cause
MEMORY_FLOOR = {"saved_for_backward_mib": 0.005}  # a count of bytes: reproducible to allocator rounding
MEMORY_FLOOR_DEFAULT = 0.05  # RSS and allocator peaks move with the C library and the allocator's state
# Fields that only mean something for one attention kind: left out when pairing LSH with full.
ATTENTION_FIELDS = ("attention", "n_hashes", "chunk_len", "n_buckets", "shared_qk", "same_bucket",
                    "dup_correction", "hash_seed")


@dataclass(frozen=True)
class Comparison:
    """B over A per point and metric, the machine-speed factor, within-run ratios and verdicts."""

    run_a: str
    run_b: str
    speed_factor: Optional[float]  # median over matched points of B's time / A's time
    points: pd.DataFrame  # study, point_id, config, metric, kind (time|memory), a, b, ratio, shape, noise, flag
    within: pd.DataFrame  # study, config, ratio_of, a, b, change, noise, flag
    verdicts: tuple[str, ...]
    only_a: int = 0
    only_b: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    quality: Optional[pd.DataFrame] = None  # quality runs: study, model, setting, a/b spreads, diff, spread, flag


def _ok(run: Run) -> dict[str, Mapping[str, Any]]:
    return {r["point_id"]: r for r in run.records if r.get("status") == "ok" and r.get("point_id")}


def _under_load(rec: Mapping[str, Any]) -> bool:
    return bool((rec.get("load") or {}).get("under_load"))


def time_spread(metrics: Mapping[str, Any], metric: str = TIME_METRIC) -> float:
    """Relative interquartile range of a timing (0 when the record has none)."""
    med = metrics.get(metric)
    q25, q75 = metrics.get(metric.replace("_median", "_q25")), metrics.get(metric.replace("_median", "_q75"))
    if not med or q25 is None or q75 is None:
        return 0.0
    return max(0.0, (q75 - q25) / med)


def memory_spread(metrics: Mapping[str, Any], metric: str) -> float:
    """Relative min-max spread over the measuring processes (0 for records read in one process)."""
    med, lo, hi = metrics.get(metric), metrics.get(f"{metric}_min"), metrics.get(f"{metric}_max")
    if not med or lo is None or hi is None:
        return 0.0
    return max(0.0, (hi - lo) / med)


def _outside(ratio: float, noise: float) -> bool:
    return abs(math.log(ratio)) > math.log1p(noise)


def point_rows(a: Mapping[str, Mapping], b: Mapping[str, Mapping]) -> tuple[list[dict], Optional[float]]:
    """Per matched point: the time row (ratio, shape over the speed factor) and one row per memory
    figure both records hold."""
    rows: list[dict[str, Any]] = []
    common = [pid for pid in a if pid in b]
    times = []
    for pid in common:
        ta, tb = (a[pid].get("metrics") or {}).get(TIME_METRIC), (b[pid].get("metrics") or {}).get(TIME_METRIC)
        if ta and tb and ta > 0 and tb > 0:
            times.append(tb / ta)
    factor = float(np.median(times)) if times else None
    for pid in common:
        ra, rb = a[pid], b[pid]
        ma, mb = ra.get("metrics") or {}, rb.get("metrics") or {}
        base = {"study": ", ".join(ra.get("studies") or ()), "point_id": pid,
                "config": config_label(ra.get("params") or {})}
        ta, tb = ma.get(TIME_METRIC), mb.get(TIME_METRIC)
        if ta and tb and factor:
            ratio = tb / ta
            noise = time_spread(ma) + time_spread(mb) + TIME_FLOOR
            loaded = _under_load(ra) or _under_load(rb)
            shape = ratio / factor
            flag = "" if not _outside(shape, noise) else ("under load" if loaded else "SHAPE")
            rows.append({**base, "metric": TIME_METRIC, "kind": "time", "a": ta, "b": tb, "ratio": ratio,
                         "shape": shape, "noise": noise, "flag": flag})
        for metric in MEMORY_METRICS:
            va, vb = ma.get(metric), mb.get(metric)
            if va is None or vb is None or va <= 0 or vb <= 0:
                continue
            ratio = vb / va
            noise = memory_spread(ma, metric) + memory_spread(mb, metric) + MEMORY_FLOOR.get(metric, MEMORY_FLOOR_DEFAULT)
            rows.append({**base, "metric": metric, "kind": "memory", "a": va, "b": vb, "ratio": ratio,
                         "shape": None, "noise": noise, "flag": "DIFFERS" if _outside(ratio, noise) else ""})
    return rows, factor


def _pair_key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in params.items() if k not in ATTENTION_FIELDS))


def within_ratios(run: Run) -> dict[tuple[str, str], tuple[float, float, str]]:
    """Each non-full point's time over the full-attention point that differs only in attention:
    {(point_id, label): (ratio, relative noise, study)}. Machine speed cancels in these."""
    ok = _ok(run)
    full = {_pair_key(r.get("params") or {}): r for r in ok.values() if (r.get("params") or {}).get("attention") == "full"}
    out = {}
    for pid, rec in ok.items():
        params = rec.get("params") or {}
        if params.get("attention") in (None, "full"):
            continue
        ref = full.get(_pair_key(params))
        if ref is None:
            continue
        t, tf = (rec.get("metrics") or {}).get(TIME_METRIC), (ref.get("metrics") or {}).get(TIME_METRIC)
        if t and tf:
            noise = time_spread(rec["metrics"]) + time_spread(ref["metrics"])
            label = f"{params.get('attention')} / full"
            out[(pid, label)] = (t / tf, noise, ", ".join(rec.get("studies") or ()))
    return out


def within_rows(a: Run, b: Run) -> list[dict[str, Any]]:
    wa, wb = within_ratios(a), within_ratios(b)
    ok_a = _ok(a)
    rows = []
    for key, (ra, na, study) in wa.items():
        if key not in wb:
            continue
        rb, nb, _ = wb[key]
        noise = na + nb + TIME_FLOOR
        change = rb / ra
        rows.append({"study": study, "config": config_label(ok_a[key[0]].get("params") or {}), "ratio_of": key[1],
                     "a": ra, "b": rb, "change": change, "noise": noise,
                     "flag": "SHAPE" if _outside(change, noise) else ""})
    return rows


def verdicts(points: pd.DataFrame, within: pd.DataFrame, factor: Optional[float]) -> list[str]:
    """One line per study: how many points differ in time shape and in memory beyond the noise."""
    out = []
    studies = list(dict.fromkeys(s for cell in points["study"] for s in str(cell).split(", ") if s)) if not points.empty else []
    for study in studies:
        mine = points[points["study"].map(lambda c: study in str(c).split(", "))]
        t, mem = mine[mine["kind"] == "time"], mine[mine["kind"] == "memory"]
        w = within[within["study"].map(lambda c: study in str(c).split(", "))] if not within.empty else within
        shape = int((t["flag"] == "SHAPE").sum()) + (int((w["flag"] == "SHAPE").sum()) if not w.empty else 0)
        loaded = int((t["flag"] == "under load").sum())
        differs = mem[mem["flag"] == "DIFFERS"]
        time_part = (f"time shape as A at all {len(t)} points" if not shape else
                     f"time shape differs beyond the noise at {shape} of {len(t) + len(w)} ratios")
        if loaded:
            time_part += f" ({loaded} more outside the noise but measured under load)"
        mem_part = (f"memory within noise ({len(mem)} figures)" if differs.empty else
                    f"memory differs at {differs['point_id'].nunique()} points ("
                    + ", ".join(sorted(set(differs["metric"]))) + ")")
        speed = f"; machine speed factor {factor:.2f}x" if factor else ""
        out.append(f"{study}: {time_part}; {mem_part}{speed}")
    return out


QUALITY_COLUMNS = ["study", "model", "setting", "a_mean", "a_min", "a_max", "a_seeds", "b_mean", "b_min", "b_max",
                   "b_seeds", "diff", "spread", "flag"]


def _studies_of(model: str, setting: str, studies: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(name for name, s in studies.items()
                     if model in (s.get("models") or ()) and setting in (AS_TRAINED, *(s.get("eval") or ())))


def quality_rows(a: Run, b: Run) -> list[dict[str, Any]]:
    """Per (model, evaluation setting) both runs scored: mean bpb over seeds on each side, B - A, and
    `BPB` when |B - A| exceeds both runs' min–max ranges over seeds (the seed noise of each run)."""
    sa, sb = bpb_spreads(eval_frame(a.records)), bpb_spreads(eval_frame(b.records))
    studies = (a.meta.get("suite_spec") or b.meta.get("suite_spec") or {}).get("studies") or {}
    rows = []
    for (model, setting), x in sa.items():
        if (y := sb.get((model, setting))) is None:
            continue
        diff, noise = y.mean - x.mean, max(x.range, y.range)
        rows.append({"study": _studies_of(model, setting, studies), "model": model, "setting": setting,
                     "a_mean": x.mean, "a_min": x.lo, "a_max": x.hi, "a_seeds": x.n, "b_mean": y.mean, "b_min": y.lo,
                     "b_max": y.hi, "b_seeds": y.n, "diff": diff, "spread": noise,
                     "flag": "BPB" if abs(diff) > noise else ""})
    return rows


def quality_verdicts(lines: list[str], quality: pd.DataFrame) -> list[str]:
    """The per-study verdict lines with each study's final-bpb part appended (a study with no time
    or memory line gets its own)."""
    studies = list(dict.fromkeys(s for cell in quality["study"] for s in str(cell).split(", ") if s))
    out = list(lines)
    for study in studies:
        mine = quality[quality["study"].map(lambda c: study in str(c).split(", "))]
        beyond = mine[mine["flag"] == "BPB"]
        part = (f"final bpb as A at all {len(mine)} (model, setting) pairs (within the seed spreads)"
                if beyond.empty else f"final bpb beyond both runs' seed spreads at {len(beyond)} of {len(mine)}: "
                + ", ".join(f"{r.model} {r.setting} {r.diff:+.4f}" for r in beyond.itertuples()))
        i = next((i for i, line in enumerate(out) if line.startswith(f"{study}: ")), None)
        if i is None:
            out.append(f"{study}: {part}")
        else:
            out[i] = f"{out[i]}; {part}"
    return out


def compare_runs(run_a: Path, run_b: Path) -> Comparison:
    """B over A for every ok point the two runs share (matched by point id)."""
    for path in (run_a, run_b):
        if not (Path(path) / "records.jsonl").is_file():
            raise ValueError(f"{path}: no records.jsonl; not a run directory")
    a, b = load_run(Path(run_a)), load_run(Path(run_b))
    oa, ob = _ok(a), _ok(b)
    rows, factor = point_rows(oa, ob)
    points = pd.DataFrame(rows, columns=["study", "point_id", "config", "metric", "kind", "a", "b", "ratio",
                                         "shape", "noise", "flag"])
    within = pd.DataFrame(within_rows(a, b), columns=["study", "config", "ratio_of", "a", "b", "change", "noise", "flag"])
    notes = []
    suites = {a.meta.get("suite"), b.meta.get("suite")}
    if len(suites) > 1:
        notes.append(f"the runs are of different suites ({' vs '.join(map(str, suites))})")
    if not rows:
        notes.append("the runs share no ok point: nothing to compare")
    lines, quality = verdicts(points, within, factor), None
    if "quality" in (a.meta.get("kind"), b.meta.get("kind")):
        quality = pd.DataFrame(quality_rows(a, b), columns=QUALITY_COLUMNS)
        lines = quality_verdicts(lines, quality)
    return Comparison(run_a=str(run_a), run_b=str(run_b), speed_factor=factor, points=points, within=within,
                      verdicts=tuple(lines), only_a=len(set(oa) - set(ob)), only_b=len(set(ob) - set(oa)),
                      notes=tuple(notes), quality=quality)


def quality_markdown(quality: Optional[pd.DataFrame]) -> list[str]:
    """The final-bpb section of a quality comparison (nothing for other kinds)."""
    if quality is None:
        return []
    side = lambda s: [f"{m:.4f} ({lo:.4f}–{hi:.4f}, n={n})" for m, lo, hi, n in
                      zip(quality[f"{s}_mean"], quality[f"{s}_min"], quality[f"{s}_max"], quality[f"{s}_seeds"])]
    view = pd.DataFrame({"study": quality["study"], "model": quality["model"], "evaluated as": quality["setting"],
                         "A: mean bpb (min–max)": side("a"), "B: mean bpb (min–max)": side("b"),
                         "B - A (bpb)": quality["diff"].map(lambda v: f"{v:+.4f}"),
                         "seed spread (bpb)": quality["spread"].map(lambda v: f"{v:.4f}"), "flag": quality["flag"]})
    table = view.to_markdown(index=False, disable_numparse=True) if not view.empty else "_none_"
    return ["## Final bits per byte", "",
            "Mean held-out bpb over training seeds per model and evaluation setting, in A and in B; `diff` is "
            "B - A, `spread` the larger of the two runs' min–max ranges over seeds. Flag `BPB`: |diff| exceeds "
            "both runs' seed spreads. With one seed on each side the spread is 0, so any difference is flagged.",
            "", table, ""]


def comparison_markdown(cmp: Comparison) -> str:
    factor = (f"B took {cmp.speed_factor:.2f}x A's time at the median point: this is the machine's "
              f"overall speed, not a finding. `shape` is each point's ratio over it." if cmp.speed_factor
              else "No timing to compare.")
    return "\n".join([
        "# Comparison", "", f"- A: `{cmp.run_a}`", f"- B: `{cmp.run_b}`",
        f"- matched ok points: {cmp.points['point_id'].nunique() if not cmp.points.empty else 0}; "
        f"only in A: {cmp.only_a}; only in B: {cmp.only_b}", *[f"- note: {n}" for n in cmp.notes], "",
        "## Verdict", "", *[f"- {v}" for v in cmp.verdicts], "", factor, "",
        f"Noise: the interquartile range of both timings plus {TIME_FLOOR:.0%} for time; the min-max "
        f"spread over processes of both sides plus {MEMORY_FLOOR['saved_for_backward_mib']:.1%} (saved "
        f"bytes) or {MEMORY_FLOOR_DEFAULT:.0%} (RSS, allocator peaks) for memory. Flags: `SHAPE` (time "
        "ratio over the speed factor, or a within-run ratio, outside the noise), `DIFFERS` (memory "
        "outside the noise), `under load` (outside, but a side was measured on a busy machine).", "",
        "## Time", "", md(cmp.points[cmp.points["kind"] == "time"].drop(columns=["kind"])), "",
        f"## Within-run ratios ({short(TIME_METRIC)})", "",
        "Each attention kind's time over full attention's at the same point, in A and in B; machine "
        "speed cancels.", "", md(cmp.within), "",
        "## Memory", "", md(cmp.points[cmp.points["kind"] == "memory"].drop(columns=["kind", "shape"])), "",
        *quality_markdown(cmp.quality),
    ])


def write_comparison(cmp: Comparison, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(comparison_markdown(cmp))
    return out_path


def print_comparison(cmp: Comparison, console) -> None:
    """The verdicts and the speed factor on the console (rich)."""
    console.print(f"compare: A = {cmp.run_a}, B = {cmp.run_b}", markup=False, highlight=False)
    if cmp.speed_factor:
        console.print(f"  machine speed: B took {cmp.speed_factor:.2f}x A's time (median over points)",
                      markup=False, highlight=False)
    for note in cmp.notes:
        console.print(f"  note: {note}", markup=False, highlight=False)
    for line in cmp.verdicts:
        console.print(f"  {line}", markup=False, highlight=False)
    flagged = cmp.points[cmp.points["flag"].isin(["SHAPE", "DIFFERS"])]
    for row in flagged.head(20).itertuples():
        what = f"shape {row.shape:.2f}" if row.kind == "time" else f"ratio {row.ratio:.3f}"
        console.print(f"  {row.flag:8s} {row.metric} {what} (noise {row.noise:.0%}): {row.config}",
                      markup=False, highlight=False)
    if len(flagged) > 20:
        console.print(f"  ... {len(flagged) - 20} more in the markdown", markup=False, highlight=False)
    beyond = cmp.quality[cmp.quality["flag"] == "BPB"] if cmp.quality is not None else pd.DataFrame()
    for row in beyond.head(20).itertuples():
        console.print(f"  BPB      {row.model} {row.setting}: B - A {row.diff:+.4f} bpb (seed spread {row.spread:.4f})",
                      markup=False, highlight=False)
