"""Devices: what hubctl reads from and writes to on the park.

What it is: the `Device` interface and the readings it returns (`base.py`), register-map and
SunSpec devices over Modbus TCP, MQTT devices (`mqtt.py`), device health (`health.py`) and
`build_device`, the one factory from a config entry to a driver.

May import: `hubctl.errors`, `hubctl.config`, `hubctl.codec`, `hubctl.transport` and the core's
plain types. Never the service, the data layer, the simulators or the CLI.
"""
