"""Pure protocol codecs: register maps and their decoding and encoding, SunSpec models.

What it is: the register-map schema, roles and loader (`regmap.py`: `RegisterMap`, `Point`,
`load_map`, `parse_map`, `role_values`), the register codec (`registers.py`: `plan_reads`,
`ReadBlock`, `decode`, `decode_reads`, `encode`) and SunSpec discovery and model decoding
(`sunspec.py`). Words in, values out, and back; no connection. `regmap` imports `registers`,
never the other way.

May import: `hubctl.errors`, `hubctl.config` (YAML loading) and pysunspec2's model definitions.
The simulators use these codecs to serve the same maps hubctl reads.
"""
