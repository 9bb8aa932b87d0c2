"""Device and park simulators: the physics model and (later) Modbus/MQTT device servers."""
