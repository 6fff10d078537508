"""The shared event loop that Flask's async code runs on."""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import functools
import json
import logging
import os
import signal
import textwrap
import threading
import time
import typing as t
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from async_scoped_session_ext._runner import LoopRunner

from .support.databases import postgres_url, require_postgres
from .support.scripts import run_script

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")


@pytest.fixture
def loop_runner() -> collections.abc.Iterator[LoopRunner]:
    """A private runner, stopped after the test."""
    runner = LoopRunner()
    yield runner
    runner.stop()


def test_starts_lazily(loop_runner: LoopRunner) -> None:
    """No thread or loop exists until the first coroutine runs."""
    threads = threading.active_count()
    assert loop_runner._thread is None
    assert loop_runner.run(asyncio.sleep(0, "done")) == "done"
    assert threading.active_count() == threads + 1


def test_caller_context_is_visible(loop_runner: LoopRunner) -> None:
    """The coroutine sees the caller's context variables."""

    async def read() -> str:
        return marker.get()

    token = marker.set("from the caller")
    try:
        assert loop_runner.run(read()) == "from the caller"
    finally:
        marker.reset(token)


def test_one_loop_for_every_call(loop_runner: LoopRunner) -> None:
    """All calls, from any thread, run on the same loop in the same thread."""

    async def where() -> tuple[int, int]:
        return id(asyncio.get_running_loop()), threading.get_ident()

    seen = {loop_runner.run(where()) for _ in range(3)}
    results: list[tuple[int, int]] = []
    workers = [
        threading.Thread(target=lambda: results.append(loop_runner.run(where()))) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert len(seen | set(results)) == 1


def test_exceptions_propagate(loop_runner: LoopRunner) -> None:
    """An exception in the coroutine is raised in the caller."""

    async def fail() -> None:
        raise LookupError("from the loop")

    with pytest.raises(LookupError, match="from the loop"):
        loop_runner.run(fail())


def test_interrupt_cancels_the_coroutine(loop_runner: LoopRunner) -> None:
    """An interrupt in the waiting caller cancels the coroutine on the loop."""
    cancelled = threading.Event()

    async def long() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop_runner.run(long())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cancelled.wait(5)


def test_waiting_from_the_loop_thread_raises(loop_runner: LoopRunner) -> None:
    """Blocking on the loop from its own thread raises instead of deadlocking."""

    async def nested() -> None:
        loop_runner.run(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="would wait forever"):
        loop_runner.run(nested())


def test_run_soon_from_the_loop_thread_schedules(loop_runner: LoopRunner) -> None:
    """run_soon() from the loop thread schedules the coroutine instead of blocking."""
    done = threading.Event()

    async def mark() -> None:
        done.set()

    async def caller() -> None:
        loop_runner.run_soon(mark())

    loop_runner.run(caller())
    assert done.wait(5)


async def _thread_id() -> int:
    return threading.get_native_id()


def _loop_thread_in_a_forked_child(runner: LoopRunner, reset_by_hand: bool) -> int:
    """Fork; in the child, run a coroutine on *runner*; return the child's loop thread id."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            if reset_by_hand:  # a private runner has no at-fork hook of its own
                runner._after_fork_in_child()
            os.write(write_end, f"{runner.run(_thread_id())}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child_output = os.read(read_end, 100).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    return int(child_output)


def test_forked_child_starts_its_own_loop(loop_runner: LoopRunner) -> None:
    """A forked child gets a new loop thread; the parent's loop keeps working."""
    parent_thread = loop_runner.run(_thread_id())
    assert _loop_thread_in_a_forked_child(loop_runner, reset_by_hand=True) != parent_thread
    assert loop_runner.run(_thread_id()) == parent_thread


def test_shared_runner_restarts_after_a_real_fork() -> None:
    """The process's runner is reset by its at-fork hook: the child runs on a loop of its own."""
    from async_scoped_session_ext._runner import runner

    parent_thread = runner.run(_thread_id())
    assert _loop_thread_in_a_forked_child(runner, reset_by_hand=False) != parent_thread
    assert runner.run(_thread_id()) == parent_thread


def test_engines_are_disposed_at_exit() -> None:
    """At interpreter exit the shared loop disposes the engines of Flask apps."""
    require_postgres()
    script = textwrap.dedent(
        f"""
        from flask import Flask
        from sqlalchemy import event, text
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
        from async_scoped_session_ext import async_scoped_session, current_session

        engine = create_async_engine({postgres_url("asyncpg")!r})
        event.listen(engine.sync_engine.pool, "close", lambda *a: print("pool closed a connection"))
        app = Flask(__name__)
        async_scoped_session(async_sessionmaker(engine), app)

        @app.get("/")
        async def view():
            return str((await current_session.execute(text("select 1"))).scalar_one())

        print("response", app.test_client().get("/").text)
        """
    )
    started = time.monotonic()
    stdout = run_script(script)
    assert "response 1" in stdout
    assert "pool closed a connection" in stdout, "the engine was not disposed at exit"
    assert time.monotonic() - started < 60


def test_replica_engines_are_disposed_at_exit() -> None:
    """At exit the shared loop also disposes the engines a factory reaches besides its bind.

    Here the replica of ``async_replica_sessionmaker`` (which the session is given as the
    sync core of its engine) and an engine of ``binds``.
    """
    require_postgres()
    script = textwrap.dedent(
        f"""
        from flask import Flask
        from sqlalchemy import event, select, text
        from sqlalchemy.ext.asyncio import create_async_engine
        from async_scoped_session_ext import async_scoped_session, current_session
        from async_scoped_session_ext.replicas import async_replica_sessionmaker

        primary = create_async_engine({postgres_url("asyncpg")!r})
        replica = create_async_engine({postgres_url("asyncpg")!r})
        for name, engine in (("primary", primary), ("replica", replica)):
            event.listen(
                engine.sync_engine.pool, "close",
                lambda *a, name=name: print(f"{{name}} closed a connection"),
            )
        app = Flask(__name__)
        async_scoped_session(async_replica_sessionmaker(primary, replica), app)
        del replica  # the library keeps what it needs to dispose it

        @app.get("/")
        async def view():
            read = (await current_session.execute(select(1))).scalar_one()  # the replica
            await current_session.execute(text("select 1"))  # the primary
            return str(read)

        print("response", app.test_client().get("/").text)
        """
    )
    stdout = run_script(script)
    assert "response 1" in stdout
    assert "primary closed a connection" in stdout
    assert "replica closed a connection" in stdout, "the replica was not disposed at exit"


# --- the runner's own escape paths -----------------------------------------------------------


async def _touch(engine: AsyncEngine) -> None:
    """Open a connection of *engine* and put it back in the pool."""
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))


