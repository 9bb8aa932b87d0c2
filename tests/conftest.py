"""Fixtures shared by several test modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support import MOSQUITTO, Mosquitto
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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto for anonymous device traffic on a free loopback port."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    instance = Mosquitto(tmp_path)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
