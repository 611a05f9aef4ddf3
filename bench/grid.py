"""Grid expansion: merge settings layers, take the product over a study's axes, canonicalise and
deduplicate into GridPoints. Pure and torch-free, so it can be tested with plain asserts.

The caller (bench.suite) supplies the model's field defaults and an optional check that builds
the model config, so this module knows field names, never the model code.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from bench.point import GridPoint

# Settings that describe how a point runs rather than the model; everything else is a model field.
POINT_KEYS = ("workload", "impl", "device", "dtype", "batch_size", "seq_len")
# Defaults for point settings a suite leaves unset (seq_len has none: a suite must say it).
POINT_DEFAULTS: Mapping[str, Any] = {
    "workload": "model",
    "impl": "ours",
    "device": "auto",
    "dtype": "float32",
    "batch_size": 1,
}
# Fields that cannot change what runs, by case; dropped so equal configs get one point_id.
LSH_ONLY = ("n_hashes", "chunk_len", "n_buckets", "same_bucket", "dup_correction", "hash_seed")
MODEL_ONLY = ("n_layers", "reversible", "ff_chunks", "d_ff", "vocab_size", "pos_emb", "max_seq_len", "residual")
# Fields added after references were recorded, left out of a point's identity at their default so
# every existing point_id stays what it was.
QUIET_DEFAULTS = {"residual": "two_stream", "head_size": None, "self_mask": True}


class GridError(ValueError):
    """A study cannot be expanded; `key` names the offending setting."""

    def __init__(self, study: str, key: str, message: str) -> None:
        super().__init__(f"study '{study}': {key}: {message}")
        self.study, self.key, self.message = study, key, message


def settings_match(when: Mapping[str, tuple[Any, ...]], settings: Mapping[str, Any]) -> bool:
    """Every key of `when` is set and holds one of its values."""
    return all(key in settings and settings[key] in values for key, values in when.items())


@dataclass(frozen=True)
class SkipRule:
    """Points whose settings match every entry of `when` (a value or any of several) are recorded
    as `skipped` with `reason` instead of running."""

    when: Mapping[str, tuple[Any, ...]]
    reason: str

    def matches(self, settings: Mapping[str, Any]) -> bool:
        return settings_match(self.when, settings)


@dataclass(frozen=True)
class OverrideRule:
    """Points whose settings match every entry of `when` take the settings in `to`: a per-value
    exception to the product grid (e.g. sdpa as the fused baseline needs shared_qk=False)."""

    when: Mapping[str, tuple[Any, ...]]
    to: Mapping[str, Any]

    def matches(self, settings: Mapping[str, Any]) -> bool:
        return settings_match(self.when, settings)


@dataclass(frozen=True)
class StudyGrid:
    """One study, fully merged for one profile: settings shared by all its points, its axes
    (in declaration order), its skip rules, an optional fixed token budget per batch and whether
    its points record a stage breakdown (None: as the environment says)."""

    name: str
    settings: Mapping[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    skip: tuple[SkipRule, ...] = ()
    fixed_tokens: int | None = None
    overrides: tuple[OverrideRule, ...] = ()
    breakdown: bool | None = None


@dataclass(frozen=True)
class PlannedPoint:
    """A point to run, or to record as skipped when `skip_reason` is set."""

    point: GridPoint
    skip_reason: str | None = None


@dataclass
class _Merged:
    point: GridPoint
    studies: list[str] = field(default_factory=list)
    skip_reasons: list[str | None] = field(default_factory=list)
    breakdowns: list[bool | None] = field(default_factory=list)


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win, key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer)
    return out


def product_dict(axes: Sequence[tuple[str, Sequence[Any]]]) -> Iterator[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    names = [name for name, _ in axes]
    for values in itertools.product(*(vals for _, vals in axes)):
        yield dict(zip(names, values))


def resolve_settings(
    study: StudyGrid, combo: Mapping[str, Any], model_defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Everything one point runs with: defaults, then the study's settings, then the grid combo;
    then batch_size from fixed_tokens and max_seq_len from seq_len when the suite left it unset."""
    explicit = merge(study.settings, combo)
    for rule in study.overrides:
        if rule.matches(explicit):
            explicit = merge(explicit, rule.to)
    settings = merge(POINT_DEFAULTS, model_defaults, explicit)
    if "seq_len" not in settings:
        raise GridError(study.name, "seq_len", "not set in base, profile or grid")
    seq_len = settings["seq_len"]
    if study.fixed_tokens is not None:
        if "batch_size" in combo:
            raise GridError(study.name, "batch_size", "cannot be a grid axis when fixed_tokens is set")
        if study.fixed_tokens % seq_len:
            raise GridError(
                study.name, "fixed_tokens",
                f"{study.fixed_tokens} is not divisible by seq_len={seq_len}",
            )
        settings["batch_size"] = study.fixed_tokens // seq_len
    if "max_seq_len" not in explicit:
        settings["max_seq_len"] = seq_len
    elif settings["workload"] == "model" and seq_len > settings["max_seq_len"]:
        raise GridError(
            study.name, "seq_len", f"{seq_len} exceeds max_seq_len={settings['max_seq_len']}"
        )
    return settings


