"""`hubctl sim`: the core against the simulated park physics, in simulated time.

What it is: `run.py`, the step loop that hands the controller snapshots from
`simulators.physics` and writes `timeseries.csv`, `allocations.csv` and `summary.json`. The
controller is the core's `step`, the one the gateway runs.

May import: errors, config, core, data (the history import's parser: the same path as the
gateway's import) and the simulators. Besides the CLI, the only hubctl package that imports
`simulators`; only the CLI, the tests and the benches import it.
"""