def test_started_says_whether_this_process_has_a_loop(loop_runner: LoopRunner) -> None:
    """``started`` is false until the first use and again after ``stop()``."""
    assert not loop_runner.started
    loop_runner.run(asyncio.sleep(0))
    assert loop_runner.started
    loop_runner.stop()
    assert not loop_runner.started


def test_a_forked_child_makes_its_lock_when_first_used(
    loop_runner: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a fork the runner has no lock until it is first used: a worker that patches
    threading after the fork (gunicorn's gevent worker with --preload) gets a lock made by
    the patched ``threading.Lock``, not one made before the patching."""
    original = threading.Lock
    made: list[object] = []

    def patched_lock() -> threading.Lock:  # what gevent's patched threading.Lock() would be
        lock = original()
        made.append(lock)
        return lock

    loop_runner._after_fork_in_child()  # as in a forked child, before any patching
    assert loop_runner._lock is None
    monkeypatch.setattr(threading, "Lock", patched_lock)
    assert loop_runner.run(asyncio.sleep(0, "started")) == "started"
    assert made and loop_runner._lock is made[0]
    assert loop_runner._guard() is made[0]


def test_threads_arriving_together_start_one_loop(loop_runner: LoopRunner) -> None:
    """Threads that use the runner for the first time at once get one loop and one thread:
    those that waited for the lock find the loop started."""
    loops: list[asyncio.AbstractEventLoop] = []
    threads = threading.active_count()
    with loop_runner._guard():  # the first users arrive together and wait here
        users = [threading.Thread(target=lambda: loops.append(loop_runner.loop)) for _ in range(3)]
        for user in users:
            user.start()
        time.sleep(0.2)  # each has found no loop and waits for the lock
    for user in users:
        user.join(timeout=10)
    assert len(loops) == 3 and len(set(loops)) == 1
    assert threading.active_count() == threads + 1, "more than one loop thread started"


def test_stop_logs_a_failing_disposal_and_still_disposes_the_rest(
    loop_runner: LoopRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At exit, an engine whose disposal fails (here a listener of its ``engine_disposed``
    event raises) is logged with the cause; the other engines are still disposed, and the
    loop is stopped and closed."""
    failing = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'failing.db'}")
    healthy = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'healthy.db'}")
    closed: list[str] = []
    for name, engine in (("failing", failing), ("healthy", healthy)):
        event.listen(engine.sync_engine.pool, "close", lambda *a, name=name: closed.append(name))
        loop_runner.run(_touch(engine))
        loop_runner.dispose_at_exit(engine)

    @event.listens_for(failing.sync_engine, "engine_disposed")
    def report_disposal(engine: object) -> None:
        raise LookupError("the metrics service is gone")

    loop = loop_runner.loop
    with caplog.at_level(logging.ERROR, logger="async_scoped_session_ext"):
        loop_runner.stop()
    [failure] = [r for r in caplog.records if r.name == "async_scoped_session_ext"]
    assert "at shutdown failed" in failure.getMessage()
    assert failure.exc_info is not None and isinstance(failure.exc_info[1], LookupError)
    assert sorted(closed) == ["failing", "healthy"], "an engine was not disposed"
    assert loop.is_closed() and not loop_runner.started


