"""Grid suites: a YAML file validated once into typed models, then expanded per profile into points.

Every problem (unknown key, wrong type, empty axis, unknown axis, impossible config) is refused
here, before anything runs, as a SuiteError naming the file, the study or profile and the key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from bench.grid import GridError, OverrideRule, PlannedPoint, SkipRule, StudyGrid, expand
from bench.loader import (
    NAME_PATTERN, PROFILES, STRICT as _STRICT, SUITES_DIR, SuiteError, check_model as _check_model,
    check_name as _check_name, check_settings as _check_settings, describe as _describe, model_defaults,
    read_yaml, resolve_suite_path, settings_model, suite_kind, validate,
)

__all__ = ["NAME_PATTERN", "PROFILES", "SUITES_DIR", "SuiteError", "Suite", "SuiteSpec", "load_suite", "model_defaults",
           "read_yaml", "resolve_suite_path", "settings_model", "suite_kind"]
# More points than this are refused before expansion (`bench run --max-points` changes it).
DEFAULT_MAX_POINTS = 5000


def _check_values(key: str, values: list[Any]) -> None:
    """Each value must be one a `base` could hold under `key`."""
    if key not in settings_model().model_fields:
        raise ValueError(f"unknown axis '{key}'; known: {', '.join(settings_model().model_fields)}")
    for value in values:
        try:
            settings_model().model_validate({key: value})
        except ValidationError as exc:
            raise ValueError(f"{_describe(exc.errors()[0])}") from None


Settings = Annotated[dict[str, Any], Field(default_factory=dict)]
Axis = Annotated[list[Any], Field(min_length=1)]


class _Base(BaseModel):
    model_config = _STRICT

    @field_validator("base", mode="before", check_fields=False)
    @classmethod
    def _valid_base(cls, raw: Any) -> dict[str, Any]:
        return _check_settings(raw)


class _WhenSpec(BaseModel):
    """A rule that applies to points whose settings match `when` (axis -> value or list of values)."""

    model_config = _STRICT
    when: Annotated[dict[str, Any], Field(min_length=1)]

    @field_validator("when")
    @classmethod
    def _valid_when(cls, when: dict[str, Any]) -> dict[str, Any]:
        for key, value in when.items():
            _check_values(key, value if isinstance(value, list) else [value])
        return when

    def when_values(self) -> dict[str, tuple[Any, ...]]:
        return {k: tuple(v) if isinstance(v, list) else (v,) for k, v in self.when.items()}


class SkipSpec(_WhenSpec):
    reason: Annotated[str, Field(min_length=1)]

    def rule(self) -> SkipRule:
        return SkipRule(when=self.when_values(), reason=self.reason)


class OverrideSpec(_WhenSpec):
    """`{when: {axis: value-or-list}, set: {field: value}}`: matching points take these settings."""

    set: Annotated[dict[str, Any], Field(min_length=1)]

    @field_validator("set", mode="before")
    @classmethod
    def _valid_set(cls, raw: Any) -> dict[str, Any]:
        return _check_settings(raw)

    def rule(self) -> OverrideRule:
        return OverrideRule(when=self.when_values(), to=dict(self.set))


class PlotHint(BaseModel):
    """How the report plots a study: y metrics against axis x, one line per hue (and style)."""

    model_config = _STRICT
    x: str
    y: Annotated[list[str], Field(min_length=1)]
    hue: Optional[str] = None
    style: Optional[str] = None
    col: Optional[str] = None  # one panel per value (small multiples) instead of overlapping series
    logx: bool = False
    logy: bool = False
    note: str = ""  # a sentence for the caption, e.g. why some series coincide

    @field_validator("x", "hue", "style", "col")
    @classmethod
    def _known_axis(cls, name: Optional[str]) -> Optional[str]:
        if name is not None and name not in settings_model().model_fields:
            raise ValueError(f"unknown axis '{name}'")
        return name


class _Gridded(_Base):
    @field_validator("grid", check_fields=False)
    @classmethod
    def _valid_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            _check_values(key, values)
        return grid


class StudySpec(_Gridded):
    """A named sub-grid: axes -> values, settings over the suite's base, skip rules, plot hint."""

    description: str = ""
    grid: dict[str, Axis]
    base: Settings
    skip: list[SkipSpec] = Field(default_factory=list)
    overrides: list[OverrideSpec] = Field(default_factory=list)
    fixed_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    plot: Optional[PlotHint] = None
    breakdown: Optional[bool] = None  # profile one extra iteration per point for its stage times


class ProfileStudySpec(_Gridded):
    """A profile's changes to one study: axes replaced by name, settings, extra skip rules."""

    grid: dict[str, Axis] = Field(default_factory=dict)
    base: Settings
    skip: list[SkipSpec] = Field(default_factory=list)
    fixed_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    enabled: bool = True
    breakdown: Optional[bool] = None


class ProfileSpec(_Base):
    """`cpu` (small, minutes on a laptop) or `gpu` (paper scale)."""

    description: str = ""
    base: Settings
    repeats: Optional[Annotated[int, Field(ge=1)]] = None
    warmup: Optional[Annotated[int, Field(ge=0)]] = None
    timeout_s: Optional[Annotated[float, Field(gt=0)]] = None
    processes: Optional[Annotated[int, Field(ge=1)]] = None
    studies: dict[str, ProfileStudySpec] = Field(default_factory=dict)


