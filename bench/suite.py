"""Suites: a YAML file validated once into typed models, then expanded per profile into points.

Every problem (unknown key, wrong type, empty axis, unknown axis, impossible config) is refused
here, before anything runs, as a SuiteError naming the file, the study or profile and the key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from functools import lru_cache
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from bench.grid import GridError, OverrideRule, PlannedPoint, SkipRule, StudyGrid, expand
from bench.point import DTYPES, IMPLS

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
PROFILES = ("cpu", "gpu")
# Workloads a grid suite may use; the duplication task has its own runner (bench.duplication).
GRID_WORKLOADS = ("attention", "model")
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
# Suite and study names become folder names and table cells: letters, digits, '_' and '-' only,
# so no path component ('.', '..', '/') and no rich markup ('[', ']') can hide in one.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
# More points than this are refused before expansion (`bench run --max-points` changes it).
DEFAULT_MAX_POINTS = 5000


class SuiteError(ValueError):
    """A suite file that cannot run; the message names the file, where in it, and why."""


def _model_config_cls():
    # Imported lazily: reformer_impl's package import pulls in torch.
    from reformer_impl.config import ReformerConfig

    return ReformerConfig


@lru_cache(maxsize=1)
def model_defaults() -> dict[str, Any]:
    """Every ReformerConfig field with its default, in declaration order."""
    return {f.name: f.default for f in dataclasses.fields(_model_config_cls())}


@lru_cache(maxsize=1)
def settings_model() -> type[BaseModel]:
    """The typed model of one settings layer (`base`): every ReformerConfig field plus the point
    settings, all optional, strictly typed, unknown keys refused."""
    cls = _model_config_cls()
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {f.name: (Optional[hints[f.name]], None) for f in dataclasses.fields(cls)}
    fields.update(
        workload=(Optional[Literal[GRID_WORKLOADS]], None),
        impl=(Optional[Literal[IMPLS]], None),
        device=(Optional[Literal["auto", "cpu", "cuda"]], None),
        dtype=(Optional[Literal[DTYPES]], None),
        batch_size=(Optional[Annotated[int, Field(ge=1)]], None),
        seq_len=(Optional[Annotated[int, Field(ge=1)]], None),
    )
    return create_model("Settings", __config__=_STRICT, **fields)


def _check_settings(raw: Any) -> dict[str, Any]:
    """Validate one settings mapping; returns only the keys it sets."""
    if raw is None:
        return {}
    try:
        return settings_model().model_validate(raw).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise ValueError("; ".join(_describe(err) for err in exc.errors())) from None


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as 'key: message (got value)'."""
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if err["type"] == "value_error":  # our own validators already quote the value
        return f"{where}: {msg}"
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{where}: {msg} (got {got})"


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


def _check_name(what: str, name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{what} {name!r}: use only letters, digits, '_' and '-'")
    return name


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


class ProfileStudySpec(_Gridded):
    """A profile's changes to one study: axes replaced by name, settings, extra skip rules."""

    grid: dict[str, Axis] = Field(default_factory=dict)
    base: Settings
    skip: list[SkipSpec] = Field(default_factory=list)
    fixed_tokens: Optional[Annotated[int, Field(ge=1)]] = None
    enabled: bool = True


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
            }
        return {
            "name": self.name,
            "description": self.spec.description,
            "path": str(self.path),
            "profile": profile,
            **self.measurement(profile),
            "studies": studies,
        }


def _check_model(settings: Mapping[str, Any]) -> None:
    """Raise ValueError (naming the field) if the point's model config is impossible."""
    cls = _model_config_cls()
    cls(**{name: settings[name] for name in model_defaults()})


def resolve_suite_path(ref: str | Path) -> Path:
    """A suite name in suites/ (with or without .yaml) or a path to a YAML file."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (SUITES_DIR / f"{ref}.yaml", SUITES_DIR / f"{ref}.yml", SUITES_DIR / str(ref)):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.yaml")))
    raise SuiteError(f"suite '{ref}': no such file, and not a suite in {SUITES_DIR} (known: {known})")


class DuplicateKeyError(yaml.YAMLError):
    """One mapping of a YAML file holds the same key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a mapping that holds the same key twice (plain YAML keeps
    the last one silently, so a repeated study name would drop a whole study)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error names it below
                continue
            if first is not None:
                raise DuplicateKeyError(f"duplicate key {key!r} at line {line} (first at line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """The raw mapping of a suite file; SuiteError if it is not YAML, not a mapping, or holds a
    key twice in one mapping."""
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: cannot read as YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def suite_kind(path: Path) -> str:
    """'grid' for suites this module runs, or another runner's kind (e.g. 'duplication')."""
    return str(read_yaml(path).get("kind", "grid"))


def _format_errors(path: Path, exc: ValidationError) -> str:
    return "\n".join(f"{path}: {_describe(err)}" for err in exc.errors())


def load_suite(ref: str | Path, *, trial_expand: bool = True) -> Suite:
    """Read, validate and (unless `trial_expand` is False, e.g. for a run, which expands its own
    profile once) trial-expand every profile of a grid suite; SuiteError on any problem."""
    path = resolve_suite_path(ref)
    raw = read_yaml(path)
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(_format_errors(path, exc)) from None
    suite = Suite(path=path, spec=spec)
    for profile in spec.profiles if trial_expand else ():
        suite.expand(profile, auto_device="cuda" if profile == "gpu" else "cpu")
    return suite
