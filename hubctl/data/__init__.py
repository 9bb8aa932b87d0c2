"""Data kept and reported: the time-series points, spool and InfluxDB forwarder, the 15-minute
ledger, reports, and the controller's load history on disk and from imports.

What it is: `points.py` (the line protocol and every point builder; pure), `spool.py` (the
on-disk buffer that loses nothing), `sqlite_file.py` (how the spool and the ledger open their
file: a damaged one is moved aside and what can be read is kept), `influx.py` (the writer and
the forwarder that drains the spool), `ledger.py` (who got what per quarter-hour), `report.py`
(pure computation), `report_load.py` and `report_render.py` (reading the ledger or a sim run;
writing the files), `history_store.py` (the persisted history, SQLite) and `history_import.py` with
`history_contract.py`, `history_metering.py` and `history_common.py` (commissioning files parsed
into history days; pure).

May import: `hubctl.errors`, `hubctl.config`, `hubctl.core`. Never devices, the service, the
simulators or the CLI.
"""