class SuiteSpec(_Base):
    """The whole YAML file."""

    kind: Literal["grid"] = "grid"
    name: str
    description: str = ""
    base: Settings
    repeats: Annotated[int, Field(ge=1)] = 5
    warmup: Annotated[int, Field(ge=0)] = 2
    timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # Worker processes per point that read memory (the executor reports their median).
    processes: Annotated[int, Field(ge=1)] = 3
    studies: Annotated[dict[str, StudySpec], Field(min_length=1)]
    profiles: dict[Literal[PROFILES], ProfileSpec] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _check_name("suite name", name)

    @field_validator("studies")
    @classmethod
    def _safe_study_names(cls, studies: dict[str, StudySpec]) -> dict[str, StudySpec]:
        for name in studies:
            _check_name("study name", name)
        return studies

    @model_validator(mode="after")
    def _profile_studies_exist(self) -> "SuiteSpec":
        for pname, profile in self.profiles.items():
            for sname in profile.studies:
                if sname not in self.studies:
                    raise ValueError(
                        f"profiles.{pname}.studies.{sname}: no such study; "
                        f"known: {', '.join(self.studies)}"
                    )
        return self


@dataclass(frozen=True)
class Suite:
    """A validated suite file and what it expands to."""

    path: Path
    spec: SuiteSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def profile(self, profile: str) -> ProfileSpec:
        if profile not in self.spec.profiles:
            raise SuiteError(
                f"{self.path}: profiles: no profile '{profile}' (has: {', '.join(self.spec.profiles) or 'none'})"
            )
        return self.spec.profiles[profile]

    def study_grids(self, profile: str) -> list[StudyGrid]:
        """Each enabled study merged with the profile: suite base < profile base < study base <
        profile's study base; profile axes replace the study's axes of the same name."""
        prof = self.profile(profile)
        grids = []
        for name, study in self.spec.studies.items():
            over = prof.studies.get(name, ProfileStudySpec())
            if not over.enabled:
                continue
            axes = {**study.grid, **over.grid}
            grids.append(
                StudyGrid(
                    name=name,
                    settings={**self.spec.base, **prof.base, **study.base, **over.base},
                    axes=tuple((k, tuple(v)) for k, v in axes.items()),
                    skip=tuple(s.rule() for s in [*study.skip, *over.skip]),
                    fixed_tokens=over.fixed_tokens or study.fixed_tokens,
                    overrides=tuple(o.rule() for o in study.overrides),
                    breakdown=study.breakdown if over.breakdown is None else over.breakdown,
                )
            )
        return grids

    def measurement(self, profile: str) -> dict[str, Any]:
        """repeats, warmup, timeout_s and processes for a profile (the profile's value, else the suite's)."""
        prof = self.profile(profile)
        return {
            key: getattr(prof, key) if getattr(prof, key) is not None else getattr(self.spec, key)
            for key in ("repeats", "warmup", "timeout_s", "processes")
        }

    def count_points(self, profile: str) -> int:
        """Grid combinations of the profile's studies (the product of each study's axis sizes,
        summed): what expansion would visit, before de-duplication, at no cost."""
        return sum(math.prod(len(values) for _, values in grid.axes) for grid in self.study_grids(profile))

    def expand(
        self, profile: str, *, auto_device: str = "cpu", force_device: str | None = None,
        max_points: int | None = DEFAULT_MAX_POINTS,
    ) -> list[PlannedPoint]:
        """The profile's distinct points; SuiteError for any impossible one, or for more than
        `max_points` grid combinations (counted before anything is expanded; None: no limit)."""
        count = self.count_points(profile)
        if max_points is not None and count > max_points:
            raise SuiteError(
                f"{self.path}: profile '{profile}' has {count} grid points, more than the limit of "
                f"{max_points}; shrink the grid or raise --max-points"
            )
        measurement = self.measurement(profile)
        measurement.pop("processes")  # how memory is read, not part of a point
        try:
            return expand(
                self.study_grids(profile),
                suite=self.name,
                model_defaults=model_defaults(),
                auto_device=auto_device,
                force_device=force_device,
                check=_check_model,
                **measurement,
            )
        except GridError as exc:
            raise SuiteError(f"{self.path}: profile '{profile}', {exc}") from exc

    def resolved_spec(self, profile: str) -> dict[str, Any]:
        """What run.json stores: the suite as this profile runs it (merged studies, plot hints)."""
        studies = {}
        for grid in self.study_grids(profile):
            study = self.spec.studies[grid.name]
            studies[grid.name] = {
                "description": study.description,
                "base": dict(grid.settings),
                "grid": {k: list(v) for k, v in grid.axes},
                "skip": [{"when": {k: list(v) for k, v in r.when.items()}, "reason": r.reason} for r in grid.skip],
                "fixed_tokens": grid.fixed_tokens,
                "overrides": [{"when": {k: list(v) for k, v in o.when.items()}, "set": dict(o.to)} for o in grid.overrides],
                "plot": study.plot.model_dump() if study.plot else None,
                **({"breakdown": grid.breakdown} if grid.breakdown is not None else {}),
            }
        return {
            "name": self.name,
            "description": self.spec.description,
            "path": str(self.path),
            "profile": profile,
            **self.measurement(profile),
            "studies": studies,
        }


def load_suite(ref: str | Path, *, trial_expand: bool = True) -> Suite:
    """Read, validate and (unless `trial_expand` is False, e.g. for a run, which expands its own
    profile once) trial-expand every profile of a grid suite; SuiteError on any problem."""
    path = resolve_suite_path(ref)
    spec = validate(path, SuiteSpec, read_yaml(path))
    suite = Suite(path=path, spec=spec)
    for profile in spec.profiles if trial_expand else ():
        suite.expand(profile, auto_device="cuda" if profile == "gpu" else "cpu")
    return suite
