"""Device section of the site configuration: which meters, inverters and batteries hubctl talks to.

Each device has a stable slug `id` (used the same in logs, topics, tags and
task names), belongs to a company (or to the park, for a park-level meter),
plays one role for the controller, and is reached over Modbus TCP (with a
register map from `drivers/` or SunSpec discovery) or over MQTT.

Roles (sign convention of SCENARIOS.md after the driver's `sign`):
- `grid_meter`: the company's connection; + import, - export.
- `pv`: a PV inverter; output >= 0; takes a power limit.
- `battery`: a battery system; + discharge, - charge; takes a power setpoint.
- `park_meter`: the park's group connection, where there is one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from hubctl.config.base import FrozenModel as _Model
from hubctl.config.base import Slug


class DeviceRole(StrEnum):
    GRID_METER = "grid_meter"
    PV = "pv"
    BATTERY = "battery"
    PARK_METER = "park_meter"


class ModbusEndpoint(_Model):
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=2.0, gt=0, le=30)


class MqttPoint(_Model):
    """One reading published over MQTT: a topic, and where the number sits in its payload."""

    topic: str = Field(min_length=1)
    json_path: str | None = Field(
        default=None, description='dotted path into a JSON payload, e.g. "ENERGY.Power"'
    )
    scale: float = Field(default=1.0, description="multiplier to the point's unit (e.g. 0.001 for W -> kW)")
    stale_after_s: float = Field(default=10.0, gt=0)


class MqttDevice(_Model):
    points: dict[str, MqttPoint] = Field(
        min_length=1, description="point name (e.g. active_power_kw) -> source"
    )
    setpoint_topic: str | None = Field(
        default=None, description="where a power limit or setpoint is published"
    )
    setpoint_template: str = Field(
        default='{"power_kw": {value}}',
        description="payload; {value} in kW; with setpoint_ttl_s also {expires_at} (UTC ISO) and {ttl_s}",
    )
    setpoint_ttl_s: float | None = Field(
        default=None,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="a setpoint expires this long after it was published (the device sees when:"
        " {expires_at}); published retained, re-published every third of it, cleared on a clean stop",
    )
    setpoint_min_kw: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="the lowest setpoint the device takes (battery: - its charge power)",
    )
    setpoint_max_kw: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="the highest setpoint the device takes (battery: its discharge power)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        low, high = self.setpoint_min_kw, self.setpoint_max_kw
        if low is not None and high is not None and low > high:
            raise ValueError(f"setpoint_min_kw ({low:g}) is above setpoint_max_kw ({high:g})")
        if self.setpoint_ttl_s is not None and "{expires_at}" not in self.setpoint_template:
            raise ValueError(
                "setpoint_ttl_s needs {expires_at} in setpoint_template: a retained setpoint must carry"
                ' its expiry, e.g. \'{"power_kw": {value}, "expires_at": "{expires_at}"}\''
            )
        if self.setpoint_ttl_s is None and (
            "{expires_at}" in self.setpoint_template or "{ttl_s}" in self.setpoint_template
        ):
            raise ValueError("{expires_at} and {ttl_s} in setpoint_template need setpoint_ttl_s")
        return self


class Device(_Model):
    id: Slug
    company: Slug | None = Field(default=None, description="owning company; none for a park meter")
    role: DeviceRole
    driver: str = Field(
        min_length=1,
        description='register map name in drivers/ (e.g. "eastron-sdm630"), "sunspec", or "mqtt"',
    )
    modbus: ModbusEndpoint | None = None
    mqtt: MqttDevice | None = None
    poll_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _transport(self) -> Self:
        if self.driver == "mqtt":
            if self.mqtt is None or self.modbus is not None:
                raise ValueError('driver "mqtt" needs an mqtt block and no modbus block')
        elif self.modbus is None or self.mqtt is not None:
            raise ValueError(f'driver "{self.driver}" needs a modbus block and no mqtt block')
        if self.role is DeviceRole.PARK_METER and self.company is not None:
            raise ValueError("a park_meter belongs to the park, not to a company")
        if self.role is not DeviceRole.PARK_METER and self.company is None:
            raise ValueError(f"a {self.role.value} device needs a company")
        return self
