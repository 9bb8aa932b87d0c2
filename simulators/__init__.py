"""Park physics, Modbus/SunSpec/MQTT device simulators driven by it, and synthetic park days."""
