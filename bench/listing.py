"""`python -m bench list`: every suite's studies (or configurations, or models) and its units per
profile, read through the one suite loader without importing torch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from bench.capacity.spec import load_capacity_suite, resolve
from bench.loader import PROFILES, read_yaml, suite_kind
from bench.quality.schema import load_suite as load_quality, planned_units
from bench.suite import load_suite


@dataclass(frozen=True)
class Row:
    """One line of the listing: a name, a count per profile ('-': not in that profile), a description."""

    name: str
    counts: Mapping[str, str]
    description: str = ""


@dataclass(frozen=True)
class Outline:
    suite: str
    kind: str
    units: str  # what the counts count
    total: Row
    rows: tuple[Row, ...]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _run_skip(points: Sequence) -> str:
    skipped = sum(p.skip_reason is not None for p in points)
    return f"{len(points) - skipped}/{skipped}"


def grid_outline(path: Path) -> Outline:
    suite = load_suite(path)
    per = {p: suite.expand(p, auto_device="cuda" if p == "gpu" else "cpu") for p in suite.spec.profiles}
    rows = tuple(Row(study, {p: _run_skip([x for x in pts if study in x.point.studies]) for p, pts in per.items()},
                     spec.description.strip()) for study, spec in suite.spec.studies.items())
    total = Row("all", {p: _run_skip(pts) for p, pts in per.items()}, _first_line(suite.spec.description))
    return Outline(suite.name, "grid", "points (run/skip)", total, rows)


def capacity_outline(path: Path) -> Outline:
    path, spec = load_capacity_suite(path)
    per = {p: resolve(spec, p, "cuda" if p == "gpu" else "cpu", path) for p in spec.profiles}
    rows = []
    for config in spec.configs:
        counts = {p: sum(c.label.split(" ")[0] == config.name for c in plan.configs) for p, plan in per.items()}
        rows.append(Row(config.name, {p: str(n) if n else "-" for p, n in counts.items()},
                        " ".join(f"{k}={v}" for k, v in config.base.items())))
    total = Row("all", {p: f"{len(plan.configs)} ({plan.over}, {plan.memory_budget_gib:g} GiB)" for p, plan in per.items()},
                _first_line(spec.description))
    return Outline(spec.name, "capacity", "searches", total, tuple(rows))


def quality_outline(path: Path) -> Outline:
    suite = load_quality(path)
    per = {p: planned_units(suite, p) for p in suite.profiles}
    rows = tuple(Row(name, {p: f"{sum(name in st for st in u.trains.values())}t/"
                               f"{sum(name in st for _, st in u.evals.values())}e" for p, u in per.items()},
                     f"{', '.join(study.models)}: {_first_line(study.hypothesis)}")
                 for name, study in suite.studies.items())
    total = Row("all", {p: f"{len(u.trains)}t/{len(u.evals)}e/{len(u.analyses)}a" for p, u in per.items()},
                _first_line(suite.description))
    return Outline(suite.name, "quality", "trainings/evaluations/analyses", total, rows)


def duplication_outline(path: Path) -> Outline:
    """Counted from the file's lists (its schema needs torch; `bench run` validates it in full)."""
    raw = read_yaml(path)
    models = [m.get("name", "?") for m in raw.get("train_models") or []]
    settings = [s.get("name", "?") for s in raw.get("eval_settings") or []]
    profiles = raw.get("profiles") or {}
    copy = [m for m in (raw.get("copy_distance") or {}).get("models") or []]
    table2 = {m.get("name"): m for m in raw.get("train_models") or []}

    def copy_units(profile: dict) -> tuple[int, int]:
        """(new trainings, evaluations) of the copy-distance study: a Table 2 training of the same
        model at the profile's own length is reused."""
        lengths = ((profile or {}).get("copy_distance") or {}).get("half_lens") or []
        own = ((profile or {}).get("task") or {}).get("half_len")
        reused = sum(1 for h in lengths for m in copy if h == own and table2.get(m.get("name")) == m)
        return len(lengths) * len(copy) - reused, len(lengths) * len(copy)

    units = {p: copy_units(prof) for p, prof in profiles.items()}
    rows = (Row("train", {p: f"{len(models)}t" for p in profiles}, ", ".join(models)),
            Row("table2", {p: f"{len(models) * len(settings)}e" for p in profiles},
                f"each model evaluated as {', '.join(settings)}"))
    if copy:
        rows += (Row("copy_distance", {p: f"{t}t/{e}e" for p, (t, e) in units.items()},
                     f"{', '.join(m.get('name', '?') for m in copy)} at each length of the profile"),)
    total = Row("all", {p: f"{len(models) + t}t/{len(models) * len(settings) + e}e" for p, (t, e) in units.items()},
                _first_line(str(raw.get("description") or "")))
    return Outline(str(raw.get("name") or path.stem), "duplication", "trainings/evaluations", total, rows)


OUTLINES: dict[str, Callable[[Path], Outline]] = {
    "grid": grid_outline, "capacity": capacity_outline, "quality": quality_outline, "duplication": duplication_outline,
}


def outline(path: Path) -> Outline:
    return OUTLINES[suite_kind(path)](path)


def counts_cells(row: Row) -> list[str]:
    return [row.counts.get(p, "-") for p in PROFILES]
