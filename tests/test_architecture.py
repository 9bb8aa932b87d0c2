"""The dependency rules of the package layout (docs/architecture.md), checked on the source.

Each package's `__init__` docstring says what it may import; this test holds the same table and
reads every import statement (also the lazy ones inside functions; `if TYPE_CHECKING:` blocks are
left out, they do not run) of hubctl/ and simulators/. It fails on:
- an import against the table (the core importing the service, devices importing data, ...);
- an I/O or clock library in a pure module (the core, the codecs, the history parser, the physics);
- an import circle between modules;
- a clock read in the control core.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the hubctl packages it may import (besides itself); "simulators" is the top-level one
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "drivers": set(),
    "config": {"errors"},
    "core": {"errors", "config"},
    "codec": {"errors", "config"},
    "transport": {"errors", "codec"},
    "devices": {"errors", "config", "codec", "transport", "drivers", "core"},
    "data": {"errors", "config", "core"},
    # the park page: below the service, which builds it and lends it the state document
    "web": {"errors", "config", "core", "data"},
    "service": {"errors", "config", "core", "codec", "transport", "devices", "data", "drivers", "web"},
    "sim": {"errors", "config", "core", "data", "simulators"},
    "cli": {
        "errors",
        "config",
        "core",
        "codec",
        "transport",
        "devices",
        "data",
        "drivers",
        "service",
        "sim",
        "simulators",
        "web",
    },
    # the simulated devices serve the same maps and codecs hubctl reads; never the shell
    "simulators": {"errors", "config", "codec", "core", "drivers"},
}
PURE = [
    "hubctl/core",
    "hubctl/codec",
    "hubctl/errors.py",
    "hubctl/data/history_import.py",
    "hubctl/data/history_common.py",
    "hubctl/data/history_contract.py",
    "hubctl/data/history_metering.py",
    "hubctl/data/points.py",
    "hubctl/data/report.py",
    "simulators/physics.py",
]
FORBIDDEN = {
    "asyncio",
    "logging",
    "time",
    "socket",
    "subprocess",
    "threading",
    "pymodbus",
    "aiomqtt",
    "paho",
    "influxdb_client",
    "apscheduler",
    "sqlite3",
    "rich",
    "random",
}


def sources() -> list[Path]:
    found = {*(ROOT / "hubctl").rglob("*.py"), *(ROOT / "simulators").rglob("*.py")}
    return sorted(found | {ROOT / "hubctl" / "drivers" / "__init__.py"})  # rglob skips the symlink


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """hubctl.core.plan -> core; hubctl.errors -> errors; simulators.physics -> simulators."""
    parts = module.split(".")
    if parts[0] == "simulators":
        return "simulators"
    return parts[1] if len(parts) > 1 else "hubctl"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def imports(path: Path) -> frozenset[str]:
    """Every module `path` imports when it runs (TYPE_CHECKING blocks left out)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module)
                # `from hubctl.codec import sunspec` imports the module hubctl.codec.sunspec
                names.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(names)


def internal(names: frozenset[str], known: set[str]) -> set[str]:
    return {n for n in names if n in known}


KNOWN = {module_name(p) for p in sources()}


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_package_rules(path: Path) -> None:
    me = package_of(module_name(path))
    if me == "hubctl":  # hubctl/__init__.py
        assert not internal(imports(path), KNOWN)
        return
    allowed = ALLOWED[me] | {me}
    bad = sorted(n for n in internal(imports(path), KNOWN) if package_of(n) not in allowed)
    assert not bad, f"{path.relative_to(ROOT)} ({me}) may not import {bad}"


@pytest.mark.parametrize("target", PURE)
def test_pure_modules_do_no_io(target: str) -> None:
    base = ROOT / target
    for path in sorted(base.rglob("*.py")) if base.is_dir() else [base]:
        top = {n.split(".")[0] for n in imports(path)}
        assert not top & FORBIDDEN, f"{path.relative_to(ROOT)} imports {sorted(top & FORBIDDEN)}"


def test_no_import_circles() -> None:
    graph = {module_name(p): internal(imports(p), KNOWN) for p in sources()}
    # a package's __init__ is imported by its modules implicitly: not an edge worth a circle
    graph = {m: {n for n in deps if n != m and not m.startswith(n + ".")} for m, deps in graph.items()}
    done: set[str] = set()
    path: list[str] = []

    def walk(node: str) -> None:
        if node in path:
            circle = [*path[path.index(node) :], node]
            pytest.fail("import circle: " + " -> ".join(circle))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            walk(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        walk(module)


def test_the_rules_table_names_every_package() -> None:
    packages = {package_of(module_name(p)) for p in sources()} - {"hubctl"}
    assert packages == set(ALLOWED), sorted(packages ^ set(ALLOWED))


def test_a_rule_breach_is_seen(tmp_path: Path) -> None:
    """The checker itself: a core module importing the service is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from hubctl.service.gateway import Gateway\nimport asyncio\n", encoding="utf-8")
    names = internal(imports(bad), KNOWN)
    assert {package_of(n) for n in names} == {"service"}
    assert "asyncio" in imports(bad)
    guarded = tmp_path / "guarded.py"
    guarded.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hubctl.service import gateway\n",
        encoding="utf-8",
    )
    assert not internal(imports(guarded), KNOWN)


def test_no_clock_reads_in_the_control_core() -> None:
    for path in sorted((ROOT / "hubctl" / "core").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for call in ("datetime.now", "time.time", "monotonic(", "date.today"):
            assert call not in text, f"{path.relative_to(ROOT)} reads the clock ({call})"
