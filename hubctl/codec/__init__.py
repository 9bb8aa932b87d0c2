"""Pure protocol codecs: register maps and their decoding and encoding, SunSpec models.

What it is: the register-map schema and loader (`registers.py`: `load_map`, `plan_reads`,
`decode`, `encode`) and SunSpec discovery and model decoding (`sunspec.py`). Words in, values out,
and back; no connection.

May import: `hubctl.errors`, `hubctl.config` (YAML loading) and pysunspec2's model definitions.
The simulators use these codecs to serve the same maps hubctl reads.
"""