def canonical_model(settings: Mapping[str, Any], model_fields: Sequence[str]) -> dict[str, Any]:
    """The model fields that can matter for this point (see LSH_ONLY, MODEL_ONLY)."""
    drop: set[str] = set()
    if settings.get("attention") == "local":  # LSH's windows without hashing: only chunk_len matters
        drop.update(name for name in LSH_ONLY if name != "chunk_len")
    elif settings.get("attention") != "lsh":
        drop.update(LSH_ONLY)
    if settings.get("workload") == "attention":
        drop.update(MODEL_ONLY)
    drop.update(name for name, default in QUIET_DEFAULTS.items() if settings.get(name) == default)
    return {name: settings[name] for name in model_fields if name not in drop and name in settings}


def _describe_combo(combo: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in combo.items()) or "(no axes)"


def expand(
    studies: Sequence[StudyGrid],
    *,
    suite: str,
    model_defaults: Mapping[str, Any],
    repeats: int,
    warmup: int,
    timeout_s: float,
    auto_device: str = "cpu",
    force_device: str | None = None,
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> list[PlannedPoint]:
    """All distinct points of the studies, in first-seen order. A config asked for by several
    studies becomes one point listing them all; it is skipped only if every study skips it.

    `device: auto` becomes `auto_device`; `force_device` overrides every point. `check` receives
    each point's resolved settings and raises ValueError for an impossible config.
    """
    model_fields = tuple(model_defaults)
    merged: dict[str, _Merged] = {}
    for study in studies:
        for combo in product_dict(study.axes):
            settings = resolve_settings(study, combo, model_defaults)
            if force_device is not None:
                settings["device"] = force_device
            elif settings["device"] == "auto":
                settings["device"] = auto_device
            if check is not None:
                try:
                    check(settings)
                except ValueError as exc:
                    raise GridError(study.name, "grid", f"at {_describe_combo(combo)}: {exc}") from exc
            point = GridPoint(
                suite=suite,
                model=canonical_model(settings, model_fields),
                repeats=repeats,
                warmup=warmup,
                timeout_s=float(timeout_s),
                **{key: settings[key] for key in POINT_KEYS},
            )
            skip = next((rule.reason for rule in study.skip if rule.matches(settings)), None)
            entry = merged.setdefault(point.point_id, _Merged(point))
            entry.breakdowns.append(study.breakdown)
            if study.name not in entry.studies:
                entry.studies.append(study.name)
                entry.skip_reasons.append(skip)
            elif skip is None:
                entry.skip_reasons[entry.studies.index(study.name)] = None
    return [_finish(entry) for entry in merged.values()]


def merged_breakdown(asked: Sequence[bool | None]) -> bool | None:
    """A point several studies share records a breakdown if any asks for one; False only if one
    says so and none asks; None (the environment decides) if none says."""
    if any(b is True for b in asked):
        return True
    return False if any(b is False for b in asked) else None


def _finish(entry: _Merged) -> PlannedPoint:
    reasons = entry.skip_reasons
    skip_reason = reasons[0] if all(r is not None for r in reasons) else None
    point = GridPoint(**{**entry.point.to_json(), "studies": tuple(entry.studies),
                         "breakdown": merged_breakdown(entry.breakdowns)})
    return PlannedPoint(point, skip_reason)


def point_params(point: GridPoint) -> dict[str, Any]:
    """The flat `params` of a record: point settings and canonical model fields side by side."""
    params: dict[str, Any] = {key: getattr(point, key) for key in POINT_KEYS}
    params.update(point.model)
    return params
