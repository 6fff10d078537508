"""The shared event loop that Flask's async code runs on."""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from async_scoped_session_ext._runner import LoopRunner

from .support.databases import postgres_url, require_postgres
from .support.environment import child_environ

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


def run_to_exit(script: str) -> str:
    """Run *script* in a new interpreter (warnings are errors) to its exit; its stdout.

    It must exit with 0 and write nothing to stderr: disposing at exit is silent.
    """
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=child_environ("error"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


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
    stdout = run_to_exit(script)
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
    stdout = run_to_exit(script)
    assert "response 1" in stdout
    assert "primary closed a connection" in stdout
    assert "replica closed a connection" in stdout, "the replica was not disposed at exit"
