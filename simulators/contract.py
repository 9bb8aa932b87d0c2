"""The shared simulation contract beside the repository (`../shared`, or `$HUBCTL_SHARED`).

`SHARED` is where the contract, its scenarios and its tools are; `load_score` imports the
contract's scorer (`tools/score.py`) once, as the module `score`, for the tests and benches that
score a `hubctl sim` run in-process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

SHARED = Path(os.environ.get("HUBCTL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@cache
def load_score(shared: Path = SHARED) -> ModuleType:
    """The contract's scorer as a module (registered as `score`: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location("score", shared / "tools" / "score.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(shared / "tools" / "score.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["score"] = module
    spec.loader.exec_module(module)
    return module
