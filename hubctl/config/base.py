"""The base of every configuration model, and the one way an operator's YAML file is read and checked.

`FrozenModel` is strict (unknown fields are errors) and frozen. `load_yaml` reads a YAML file and
`parse_model` validates its data into a model; both raise a `ProblemsError` subclass chosen by the
caller (`ConfigError` for a site config, `RegisterMapError` for a register map) whose problems are
one line each, `path: message`, as `format_errors` writes them. `load_config`/`parse_config`
(site.py) and `load_map`/`parse_map` (codec/regmap.py) are these with their model and error.

(config/scenario.py's `load_scenario` reads its YAML with `load_yaml` too, but words the
validation problems its own way: messages keep pydantic's "Value error, " prefix and an empty
path stays empty.)

What `load_yaml` refuses, each a problem line and so exit 78, never a traceback (issue #13):

- a file that cannot be read, is larger than `MAX_YAML_BYTES` (4 MiB; a site config is a few
  KiB), holds NUL bytes (a binary file), or is not UTF-8 (a Latin-1 file: the byte and its
  offset are named);
- a duplicate key in one mapping (`export_limit_kw: 200` and then `export_limit_kw: 20000`):
  YAML says the last one wins, which silently made a 20,000 kW cap; a `<<` merge key may still
  be overridden by the mapping's own keys;
- nesting deeper than `MAX_YAML_DEPTH` (64; a site config needs 6), counted while the document
  is composed, so a YAML nested 5,000 deep ends as a located problem instead of a RecursionError;
- more than `MAX_YAML_NODES` values counted through aliases (an "billion laughs" alias bomb).

`FrozenModel` refuses a boolean where a number is expected: YAML 1.1 reads `no`, `off`, `false`
as False and `yes`, `on`, `true` as True, and pydantic's lax mode would take them as 0 and 1
(`export_limit_kw: no` was a 0 kW cap).
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

if TYPE_CHECKING:
    from pathlib import Path

    from hubctl.errors import ProblemsError

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# Stable ids (companies, devices, sites): the same in logs, topics, tags and task names.
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, min_length=1, max_length=64)]


MAX_YAML_BYTES: Final = 4 * 1024 * 1024
MAX_YAML_DEPTH: Final = 64
MAX_YAML_NODES: Final = 1_000_000


def _is_numeric(annotation: Any) -> bool:
    """Whether a field's annotation takes a number (int, float, `float | None`, Annotated ones)."""
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_numeric(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_is_numeric(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """true/false (yes/no, on/off in YAML 1.1) are not 1 and 0 (module docstring)."""
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _is_numeric(field.annotation):
                raise ValueError(
                    f"expected a number, got the boolean {str(value).lower()} "
                    "(YAML reads yes/no, on/off, true/false as booleans)"
                )
        return value


M = TypeVar("M", bound=BaseModel)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with duplicate keys refused and the nesting bounded (module docstring)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ConstructorError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: PyYAML's own error follows
                if first is not key_node:
                    line = first.start_mark.line + 1
                    raise ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {line})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def _count_nodes(data: Any) -> int:
    """The values in `data`, counted through shared (aliased) ones, up to MAX_YAML_NODES + 1."""
    count, todo = 0, [data]
    while todo and count <= MAX_YAML_NODES:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return count


def _text(path: Path, error: type[ProblemsError]) -> str:
    """The file's text, or `error` for one that cannot be read, is too large, binary or not UTF-8."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise error(str(path), [f"(file): cannot read: {exc.strerror}"]) from exc
    if len(raw) > MAX_YAML_BYTES:
        raise error(str(path), [f"(file): larger than {MAX_YAML_BYTES // (1024 * 1024)} MiB: not a config"])
    if b"\0" in raw:
        raise error(
            str(path), [f"(file): a binary file (a NUL byte at offset {raw.index(0)}), not YAML text"]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise error(str(path), [f"line {line}: not UTF-8 text ({byte}; save the file as UTF-8)"]) from exc


def load_yaml(path: Path, error: type[ProblemsError]) -> Any:
    """The data of the YAML file at `path`; raises `error` when it cannot be read or is not YAML
    (the problem located by line and column where YAML says; module docstring: what is refused)."""
    text = _text(path, error)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(file)"
        raise error(str(path), [f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from exc
    except RecursionError as exc:  # the bound above comes first; this is the last line of defence
        raise error(str(path), [f"(file): nested too deeply (more than {MAX_YAML_DEPTH} levels)"]) from exc
    if _count_nodes(data) > MAX_YAML_NODES:
        raise error(str(path), [f"(file): more than {MAX_YAML_NODES} values (through aliases): not a config"])
    return data


def parse_model(
    model: type[M],
    data: Any,
    source: str,
    error: type[ProblemsError],
    *,
    expected: str,
    named: str | None = None,
) -> M:
    """`data` (from YAML) validated into `model`, or `error` listing every problem.

    `expected` completes "(top level): expected a mapping with ..." for data that is not a
    mapping; `named`, see `format_errors`.
    """
    if not isinstance(data, dict):
        raise error(source, [f"(top level): expected a mapping with {expected}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(source, format_errors(exc, data, named)) from exc


def format_errors(exc: ValidationError, data: Any = None, named: str | None = None) -> list[str]:
    """One line per validation error: its dotted path (or "(top level)") and pydantic's message.

    `named`: a list field of `data` whose items are located by their `name` rather than their index
    (`points[active_power_kw].scale`, not `points.3.scale`) where the item has a name.
    """
    items = data.get(named) if named is not None and isinstance(data, dict) else None
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == named and isinstance(loc[1], int) and isinstance(items, list):
            raw = items[loc[1]] if loc[1] < len(items) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            loc[:2] = [f"{named}[{name}]" if isinstance(name, str) else f"{named}[{loc[1]}]"]
        path = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return lines
