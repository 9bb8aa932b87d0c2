"""The park page (issue #14, docs/web.md): a live web view, the monthly statements and `/metrics`.

What it is: `live.py` (what the control loop leaves for the page after every cycle: the last
cycle, the quarter-hour in progress, the 24 h chart's minute means; O(1) per cycle, nothing
else), `access.py` (the park manager's and the companies' tokens, kept as SHA-256 digests;
sessions; wrong credentials logged once), `views.py` (pure: what each role may see of the state
document, the chart and the statements), `metrics.py` (the Prometheus collector, names
`hubctl_*`), `server.py` (the aiohttp application: the page, its JSON, server-sent events at most
once a second, the statements' CSV, `/metrics`; its own asyncio task beside control, never on the
control path: a failure there is logged once and control goes on) and `static/` (the page, and
uPlot, MIT, vendored with its licence: gateways are often offline).

May import: errors, config, core, data (the report code and the spool's public reading
functions). Never the service, the simulators or the CLI: the service (`hubctl.service.gateway`)
builds the page and hands it the state document through a callable, so the page has no way to
reach into control.
"""
