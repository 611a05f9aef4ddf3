"""`kind: capacity` suites: a YAML file validated once into typed models, resolved per profile into
configurations to search, each refused up front with a message naming the field.

    kind: capacity
    name: capacity
    base: {...}                  # settings every configuration shares (ReformerConfig fields,
                                 # dtype, batch_size, seq_len)
    search: {over: seq_len, start: 512, max_value: 65536, resolution: 0.0625, multiple: 64}
    configs:                     # each entry: a name, settings, optional axes crossed into several
      - {name: lsh, base: {attention: lsh}, grid: {n_hashes: [1, 2], reversible: [true, false]}}
    profiles:
      cpu: {memory_budget_gib: 2, device: cpu, base: {...}, search: {...}, configs: [names],
            config_budget: {name: {memory_budget_gib: 8, timeout_s: 900}},   # a config's own limits
            mmap_threshold_kib: 128}     # glibc's mmap threshold fixed in each probe worker
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

from pydantic import BaseModel, Field, field_validator, model_validator

from bench.capacity.planner import Search
from bench.grid import POINT_DEFAULTS, canonical_model, product_dict
from bench.point import GridPoint
from bench.loader import (
    NAME_PATTERN, PROFILES, STRICT as _STRICT, SuiteError, check_settings, model_defaults, read_yaml, reformer_config_class,
    resolve_suite_path, validate,
)

MMAP_THRESHOLD_MAX_KIB = 32 * 1024  # glibc's largest M_MMAP_THRESHOLD on 64-bit (mallopt refuses more)
WORKLOAD = "train_step"  # bench.workloads: forward, backward and optimizer step of the whole model
SEARCH_AXES = ("seq_len", "batch_size")
_NOT_SETTABLE = ("workload", "impl", "device", "max_seq_len")  # fixed by the study or by the probe


def _settings(raw: Any) -> dict[str, Any]:
    """One settings mapping, validated by the grid suites' own settings model."""
    if raw is None:
        return {}
    for key in _NOT_SETTABLE:
        if key in raw:
            raise ValueError(f"{key}: not settable in a capacity suite (the study sets it)")
    return check_settings(raw)


Settings = Annotated[dict[str, Any], Field(default_factory=dict)]


class _WithSettings(BaseModel):
    model_config = _STRICT

    @field_validator("base", mode="before", check_fields=False)
    @classmethod
    def _valid_base(cls, raw: Any) -> dict[str, Any]:
        return _settings(raw)


class SearchSpec(BaseModel):
    """What is searched and how finely: `over` doubles from `start` up to `max_value`, then bisects
    until the bracket is at most `resolution` of the longest fit; values are multiples of `multiple`
    (and of chunk_len for LSH, so no length is padded)."""

    model_config = _STRICT
    over: Optional[Literal[SEARCH_AXES]] = None
    start: Optional[Annotated[int, Field(ge=1)]] = None
    max_value: Optional[Annotated[int, Field(ge=1)]] = None
    resolution: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    multiple: Optional[Annotated[int, Field(ge=1)]] = None


class ConfigSpec(_WithSettings):
    """One configuration, or several: `grid` axes are crossed, each combination a configuration."""

    # a label in tables, never a path: no '/', '[' or space, and no '.' first (so never '.' or '..')
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")]
    base: Settings
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _valid_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            for value in values:
                _settings({key: value})
        return grid


class ConfigBudget(BaseModel):
    """One configuration's own limits in a profile (each unset: the profile's)."""

    model_config = _STRICT
    memory_budget_gib: Optional[Annotated[float, Field(gt=0)]] = None
    timeout_s: Optional[Annotated[float, Field(gt=0)]] = None


class ProfileSpec(_WithSettings):
    """`cpu` (minutes on 2 cores) or `gpu` (paper scale). The budget is what a probe may use."""

    description: str = ""
    memory_budget_gib: Annotated[float, Field(gt=0)]
    device: Literal["auto", "cpu", "cuda"] = "auto"
    base: Settings
    search: SearchSpec = SearchSpec()
    timeout_s: Optional[Annotated[float, Field(gt=0)]] = None
    # glibc's mmap threshold fixed in each probe worker (mallopt M_MMAP_THRESHOLD, as the memory suite's
    # reading does): every allocation above it is its own mapping, returned to the kernel when freed,
    # so RSS follows the live tensors. Unset: the allocator's default, whose threshold rises with the
    # largest block freed (up to 32 MiB), leaving freed activations below it in the heap.
    mmap_threshold_kib: Optional[Annotated[int, Field(ge=4, le=MMAP_THRESHOLD_MAX_KIB)]] = None
    configs: Optional[list[str]] = None  # a subset of the suite's configs, by name; default all (--only overrides)
    # Per config name, changes to this profile's search (e.g. a lower max_value where a step grows
    # too slow long before the memory runs out).
    config_search: dict[str, SearchSpec] = Field(default_factory=dict)
    # Per config name, its own memory budget and per-probe timeout (a larger model's own limits).
    config_budget: dict[str, ConfigBudget] = Field(default_factory=dict)


