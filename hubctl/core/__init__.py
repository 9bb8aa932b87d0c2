"""The pure control core: the decision of one cycle and everything it is computed from.

What it is: the control law (`control.py`: `step` and its stages; `types.py` the data it works
on; `park.py` the park's battery power; `dispatch.py` the split over companies and their own caps;
`failsafe.py` the stale-meter and no-controller rules), the energy plan (`plan.py`), the load and
PV forecast (`forecast.py`), the learned history (`history.py`), limits in force (`limits.py`),
the quarter-hour rules (`quarters.py`), surplus sharing (`sharing.py`), the solar shape
(`solar.py`), the run metrics (`metrics.py`) and the operator command policy (`commands.py`).

The rule: plain functions over plain data. No I/O, no clock, no logging, no asyncio, no sockets,
no files; time comes in as a number in every call. May import: `hubctl.errors`, `hubctl.config`
(the models, to build parameters from them) and numpy/holidays. Enforced by
tests/test_architecture.py.
"""
