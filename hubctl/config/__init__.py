"""Configuration: the site config, device entries, scenarios and where state lives.

What it is: pydantic models of every file an operator writes (`site.py`, `devices.py`,
`scenario.py`), the shared model base and YAML loading (`base.py`), and the resolution of broker
URLs, the InfluxDB target and the state directory from config, flag and environment (`resolve.py`).

May import: `hubctl.errors` and libraries (pydantic, PyYAML). Nothing else in hubctl: every layer
reads its settings from here, so this package sits just above the errors.
"""
