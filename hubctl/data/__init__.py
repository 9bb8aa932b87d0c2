"""Data kept and reported: the time-series spool and InfluxDB writer, the 15-minute ledger,
reports, and the controller's load history on disk and from imports.

What it is: `influx.py` (line protocol and the writer), `spool.py` (the on-disk buffer that loses
nothing), `ledger.py` (who got what per quarter-hour), `report.py`, `history_store.py` (the
persisted history, SQLite) and `history_import.py` (commissioning files parsed into history days;
pure).

May import: `hubctl.errors`, `hubctl.config`, `hubctl.core`. Never devices, the service, the
simulators or the CLI.
"""
