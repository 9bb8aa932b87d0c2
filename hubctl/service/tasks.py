"""Two asyncio helpers every loop of the service shares.

`guarded` runs an embedded component (spool, forwarder, operator API) and restarts it 5 s after a
failure, so that it can never stop control; `raise_if_cancelled` re-raises a cancellation a
library swallowed (pollers, the control loop and the fallback keeper call it after every device
call).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

log = logging.getLogger("hubctl.service")  # the name the journal has always shown


async def guarded(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an embedded component; if it fails, log it and start it again after 5 s (control goes on)."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("%s failed; restarting it in 5 s", name)
            await asyncio.sleep(5.0)
        else:
            return


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    Python 3.11's `asyncio.wait_for` (which pymodbus uses for every request)
    returns the result instead of raising when the answer and the cancellation
    arrive in the same loop iteration; the task then stays "cancelling" but
    runs on, and the TaskGroup waits for it forever. Pollers and the control
    loop call this after every device call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
