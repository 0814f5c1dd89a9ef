"""Frozen models of the cluster config, built from the ecelerity.conf tree.

``parse_config`` and ``load_config`` check the whole file and raise one
ConfigError listing every problem found, each with its position.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    field_serializer,
    field_validator,
)

from mcluster.config.constants import (
    DEFAULT_OBJECT_TYPES,
    REPLICATE_OPTIONS,
    REPLICATION_PARAMETERS,
    REPLICATION_TYPES,
    SHARDABLE_TYPES,
)
from mcluster.config.errors import ConfigError, ConfigIssue
from mcluster.config.grammar import parse
from mcluster.config.tree import ListValue, Option, Pos, Scope, quote
from mcluster.config.values import (
    OptionMap,
    describe,
    parse_bool,
    parse_float,
    parse_int,
    scalar_text,
    to_python,
)
from mcluster.security.config_limits import MAX_CONFIG_BYTES, too_large

_N = TypeVar("_N", int, float)

_TYPES_BY_FOLD = {t.casefold(): t for t in REPLICATION_TYPES}
_TYPE_LIST = ", ".join(REPLICATION_TYPES)
_PARAMETER_LIST = ", ".join(REPLICATION_PARAMETERS)


class ReplicateObject(BaseModel):
    """One ``Replicate "name" { ... }`` stanza of the cluster scope."""

    model_config = ConfigDict(frozen=True, extra="forbid", serialize_by_alias=True)

    name: str = Field(min_length=1)
    type: str
    class_: str | None = Field(
        default=None,
        validation_alias=AliasChoices("class", "class_"),
        serialization_alias="class",
    )
    parameters: tuple[str, ...] = ()
    max_delay: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    max_pending: int = Field(default=100, ge=1)
    max_size: int = -1
    binding_group: str | None = None
    shards: int = Field(default=1, ge=1, le=256)
    source: str = ""

    @field_validator("type", "class_")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in REPLICATION_TYPES:
            raise ValueError(f"must be one of {_TYPE_LIST}, got {quote(value)}")
        return value

    @field_validator("parameters")
    @classmethod
    def _known_parameters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for parameter in value:
            if parameter not in REPLICATION_PARAMETERS:
                raise ValueError(f"unknown parameter {quote(parameter)}")
        return value

    @field_validator("max_size")
    @classmethod
    def _max_size(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"max_size must be -1 or >= 1, got {value}")
        return value


_EMPTY_TREE = Scope("", None, (), Pos("<string>", 1, 1))


class ClusterConfig(BaseModel):
    """The whole config: the replicated objects, the cluster options and the raw tree."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: str
    objects: tuple[ReplicateObject, ...] = ()
    options: OptionMap = Field(default_factory=OptionMap)
    datasources: tuple[str, ...] = ()
    audit_monitors: tuple[tuple[int, int], ...] = ()
    tree: Annotated[Scope, SkipValidation] = Field(default=_EMPTY_TREE, exclude=True, repr=False)

    @field_validator("options", mode="before")
    @classmethod
    def _freeze_options(cls, value: Any) -> Any:
        return value if isinstance(value, OptionMap) else OptionMap(value)

    @field_serializer("options")
    def _plain_options(self, value: OptionMap) -> dict[str, Any]:
        return value.to_dict()

    @property
    def names(self) -> tuple[str, ...]:
        """The object names, in file order."""
        return tuple(o.name for o in self.objects)

    def object(self, name: str) -> ReplicateObject:
        """The object called ``name`` (exact, then case-insensitive); KeyError lists the others."""
        for obj in self.objects:
            if obj.name == name:
                return obj
        for obj in self.objects:
            if obj.name.casefold() == name.casefold():
                return obj
        known = ", ".join(self.names) or "none"
        raise KeyError(f"no replicated object {quote(name)}; defined: {known}")

    def of_type(self, type_: str) -> tuple[ReplicateObject, ...]:
        """The objects of one replication type (case-insensitive)."""
        return tuple(o for o in self.objects if o.type.casefold() == type_.casefold())

    def option_source(self, key: str) -> str | None:
        """``file:line:col`` of a cluster option, or None when it is not set."""
        option = self._option(key)
        return None if option is None else str(option.pos)

    def get_int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        """A cluster option as an integer (quoted or bare); ConfigError if malformed."""
        option = self._option(key)
        if option is None:
            return default
        text = scalar_text(option.value)
        number = None if text is None else parse_int(text)
        if number is None or (minimum is not None and number < minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise _option_error(option, f"an integer{bound}")
        return number

    def get_float(self, key: str, default: float, *, above: float | None = None) -> float:
        """A cluster option as a number; ``above`` is an exclusive lower bound."""
        option = self._option(key)
        if option is None:
            return default
        text = scalar_text(option.value)
        number = None if text is None else parse_float(text)
        if number is None or (above is not None and number <= above):
            bound = "" if above is None else f" > {above:g}"
            raise _option_error(option, f"a number{bound}")
        return number

    def get_str(self, key: str, default: str) -> str:
        """A cluster option as text."""
        option = self._option(key)
        if option is None:
            return default
        text = scalar_text(option.value)
        if text is None:
            raise _option_error(option, "a single value")
        return text

    def get_bool(self, key: str, default: bool) -> bool:
        """A cluster option as a boolean (true/false, yes/no, on/off, 1/0)."""
        option = self._option(key)
        if option is None:
            return default
        text = scalar_text(option.value)
        flag = None if text is None else parse_bool(text)
        if flag is None:
            raise _option_error(option, "true or false")
        return flag

    def _option(self, key: str) -> Option | None:
        cluster = self.tree.scope("cluster")
        return None if cluster is None else cluster.get(key)


def _option_error(option: Option, expected: str) -> ConfigError:
    pos = option.pos
    message = f"{option.key} must be {expected}, got {describe(option.value)}"
    return ConfigError.single(pos.file, pos.line, pos.col, message)


class _Builder:
    """Walks a tree once, collecting every issue, and builds the ClusterConfig."""

    def __init__(self, tree: Scope) -> None:
        self.tree = tree
        self.issues: list[ConfigIssue] = []

    def issue(self, pos: Pos, message: str) -> None:
        self.issues.append(ConfigIssue(pos.file, pos.line, pos.col, message))

    def expect(self, option: Option, expected: str) -> None:
        self.issue(option.pos, f"{option.key} must be {expected}, got {describe(option.value)}")

    def build(self) -> ClusterConfig:
        clusters = self.tree.scopes("cluster")
        for extra in clusters[1:]:
            self.issue(extra.pos, f"duplicate cluster scope: first defined at {clusters[0].pos}")
        self.check_replicate_placement(clusters)
        datasources = self.datasources()
        options: dict[str, Any] = {}
        first_set: dict[str, Option] = {}
        built: list[tuple[Scope, ReplicateObject]] = []
        defined: dict[str, Scope] = {}
        for cluster in clusters:
            for item in cluster.items:
                if isinstance(item, Option):
                    self.cluster_option(item, first_set, options)
                elif item.is_("Replicate") and item.name:
                    obj = self.replicate(item, item.name)
                    folded = item.name.casefold()
                    if folded in defined:
                        first = defined[folded].pos
                        self.issue(
                            item.pos,
                            f"duplicate Replicate {quote(item.name)}: first defined at {first}",
                        )
                    else:
                        defined[folded] = item
                        if obj is not None:
                            built.append((item, obj))
                elif item.is_("Replicate"):
                    self.issue(item.pos, 'Replicate needs a name, e.g. Replicate "inbound_cidr" {}')
        folded_sources = {d.casefold() for d in datasources}
        for scope, obj in built:
            if obj.type == "cache" and obj.name.casefold() not in folded_sources:
                self.issue(
                    scope.pos,
                    f'Replicate {quote(obj.name)} has type "cache" but no '
                    f"Datasource {quote(obj.name)} is defined",
                )
        monitors = self.audit_monitors()
        if self.issues:
            self.issues.sort(key=lambda i: (i.line, i.col))
            raise ConfigError(self.issues)
        return ClusterConfig(
            source=self.tree.pos.file,
            objects=tuple(obj for _, obj in built),
            options=OptionMap(options),
            datasources=tuple(datasources),
            audit_monitors=tuple(monitors),
            tree=self.tree,
        )

    def check_replicate_placement(self, clusters: tuple[Scope, ...]) -> None:
        for parent, scope in self.tree.walk():
            if not scope.is_("Replicate") or any(parent is c for c in clusters):
                continue
            where = "at the top level" if parent is self.tree else f"inside {parent.label}"
            what = scope.label if scope.name is not None else "Replicate"
            self.issue(scope.pos, f"{what} must be inside the cluster scope, found {where}")

    def datasources(self) -> list[str]:
        names: list[str] = []
        for scope in self.tree.scopes("Datasource"):
            if scope.name:
                names.append(scope.name)
            else:
                self.issue(scope.pos, 'Datasource needs a name, e.g. Datasource "mycache" { ... }')
        return names

    def cluster_option(
        self, option: Option, first_set: dict[str, Option], out: dict[str, Any]
    ) -> None:
        folded = option.key.casefold()
        if folded == "replicate":
            self.issue(option.pos, 'Replicate must be a scope: Replicate "name" { ... }')
        elif folded in first_set:
            first = first_set[folded].pos
            self.issue(
                option.pos,
                f"duplicate option {quote(option.key)} in the cluster scope: first set at {first}",
            )
        else:
            first_set[folded] = option
            out[option.key] = to_python(option.value)

    def replicate(self, scope: Scope, name: str) -> ReplicateObject | None:
        """Validate one named Replicate stanza; None if it has problems (already reported)."""
        before = len(self.issues)
        label = scope.label
        seen: dict[str, Option] = {}
        valid = ", ".join(REPLICATE_OPTIONS)
        for item in scope.items:
            if isinstance(item, Scope):
                self.issue(
                    item.pos,
                    f"unexpected scope {item.label} in {label}: expected only options ({valid})",
                )
                continue
            key = item.key.casefold()
            if key not in REPLICATE_OPTIONS:
                self.issue(
                    item.pos,
                    f"unknown option {quote(item.key)} in {label}: expected one of {valid}",
                )
            elif key in seen:
                self.issue(
                    item.pos,
                    f"duplicate option {quote(item.key)} in {label}: first set at {seen[key].pos}",
                )
            else:
                seen[key] = item
        class_ = self.type_of(seen["class"]) if "class" in seen else None
        if "type" in seen:
            type_ = self.type_of(seen["type"])
        elif "class" in seen:
            type_ = class_
        else:
            type_ = _TYPES_BY_FOLD.get(name.casefold())
            if type_ is None:
                self.issue(
                    scope.pos,
                    f"{label} has no type: its name is not a replication type and neither "
                    f"type nor class is set (expected one of {_TYPE_LIST})",
                )
        fields: dict[str, Any] = {}
        if "parameters" in seen:
            fields["parameters"] = self.parameters(seen["parameters"])
        if "max_delay" in seen:
            fields["max_delay"] = self.number(
                seen["max_delay"], parse_float, lambda n: n > 0, "a number > 0"
            )
        if "max_pending" in seen:
            fields["max_pending"] = self.number(
                seen["max_pending"], parse_int, lambda n: n >= 1, "an integer >= 1"
            )
        if "max_size" in seen:
            fields["max_size"] = self.number(
                seen["max_size"], parse_int, lambda n: n == -1 or n >= 1, "-1 or an integer >= 1"
            )
        if "binding_group" in seen:
            group = scalar_text(seen["binding_group"].value)
            if not group:
                self.expect(seen["binding_group"], "a binding group name")
            fields["binding_group"] = group
        if "shards" in seen:
            fields["shards"] = self.shards(seen["shards"], type_)
        if len(self.issues) > before or type_ is None:
            return None
        try:
            return ReplicateObject(
                name=name, type=type_, class_=class_, source=str(scope.pos), **fields
            )
        except ValidationError as exc:  # pragma: no cover - the checks above come first
            for error in exc.errors():
                self.issue(scope.pos, f"{label}: {error['msg']}")
            return None

    def shards(self, option: Option, type_: str | None) -> int | None:
        shards = self.number(option, parse_int, lambda n: 1 <= n <= 256, "an integer from 1 to 256")
        if shards is not None and shards > 1 and type_ not in SHARDABLE_TYPES:
            self.issue(
                option.pos,
                f"shards = {shards} is supported for gauge tables and CIDR trees only "
                f"({', '.join(SHARDABLE_TYPES)}), not {quote(type_ or '?')}",
            )
        return shards

    def type_of(self, option: Option) -> str | None:
        text = scalar_text(option.value)
        resolved = None if text is None else _TYPES_BY_FOLD.get(text.strip().casefold())
        if resolved is None:
            self.expect(option, f"one of {_TYPE_LIST}")
        return resolved

    def parameters(self, option: Option) -> tuple[str, ...]:
        values = option.value.items if isinstance(option.value, ListValue) else (option.value,)
        found: list[str] = []
        for value in values:
            text = scalar_text(value)
            if text is None:
                self.expect(option, '";"-separated parameter names')
                continue
            for part in text.split(";"):
                name = part.strip().casefold()
                if not name or name in found:
                    continue
                if name not in REPLICATION_PARAMETERS:
                    self.issue(
                        option.pos,
                        f"unknown parameter {quote(part.strip())} in parameters: "
                        f"expected any of {_PARAMETER_LIST}",
                    )
                else:
                    found.append(name)
        return tuple(found)

    def number(
        self,
        option: Option,
        parse_text: Callable[[str], _N | None],
        ok: Callable[[_N], bool],
        expected: str,
    ) -> _N | None:
        text = scalar_text(option.value)
        number = None if text is None else parse_text(text)
        if number is None or not ok(number):
            self.expect(option, expected)
            return None
        return number

    def audit_monitors(self) -> list[tuple[int, int]]:
        monitors: list[tuple[int, int]] = []
        for scope in self.tree.scopes("inbound_audit"):
            for option in scope.options("monitors"):
                value = option.value
                for entry in value.items if isinstance(value, ListValue) else (value,):
                    text = scalar_text(entry)
                    parts = [] if text is None else [parse_int(p) for p in text.split(",")]
                    if (
                        len(parts) == 2
                        and parts[0]
                        and parts[1]
                        and parts[0] >= 1
                        and parts[1] >= 1
                    ):
                        monitors.append((parts[0], parts[1]))
                    else:
                        self.issue(
                            entry.pos,
                            'monitors entry must be "SECONDS,WINDOWS" (two integers >= 1), '
                            f"got {describe(entry)}",
                        )
        return monitors


def build_config(tree: Scope) -> ClusterConfig:
    """The ClusterConfig of a parsed tree; ConfigError lists every problem."""
    return _Builder(tree).build()


def parse_config(text: str, filename: str = "<string>") -> ClusterConfig:
    """Parse and check ecelerity.conf text."""
    return build_config(parse(text, filename))


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read, parse and check a config file (UTF-8)."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError.single(filename, 0, 0, f"cannot read: {reason}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise too_large(filename)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        message = f"expected UTF-8 text, got byte 0x{data[exc.start]:02x}"
        raise ConfigError.single(filename, line, col, message) from None
    return parse_config(text.removeprefix("\ufeff"), filename)


__all__ = [
    "DEFAULT_OBJECT_TYPES",
    "REPLICATE_OPTIONS",
    "REPLICATION_PARAMETERS",
    "REPLICATION_TYPES",
    "ClusterConfig",
    "ReplicateObject",
    "build_config",
    "load_config",
    "parse_config",
]