def test_stop_waits_for_the_tasks_it_keeps(loop_runner: LoopRunner) -> None:
    """At exit, a task the runner keeps (an evicted engine's disposal, a close started from
    the loop) is finished before the loop stops, not destroyed while pending."""
    finished: list[str] = []

    async def slow_disposal() -> None:
        await asyncio.sleep(0.3)
        finished.append("disposed")

    async def start() -> None:
        loop_runner.keep(asyncio.get_running_loop().create_task(slow_disposal()))

    loop_runner.run(start())
    loop = loop_runner.loop
    loop_runner.stop()
    assert finished == ["disposed"]
    assert loop.is_closed() and not loop_runner.started


def test_stop_gives_up_on_a_kept_task_that_never_ends(
    loop_runner: LoopRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """A kept task that never ends delays the loop's shutdown by ``stop_timeout`` at most;
    the loop is still stopped and closed."""
    loop_runner.stop_timeout = 0.3
    never = asyncio.Event()

    async def start() -> None:
        loop_runner.keep(asyncio.get_running_loop().create_task(never.wait()))

    loop_runner.run(start())
    loop = loop_runner.loop
    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="asyncio"):  # the task destroyed pending
        loop_runner.stop()
    assert time.monotonic() - began < 5
    assert loop.is_closed() and not loop_runner.started


