"""The pure control core: the decision of one cycle and everything it is computed from.

What it is: the control law (`control.py`: `step`), the energy plan, the load and PV forecast,
the learned history, limits in force, the quarter-hour rules, surplus sharing, the solar shape,
the run metrics and the operator command policy.

The rule: plain functions over plain data. No I/O, no clock, no logging, no asyncio, no sockets,
no files; time comes in as a number in every call. May import: `hubctl.errors`, `hubctl.config`
(the models, to build parameters from them) and numpy/holidays. Enforced by
tests/test_architecture.py.
"""
