"""The gateway service (`hubctl run`): the thin shell around the core.

What it is: the gateway that polls devices into a snapshot, runs the core's `step`, writes
setpoints and fallbacks and feeds storage. `gateway.py` composes it (lifecycle, TaskGroup,
shutdown; `run_service`) from: `clock.py` (the optionally accelerated clock), `options.py` (the
flags and environment), `pollers.py` (one poller per connection), `store.py` (the reading store),
`cycle.py` (the control loop and its after-cycle steps), `writer.py` (setpoints), `fallbacks.py`
(the devices' own fallbacks), `jobs.py` (the wall-clock jobs), `sinks.py` (telemetry),
`storage.py` (spool, ledger, forwarder), `history.py` (the load history on disk), `status.py`
(mode, READY, watchdog), `tasks.py` (asyncio helpers); the operator MQTT API (`operator_api.py`);
systemd notification (`notify.py`).

May import every layer below it: errors, config, core, codec, transport, devices, data. Never the
simulators, `hubctl.sim` or the CLI.
"""