class CapacitySpec(_WithSettings):
    """The whole YAML file."""

    kind: Literal["capacity"]
    name: Annotated[str, Field(min_length=1, pattern=NAME_PATTERN)]  # a folder name
    description: str = ""
    base: Settings
    search: SearchSpec
    timeout_s: Annotated[float, Field(gt=0)] = 600.0
    configs: Annotated[list[ConfigSpec], Field(min_length=1)]
    profiles: Annotated[dict[Literal[PROFILES], ProfileSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> "CapacitySpec":
        names = [c.name for c in self.configs]
        if len(set(names)) != len(names):
            raise ValueError(f"configs: names must be unique, got {names}")
        for pname, prof in self.profiles.items():
            for key, given in (("configs", prof.configs or ()), ("config_search", prof.config_search),
                               ("config_budget", prof.config_budget)):
                unknown = sorted(set(given) - set(names))
                if unknown:
                    raise ValueError(f"profiles.{pname}.{key}: no such config {unknown}; known: {names}")
        return self


@dataclass(frozen=True)
class CapacityConfig:
    """One configuration to search: its label and every setting but the searched one."""

    label: str
    settings: Mapping[str, Any]
    search: Mapping[str, Any] = field(default_factory=dict)  # this config's changes to the search
    memory_budget_gib: float | None = None  # its own budget; None: the plan's
    timeout_s: float | None = None  # its own per-probe timeout; None: the plan's


@dataclass(frozen=True)
class CapacityPlan:
    """A capacity suite resolved for one profile and device."""

    suite: str
    profile: str
    device: str
    over: str
    search: SearchSpec  # fully set
    memory_budget_gib: float
    timeout_s: float
    configs: tuple[CapacityConfig, ...]
    description: str = ""
    mmap_threshold_kib: int | None = None  # fixed in each probe worker; None: the allocator's default

    def search_for(self, config: CapacityConfig) -> Search:
        """The planner's search for one configuration: LSH lengths are multiples of chunk_len too."""
        spec = {**self.search.model_dump(), **config.search}
        multiple = int(spec["multiple"] or 1)
        if self.over == "seq_len" and config.settings.get("attention") == "lsh":
            multiple = math.lcm(multiple, int(config.settings["chunk_len"]))
        return Search(start=int(spec["start"]), max_value=int(spec["max_value"]),
                      resolution=float(spec["resolution"]), multiple=multiple)

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> "CapacityPlan":
        """The plan a run.json's suite_spec describes (the inverse of `to_json`)."""
        search = dict(spec["search"])
        over = search.pop("over")
        return cls(
            suite=spec["name"], profile=spec["profile"], device=spec["device"], over=over,
            search=SearchSpec(over=over, **search), memory_budget_gib=float(spec["memory_budget_gib"]),
            timeout_s=float(spec["timeout_s"]), description=spec.get("description", ""),
            mmap_threshold_kib=spec.get("mmap_threshold_kib"),
            configs=tuple(CapacityConfig(c["label"], c["settings"], c.get("search") or {},
                                         c.get("memory_budget_gib"), c.get("timeout_s")) for c in spec["configs"]),
        )

    def budget_gib_for(self, config: CapacityConfig) -> float:
        """The configuration's memory budget: its own where the profile gives one, else the plan's."""
        return float(config.memory_budget_gib if config.memory_budget_gib is not None else self.memory_budget_gib)

    def timeout_for(self, config: CapacityConfig) -> float:
        """The configuration's per-probe timeout: its own where the profile gives one, else the plan's."""
        return float(config.timeout_s if config.timeout_s is not None else self.timeout_s)

    def point(self, config: CapacityConfig, value: int) -> GridPoint:
        """The GridPoint of one probe: the configuration with the searched axis set to `value`."""
        settings = {**config.settings, self.over: int(value)}
        settings["max_seq_len"] = settings["seq_len"]  # the position table the probed length needs
        return GridPoint(
            suite=self.suite, workload=WORKLOAD, device=self.device, dtype=settings["dtype"],
            batch_size=settings["batch_size"], seq_len=settings["seq_len"],
            model=canonical_model(settings, tuple(model_defaults())), impl="ours",
            repeats=1, warmup=0, timeout_s=self.timeout_for(config), studies=("capacity",),
        )

    def to_json(self) -> dict[str, Any]:
        """What run.json keeps: everything that decides a probe's outcome."""
        return {
            "kind": "capacity", "name": self.suite, "profile": self.profile, "device": self.device,
            "description": self.description, "memory_budget_gib": self.memory_budget_gib,
            "timeout_s": self.timeout_s, "mmap_threshold_kib": self.mmap_threshold_kib,
            "search": {"over": self.over, **self.search.model_dump()},
            "configs": [{"label": c.label, "settings": dict(c.settings), "search": dict(c.search),
                         "memory_budget_gib": c.memory_budget_gib, "timeout_s": c.timeout_s}
                        for c in self.configs],
        }


def _label(name: str, combo: Mapping[str, Any]) -> str:
    return " ".join([name, *(f"{k}={_short(v)}" for k, v in combo.items())])


def _short(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve(spec: CapacitySpec, profile: str, device: str, path: Path | str = "",
            only: Sequence[str] | None = None) -> CapacityPlan:
    """The profile's configurations (`only`, config names, instead of its `configs` where given),
    settings merged (defaults < suite base < profile base < config base < config axes); SuiteError
    naming the config and field for an impossible one."""
    if profile not in spec.profiles:
        raise SuiteError(f"{path}: profiles: no profile '{profile}' (has: {', '.join(spec.profiles)})")
    prof = spec.profiles[profile]
    search = SearchSpec(**{**spec.search.model_dump(), **prof.search.model_dump(exclude_none=True)})
    missing = [k for k, v in search.model_dump().items() if v is None and k != "multiple"]
    if missing:
        raise SuiteError(f"{path}: search.{missing[0]}: not set (in the suite or profiles.{profile}.search)")
    search = SearchSpec(**{**search.model_dump(), "multiple": search.multiple or 1})
    if search.max_value < search.start:
        raise SuiteError(f"{path}: search.max_value={search.max_value}: below search.start={search.start}")
    wanted = prof.configs if only is None else list(only)
    configs = []
    defaults = {**{k: v for k, v in POINT_DEFAULTS.items() if k in ("dtype", "batch_size")}, **model_defaults()}
    for cspec in spec.configs:
        if wanted is not None and cspec.name not in wanted:
            continue
        for combo in product_dict(list(cspec.grid.items())):
            settings = {**defaults, **spec.base, **prof.base, **cspec.base, **combo}
            label = _label(cspec.name, combo)
            if search.over == "batch_size" and "seq_len" not in {**spec.base, **prof.base, **cspec.base, **combo}:
                raise SuiteError(f"{path}: configs.{label}: seq_len: not set (a batch_size search holds it fixed)")
            settings.pop(search.over, None)
            _check(settings, search, label, path)
            own = prof.config_search.get(cspec.name)
            own_search = own.model_dump(exclude_none=True) if own is not None else {}
            if "over" in own_search:
                raise SuiteError(f"{path}: profiles.{profile}.config_search.{cspec.name}.over: "
                                 "one search axis per profile")
            own_budget = prof.config_budget.get(cspec.name) or ConfigBudget()
            configs.append(CapacityConfig(label=label, settings=settings, search=own_search,
                                          memory_budget_gib=own_budget.memory_budget_gib,
                                          timeout_s=own_budget.timeout_s))
    plan = CapacityPlan(suite=spec.name, profile=profile, device=device, over=search.over, search=search,
                        memory_budget_gib=prof.memory_budget_gib,
                        timeout_s=prof.timeout_s if prof.timeout_s is not None else spec.timeout_s,
                        configs=tuple(configs), description=prof.description or spec.description,
                        mmap_threshold_kib=prof.mmap_threshold_kib)
    for config in plan.configs:
        try:
            plan.search_for(config)
        except ValueError as exc:
            raise SuiteError(f"{path}: configs.{config.label}: search: {exc}") from None
    return plan


def _check(settings: Mapping[str, Any], search: SearchSpec, label: str, path: Path | str) -> None:
    """Build the model config at the search's start, so an impossible one is refused before a probe."""
    ReformerConfig = reformer_config_class()
    trial = {**settings, search.over: search.start}
    fields = {k: trial[k] for k in model_defaults()}
    fields["max_seq_len"] = trial.get("seq_len", fields["max_seq_len"])
    try:
        ReformerConfig(**fields)
    except ValueError as exc:
        raise SuiteError(f"{path}: configs.{label}: {exc}") from None


def load_capacity_suite(ref: str | Path) -> tuple[Path, CapacitySpec]:
    """Read and validate a capacity suite and resolve every profile once; SuiteError on any problem."""
    path = resolve_suite_path(ref)
    spec = validate(path, CapacitySpec, read_yaml(path))
    for profile in spec.profiles:
        resolve(spec, profile, "cuda" if profile == "gpu" else "cpu", path)
    return path, spec
