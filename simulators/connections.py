"""TCP connections a simulator can drop on purpose, and wait for when it stops.

`asyncio.start_server` runs each connection in a task of its own making; a
cancelled one makes asyncio log "Exception in callback" (Python 3.11 asks the
task for its exception). So each connection's work runs in an inner task that
`ConnectionSet` owns: dropping a connection cancels the inner task, the outer
one returns normally, and a cancellation that comes from outside (loop
shutdown) still propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ConnectionSet:
    """The live connections of one listener."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._inner: set[asyncio.Task[None]] = set()
        self._outer: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._inner)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The callback for `asyncio.start_server`."""
        outer = asyncio.current_task()
        inner = asyncio.create_task(self._run(reader, writer))
        self._inner.add(inner)
        if outer is not None:
            self._outer.add(outer)
        try:
            await inner
        except asyncio.CancelledError:
            if not inner.cancelled() or (outer is not None and outer.cancelling()):
                raise  # cancelled from outside: pass it on
        finally:
            self._inner.discard(inner)
            if outer is not None:
                self._outer.discard(outer)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def drop_others(self) -> None:
        """From inside a connection: close every other one (a device that serves one client at a time)."""
        me = asyncio.current_task()
        others = [t for t in self._inner if t is not me]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def drop_all(self) -> None:
        """Close every connection now and wait until their tasks are gone."""
        inner, outer = list(self._inner), list(self._outer)
        for task in inner:
            task.cancel()
        await asyncio.gather(*inner, *outer, return_exceptions=True)
