"""Disposing an evicted async engine on the event loop its connections belong to."""

from __future__ import annotations

import asyncio
import threading

from ._close import logger
from ._runner import runner
from ._sa_asyncio import AsyncEngine


class LoopDisposals:
    """Async engine disposals started on their own loops, never waited for from elsewhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def dispose(self, engine: AsyncEngine, loop: asyncio.AbstractEventLoop | None) -> None:
        """Dispose *engine* on *loop*, without waiting for a loop in another thread."""
        if loop is None:  # never used in async code, so it has no connection to close
            engine.sync_engine.dispose()
        elif loop is asyncio._get_running_loop():
            self._start(engine)
        elif loop.is_closed():
            logger.warning(
                "The event loop of an evicted async engine is closed; its pooled"
                " connections are dropped without being closed."
            )
            engine.sync_engine.dispose(close=False)
        else:  # the loop runs in another thread, or will run again
            loop.call_soon_threadsafe(self._start, engine)

    def pending_on(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[None]]:
        """The disposals still running on *loop*."""
        with self._lock:
            return [task for task in self._tasks if task.get_loop() is loop]

    def _start(self, engine: AsyncEngine) -> None:
        task = asyncio.get_running_loop().create_task(engine.dispose())
        with self._lock:
            self._tasks.add(task)
        task.add_done_callback(self._done)
        if runner.owns_running_loop():  # the shared loop's shutdown waits for it
            runner.keep(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Disposing an evicted engine failed.", exc_info=task.exception())
