"""What every kind of suite shares, written once and torch-free: where suites live, reading a YAML
file (a key twice in one mapping refused), `kind:` (grid when absent), the name rule, the typed
settings layer (`base`: ReformerConfig fields and point settings, unknown keys refused) and error
messages naming the file and the field. Each kind's schema (bench.suite, bench.capacity.spec,
bench.quality.schema, bench.duplication.spec) builds on these."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re
import sys
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from bench.point import DTYPES, IMPLS

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITES_DIR = REPO_ROOT / "suites"
PROFILES = ("cpu", "gpu")
KINDS = ("grid", "capacity", "duplication", "quality")
# Workloads a grid suite may use; the duplication task has its own runner (bench.duplication).
GRID_WORKLOADS = ("attention", "model")
# Every suite model refuses unknown keys and non-finite numbers (`.inf`, `.nan`: a budget, rate or
# timeout of infinity is stored as null and then means nothing); STRICT also refuses coercion.
CHECKED = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
STRICT = ConfigDict(CHECKED, strict=True)
# Suite and study names become folder names and table cells: letters, digits, '_' and '-' only,
# so no path component ('.', '..', '/') and no rich markup ('[', ']') can hide in one.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


class SuiteError(ValueError):
    """A suite file that cannot run; the message names the file, where in it, and why."""


def check_name(what: str, name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{what} {name!r}: use only letters, digits, '_' and '-'")
    return name


def describe(err: Mapping[str, Any]) -> str:
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


def format_errors(path: Path, exc: ValidationError) -> str:
    """Every problem of a suite file, one line each: `<file>: <field>: <why> (got <value>)`."""
    return "\n".join(f"{path}: {describe(err)}" for err in exc.errors())


@lru_cache(maxsize=1)
def reformer_config_class() -> type:
    """ReformerConfig, without importing torch: reformer_impl's package imports the model (torch),
    so until something has imported it, its torch-free config module is loaded on its own (the
    class validates and gives defaults; models are built from reformer_impl's own)."""
    if "reformer_impl" in sys.modules:
        return sys.modules["reformer_impl"].ReformerConfig
    name = "bench._reformer_config"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "reformer_impl" / "config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and get_type_hints look the module up by name
    spec.loader.exec_module(module)
    return module.ReformerConfig


@lru_cache(maxsize=1)
def model_defaults() -> dict[str, Any]:
    """Every ReformerConfig field with its default, in declaration order."""
    return {f.name: f.default for f in dataclasses.fields(reformer_config_class())}


def check_model(settings: Mapping[str, Any]) -> None:
    """Raise ValueError (naming the field) if the model config these settings give is impossible."""
    reformer_config_class()(**{name: settings[name] for name in model_defaults() if name in settings})


@lru_cache(maxsize=1)
def settings_model() -> type[BaseModel]:
    """The typed model of one settings layer (`base`): every ReformerConfig field plus the point
    settings, all optional, strictly typed, unknown keys refused."""
    cls = reformer_config_class()
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
    return create_model("Settings", __config__=STRICT, **fields)


def check_settings(raw: Any) -> dict[str, Any]:
    """Validate one settings mapping; returns only the keys it sets."""
    if raw is None:
        return {}
    try:
        return settings_model().model_validate(raw).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise ValueError("; ".join(describe(err) for err in exc.errors())) from None


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


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when built with it
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
    key twice in one mapping. Parsed once per version of the file (kind, then schema)."""
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read as YAML: {exc}") from exc
    return copy.deepcopy(_parse(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=64)
def _parse(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        raw = yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: cannot read as YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def suite_kind(path: Path) -> str:
    """The suite's `kind:` (grid when absent); SuiteError naming the field for an unknown one."""
    kind = read_yaml(path).get("kind", "grid")
    if kind not in KINDS:
        raise SuiteError(f"{path}: kind: unknown suite kind {kind!r}; expected one of {', '.join(KINDS)}")
    return str(kind)


def validate(path: Path, model: type[BaseModel], raw: Mapping[str, Any]) -> Any:
    """`raw` validated by a kind's schema; SuiteError listing every problem, each naming its field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(format_errors(path, exc)) from None
