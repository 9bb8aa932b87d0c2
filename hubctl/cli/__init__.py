"""The `hubctl` command: one module per command group.

`main.py` (the parser, `check-config`, `schema`, `sim`), `service.py` (`run`, `demo`),
`devices.py` (`read`, `scan`), `data.py` (`export`, `report`), `history.py`
(`history import|show`), `simulate.py` (simulated devices over real protocols), `demo.py` (the
demo's orchestration).

May import every package. Nothing imports the CLI (tests run it as `python -m hubctl.cli`). Heavy
modules are imported inside the commands, so `hubctl schema` and `--help` stay fast.
"""
