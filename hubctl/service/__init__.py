"""The gateway service (`hubctl run`): the thin shell around the core.

What it is: the gateway that polls devices into a snapshot, runs the core's `step`, writes
setpoints and fallbacks and feeds storage (`gateway.py`); the reading store (`store.py`); the
operator MQTT API (`operator_api.py`); systemd notification (`notify.py`).

May import every layer below it: errors, config, core, codec, transport, devices, data. Never the
simulators, `hubctl.sim` or the CLI.
"""
