"""Fixtures shared by several test modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_influx import VM_BIN, VictoriaMetrics

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A private VictoriaMetrics (the InfluxDB-v2 write API) on a free loopback port."""
    if VM_BIN is None:
        pytest.skip("victoria-metrics not installed")
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    try:
        yield server
    finally:
        server.stop()
