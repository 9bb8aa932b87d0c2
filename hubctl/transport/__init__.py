"""Connections to devices and brokers: Modbus TCP (`modbus.py`: connections, a pool, request
framing and error mapping), MQTT (`mqtt.py`: the broker URL parser and the one reconnect loop the
device hub and the operator API both run) and the reconnect backoff every connection shares
(`backoff.py`).

May import: `hubctl.errors`, `hubctl.codec`, pymodbus and aiomqtt. Knows nothing of what a
device means.
"""
