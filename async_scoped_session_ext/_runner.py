"""One long-lived event loop per process, in a daemon thread, for Flask's async code.

Flask runs each async view, hook and teardown through asgiref on a new event loop, and
pooled async connections (asyncpg) are bound to the loop that opened them. Running all of an
app's async code on this one loop instead lets a pooled ``AsyncEngine`` work across requests.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import functools
import logging
import os
import sys
import threading
import typing as t
import weakref

if t.TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

_T = t.TypeVar("_T")
logger = logging.getLogger("async_scoped_session_ext")

DEADLOCK_MESSAGE = """\
Cannot wait for a coroutine from the shared event loop's own thread: it would wait forever.
This happens when sync code that blocks on async work (a sync app-context teardown, or
'run(...)') is called from inside an async view. Await the coroutine instead.\
"""


def loop_running() -> bool:
    """Whether an event loop is running in the calling thread."""
    return asyncio._get_running_loop() is not None


_making_locks = threading.Lock()
"""Held while a runner makes its lock after a fork, and never while waiting for anything."""


class LoopRunner:
    """Runs coroutines on one event loop in a daemon thread, started lazily per process."""

    #: Seconds :meth:`stop` waits for each engine's disposal, then for the loop to stop.
    stop_timeout = 10.0

    def __init__(self) -> None:
        self._lock: threading.Lock | None = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        #: The sync cores of the async engines to dispose at exit (held weakly: an
        #: ``AsyncEngine`` made around a core for a moment must not drop the core).
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._background: set[asyncio.Task[t.Any]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop of this process, started on first use (again after a fork)."""
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._guard():
            if self._loop is None or self._pid != os.getpid():
                self._start()
            return t.cast(asyncio.AbstractEventLoop, self._loop)

    def _start(self) -> None:
        # The loop is made in its own thread, in an empty context: its self-pipe reader keeps
        # the context it was created in for the life of the process, and made in the caller's
        # thread that would be the first request's (its app context and ``g``).
        started: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()

        def serve() -> None:
            try:
                loop = asyncio.new_event_loop()
            except BaseException as error:  # out of file descriptors: raised in the caller
                started.set_exception(error)
                return
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set_result, loop)
            loop.run_forever()

        # A new thread starts in an empty context up to Python 3.13; from 3.14 it may copy
        # the caller's (sys.flags.thread_inherit_context) unless given one.
        empty: dict[str, t.Any] = (
            {"context": contextvars.Context()} if sys.version_info >= (3, 14) else {}
        )
        thread = threading.Thread(
            target=serve, name="async_scoped_session_ext", daemon=True, **empty
        )
        thread.start()
        self._loop, self._thread, self._pid = started.result(), thread, os.getpid()

    @property
    def started(self) -> bool:
        """Whether this process's loop is running (it starts on first use)."""
        return self._loop is not None and self._pid == os.getpid()

    def is_loop_thread(self) -> bool:
        """Whether the caller runs in the loop's own thread."""
        return self._thread is threading.current_thread() and self._pid == os.getpid()

    def owns_running_loop(self) -> bool:
        """Whether the caller runs on this process's shared loop."""
        loop = self._loop
        return loop is not None and asyncio._get_running_loop() is loop and self._pid == os.getpid()

    def run(self, coro: t.Coroutine[t.Any, t.Any, _T]) -> _T:
        """Run *coro* on the loop and wait for its result in the calling thread.

        The coroutine sees a copy of the caller's context variables (so the Flask app and
        request context). If the caller is interrupted while waiting, the coroutine is
        cancelled.
        """
        if self.is_loop_thread():
            coro.close()
            raise RuntimeError(DEADLOCK_MESSAGE)
        try:
            loop = self.loop
        except BaseException:  # the loop could not start: the coroutine will never run
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def run_soon(self, coro: t.Coroutine[t.Any, t.Any, t.Any]) -> None:
        """Run *coro* on the loop without waiting; from the loop thread it becomes a task."""
        if self.is_loop_thread():
            self.keep(self.loop.create_task(coro))
        else:
            self.run(coro)

    def keep(self, task: asyncio.Task[t.Any]) -> None:
        """Hold *task*, one of the loop's, until it is done; :meth:`stop` waits for it.

        Call it from the loop's thread.
        """
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def async_to_sync(
        self, func: t.Callable[..., t.Coroutine[t.Any, t.Any, _T]]
    ) -> t.Callable[..., _T]:
        """A drop-in for ``Flask.async_to_sync`` that runs *func* on the shared loop."""

        @functools.wraps(func)
        def run_on_shared_loop(*args: t.Any, **kwargs: t.Any) -> _T:
            return self.run(func(*args, **kwargs))

        return run_on_shared_loop

    def dispose_at_exit(self, engine: AsyncEngine) -> None:
        """Dispose *engine* on the loop when the interpreter exits (or the runner stops)."""
        self._engines.add(engine.sync_engine)

    def stop(self) -> None:
        """Dispose the registered engines on the loop, then stop and close it."""
        with self._guard():
            loop, thread = self._loop, self._thread  # set together by _start()
            if loop is None or thread is None or self._pid != os.getpid():
                return
            if loop.is_running():
                cores = list(self._engines)
                settled: concurrent.futures.Future[None] = concurrent.futures.Future()
                loop.call_soon_threadsafe(self._start_settling, cores, settled)
                try:
                    settled.result(timeout=self.stop_timeout * (len(cores) + 1))
                except concurrent.futures.TimeoutError:
                    logger.error(
                        "The shared event loop did not finish disposing its engines within"
                        " %s s at shutdown: it is stuck in a blocking call, or a disposal"
                        " hangs. It is stopped without waiting longer.",
                        self.stop_timeout * (len(cores) + 1),
                    )
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=self.stop_timeout)
            if not loop.is_running():
                loop.close()
            self._loop = self._thread = None

    def _start_settling(
        self, cores: list[Engine], settled: concurrent.futures.Future[None]
    ) -> None:
        """On the loop: start :meth:`_settle`, or say at once that there is nothing to do."""
        if not cores and not self._background:
            settled.set_result(None)
            return
        task = asyncio.get_running_loop().create_task(self._settle(cores))
        task.add_done_callback(lambda _: settled.set_result(None))

    async def _settle(self, cores: list[Engine]) -> None:
        """Dispose the engines *cores* belong to, then wait for the tasks :meth:`keep` holds.

        Each step waits ``stop_timeout`` at most; a failure is logged and the rest go on.
        """
        from sqlalchemy.ext.asyncio import AsyncEngine

        for core in cores:
            engine = AsyncEngine(core)
            try:
                await asyncio.wait_for(engine.dispose(), self.stop_timeout)
            except Exception:
                logger.exception("Disposing %r at shutdown failed.", engine)
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.stop_timeout)

    def _after_fork_in_child(self) -> None:
        # The parent's loop thread does not exist here, and its pooled connections belong
        # to the parent: forget both without closing what the parent still uses.
        # (The engines' own at-fork hook gives each engine a new pool in the child.)
        # The lock is made on first use: a worker that patches threading after the fork
        # (gunicorn's gevent worker with --preload) must get a lock of its own kind, or one
        # greenlet waiting for it would block the process while another holds it.
        self._lock = None
        self._loop = self._thread = None
        self._background = set()

    def _guard(self) -> threading.Lock:
        """The runner's lock, made now if a fork left none (see ``_after_fork_in_child``)."""
        lock = self._lock
        if lock is None:
            with _making_locks:  # held for no longer than making one: never across a wait
                if self._lock is None:
                    self._lock = threading.Lock()
                lock = self._lock
        return lock


runner = LoopRunner()
"""The process's shared loop runner."""

atexit.register(runner.stop)
os.register_at_fork(after_in_child=runner._after_fork_in_child)
