"""The base of every configuration model: strict (unknown fields are errors) and frozen."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# Stable ids (companies, devices, sites): the same in logs, topics, tags and task names.
Slug = Annotated[str, Field(pattern=SLUG_PATTERN, min_length=1, max_length=64)]


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
