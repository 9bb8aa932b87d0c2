"""Connections to devices: Modbus TCP (`modbus.py`: connections, a pool, request framing and
error mapping) and the reconnect backoff every connection shares (`backoff.py`).

May import: `hubctl.errors`, `hubctl.codec` and pymodbus. Knows nothing of what a device means.
"""
