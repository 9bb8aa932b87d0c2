"""Register maps of the supported Modbus devices, one YAML file each; shipped as `hubctl.drivers`.

A map is data, not code: `hubctl.codec.regmap.load_map` reads it. docs/drivers.md says how to
write one.
"""

from __future__ import annotations

from pathlib import Path

DRIVERS_DIR = Path(__file__).resolve().parent  # the one place that says where the maps are