def test_stop_after_other_code_stopped_the_loop_returns_at_once(
    loop_runner: LoopRunner, tmp_path: Path
) -> None:
    """If other code stopped the runner's loop (``loop.stop()``), ``stop()`` does not try
    to dispose engines on it (each would wait 10 s for a loop that no longer runs): it
    closes the loop at once, and the runner starts a new one when next used."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    loop_runner.run(_touch(engine))
    loop_runner.dispose_at_exit(engine)
    loop = loop_runner.loop
    loop.call_soon_threadsafe(loop.stop)
    deadline = time.monotonic() + 5
    while loop.is_running():
        assert time.monotonic() < deadline, "the loop did not stop"
        time.sleep(0.01)

    began = time.monotonic()
    loop_runner.stop()
    assert time.monotonic() - began < 1.0
    assert loop.is_closed() and not loop_runner.started
    assert loop_runner.run(asyncio.sleep(0, "a new loop")) == "a new loop"
    assert loop_runner.loop is not loop
    loop_runner.run(engine.dispose())  # aiosqlite's connections work on any loop


def test_stop_gives_up_on_a_loop_stuck_in_a_blocking_call(loop_runner: LoopRunner) -> None:
    """At exit, a loop thread stuck in a blocking call (sync I/O in an async view) does not
    hang the interpreter: ``stop()`` waits ``stop_timeout`` (10 s; 0.5 s here) for the loop
    to stop, then leaves it (a running loop cannot be closed) and forgets it; it still stops
    once unblocked."""
    assert LoopRunner.stop_timeout == 10
    loop_runner.stop_timeout = 0.5
    blocked, release = threading.Event(), threading.Event()

    async def stuck() -> None:
        blocked.set()
        release.wait(30)  # blocks the loop's thread, as sync I/O in async code would

    loop, thread = loop_runner.loop, loop_runner._thread
    assert thread is not None
    stuck_call = asyncio.run_coroutine_threadsafe(stuck(), loop)
    assert blocked.wait(10)
    began = time.monotonic()
    try:
        loop_runner.stop()
        took = time.monotonic() - began
    finally:
        release.set()
    assert 0.5 <= took < 5, took
    assert not loop_runner.started
    stuck_call.result(timeout=10)
    thread.join(timeout=10)  # unblocked, the loop ran the stop() it was sent
    assert not thread.is_alive() and not loop.is_running()
    loop.close()


_NO_DESCRIPTORS = textwrap.dedent(
    """
    import asyncio, errno, json, os, resource, sys, threading, warnings
    from async_scoped_session_ext._runner import LoopRunner

    runner = LoopRunner()
    unraisable = []
    sys.unraisablehook = lambda hook: unraisable.append(getattr(hook.object, "__qualname__", "?"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    coro = asyncio.sleep(0)
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fillers = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            while True:  # every file descriptor is taken
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            runner.run(coro)
        except OSError as raised:
            error = errno.errorcode[raised.errno]
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for thread in threading.enumerate():
            if thread.name == "async_scoped_session_ext":
                thread.join()
        closed = coro.cr_frame is None
        del coro
        import gc; gc.collect()
    after = runner.run(asyncio.sleep(0, "started after all"))
    runner.stop()
    print(json.dumps({
        "error": error, "coroutine_closed": closed, "after": after, "unraisable": unraisable,
        "warnings": [f"{w.category.__name__}: {w.message}".split(" <")[0] for w in caught],
    }))
    """
)


@functools.cache
def _start_without_file_descriptors() -> dict[str, t.Any]:
    """What a new interpreter saw when its runner's loop could not start (run once)."""
    return t.cast(dict[str, t.Any], json.loads(run_script(_NO_DESCRIPTORS)))


#: What asyncio itself reports of a loop that failed half-built (CPython 3.11's
#: ``BaseEventLoop.__del__`` warns, then fails to close what was never made).
_ASYNCIO_OWN = {"ResourceWarning: unclosed event loop"}
_NEVER_AWAITED = "RuntimeWarning: coroutine 'sleep' was never awaited"


def test_a_loop_that_cannot_start_raises_in_the_caller() -> None:
    """Out of file descriptors, the loop thread cannot make its loop: the ``OSError`` is
    raised in the caller of ``run()`` (the thread ends), and once descriptors are free
    again the next ``run()`` starts the loop."""
    seen = _start_without_file_descriptors()
    assert seen["error"] == "EMFILE"
    assert seen["after"] == "started after all"
    assert set(seen["warnings"]) <= _ASYNCIO_OWN | {_NEVER_AWAITED}, seen["warnings"]
    assert set(seen["unraisable"]) <= {"BaseEventLoop.__del__"}, seen["unraisable"]


def test_a_loop_that_cannot_start_closes_the_coroutine() -> None:
    """The coroutine ``run()`` could not schedule is closed, as on the deadlock path, so
    Python does not warn that it was never awaited."""
    seen = _start_without_file_descriptors()
    assert seen["coroutine_closed"]
    assert _NEVER_AWAITED not in seen["warnings"]
