"""The base of every configuration model, and the one way an operator's YAML file is read and checked.

`FrozenModel` is strict (unknown fields are errors) and frozen. `load_yaml` reads a YAML file and
`parse_model` validates its data into a model; both raise a `ProblemsError` subclass chosen by the
caller (`ConfigError` for a site config, `RegisterMapError` for a register map) whose problems are
one line each, `path: message`, as `format_errors` writes them. `load_config`/`parse_config`
(site.py) and `load_map`/`parse_map` (codec/regmap.py) are these with their model and error.

(config/scenario.py's `load_scenario` still reads its YAML and words its problems its own way:
"(file): not valid YAML: <the whole YAML error>" without line and column, messages keep pydantic's
"Value error, " prefix and an empty path stays empty.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from pathlib import Path

    from hubctl.errors import ProblemsError

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# Stable ids (companies, devices, sites): the same in logs, topics, tags and task names.
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, min_length=1, max_length=64)]


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def load_yaml(path: Path, error: type[ProblemsError]) -> Any:
    """The data of the YAML file at `path`; raises `error` when it cannot be read or is not YAML
    (the problem located by line and column where YAML says)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), [f"(file): cannot read: {exc.strerror}"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(file)"
        raise error(str(path), [f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc


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
