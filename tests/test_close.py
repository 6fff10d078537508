"""Closing sessions on the escape paths (``_close``): the close's own task cancelled by a loop
shutdown, a close that fails while its caller is cancelled, a task still using the session
that ignores its cancellation, and failing sync closes in Flask's and Quart's teardowns.

Whatever goes wrong, a teardown never stops halfway, re-raises a cancellation, logs what
failed with its cause, and leaves no connection checked out and no backend open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import typing as t
import uuid
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_scoped_session_ext import EngineRegistry, async_scoped_session
from async_scoped_session_ext._close import _GRACE, defer_cancellation

from .support import faultproxy
from .support.databases import connect_admin, postgres_url, require_postgres
from .support.environment import HAS_QUART, needs_quart
from .support.faultproxy import FaultProxy

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

LOGGER = "async_scoped_session_ext"
TIMEOUT = 10.0  # seconds any wait here may take
REPLY_DELAY = 1.0  # seconds the proxy holds back the server's replies during a close
CLOSE_TIMEOUT = 0.5  # the close_timeout of the straggler test's scoped session
ASYNCPG_GRACEFUL_CLOSE = 2.0  # seconds SQLAlchemy lets asyncpg close a connection gracefully


# --- helpers ---------------------------------------------------------------------------------


proxy = faultproxy.proxy  # the fixture


@pytest.fixture
def app_name() -> str:
    """A PostgreSQL application_name unique to the test, to find its backends."""
    return f"asse-close-{uuid.uuid4().hex[:12]}"


def engine_through(proxy: FaultProxy, app_name: str) -> AsyncEngine:
    """A one-connection asyncpg engine that reaches PostgreSQL through *proxy*."""
    url = make_url(postgres_url("asyncpg")).set(host=proxy.host, port=proxy.port)
    return create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=TIMEOUT,
        connect_args={"server_settings": {"application_name": app_name}, "timeout": TIMEOUT},
    )


def backends(app_name: str) -> int:
    """How many PostgreSQL backends named *app_name* are open."""
    with connect_admin() as admin:
        query = "select count(*) from pg_stat_activity where application_name = %s"
        row = admin.execute(query, (app_name,)).fetchone()
    assert row is not None
    return int(row[0])


def no_backend_left(app_name: str) -> bool:
    """Whether every backend named *app_name* is gone within a few seconds."""
    deadline = time.monotonic() + 5
    while backends(app_name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def library_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The library's log records at *level* or above."""
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def bind_of(scoped: t.Any) -> Engine:
    """The engine an ``EngineRegistry`` scoped session's factory is bound to."""
    return t.cast(Engine, scoped.given_factory.kw["bind"])


# --- the close's own task is cancelled: the loop shuts down -----------------------------------


@needs_quart
@pytest.mark.postgres
def test_loop_shutdown_cancelling_the_close_terminates_the_connection(
    proxy: FaultProxy, app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``asyncio.run()`` ends while a teardown waits for its close's rollback: it cancels
    every task left, the close's own task too. SQLAlchemy ends the cancelled close by
    closing the connection (gracefully, for at most asyncpg's 2 s), and the teardown then
    re-raises the cancellation instead of waiting on: the shutdown ends, nothing is left
    checked out, no backend stays open, nothing is left to the garbage collector."""
    engine = engine_through(proxy, app_name)
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)
    requests: list[asyncio.Task[None]] = []
    shutdown_began: list[float] = []

    async def request(closing: asyncio.Event) -> None:
        async with app.app_context():
            await scoped.execute(text("select 1"))  # in a transaction: the close rolls back
            proxy.delay(REPLY_DELAY, "to_client")  # the rollback's reply comes late
            closing.set()

    async def main() -> None:
        closing = asyncio.Event()
        requests.append(asyncio.create_task(request(closing)))
        await closing.wait()
        await asyncio.sleep(REPLY_DELAY / 5)  # the teardown now waits for the rollback
        shutdown_began.append(time.monotonic())
        # Returning ends asyncio.run(): it cancels every task left and waits for them.

    try:
        asyncio.run(main())
        took = time.monotonic() - shutdown_began[0]
        proxy.delay(0)

        [task] = requests
        assert task.cancelled(), "the teardown swallowed the shutdown's cancellation"
        assert took < ASYNCPG_GRACEFUL_CLOSE + 1.0, f"the shutdown took {took:.2f} s"
        assert len(scoped.registry) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert no_backend_left(app_name), "the cancelled close's connection stayed open"
        assert not [r for r in caplog.records if "garbage collector" in r.getMessage()]
    finally:
        proxy.delay(0)
        asyncio.run(engine.dispose())  # its pool is empty: no connection of the closed loop


# --- a close that fails while its caller is cancelled ------------------------------------------


@needs_quart
@pytest.mark.postgres
@pytest.mark.parametrize("hang_up", ["as-the-rollback-fails", "before-the-rollback-fails"])
async def test_close_failing_under_a_hang_up_is_logged_then_the_cancellation_raised(
    proxy: FaultProxy, app_name: str, caplog: pytest.LogCaptureFixture, hang_up: str
) -> None:
    """The client hangs up while the teardown closes the session, and the connection breaks
    under the close's rollback. The failure is logged as a failure during a cancellation,
    with its cause; the request's task still ends cancelled; the broken connection is
    discarded and the next context gets a working one."""
    caplog.set_level(logging.WARNING)
    engine = engine_through(proxy, app_name)
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)
    closing = asyncio.Event()

    async def request() -> None:
        async with app.app_context():
            await scoped.execute(text("select 1"))
            proxy.delay(REPLY_DELAY, "to_client")  # the close waits for its rollback
            closing.set()

    task = asyncio.create_task(request())

    def hang_up_now(*args: object) -> None:
        if closing.is_set():
            task.cancel()

    if hang_up == "as-the-rollback-fails":
        # In the close's last loop step: SQLAlchemy checks the broken connection in (after
        # terminating it), then raises the rollback's error, and the close's task ends.
        event.listen(engine.sync_engine.pool, "checkin", hang_up_now)
    try:
        async with asyncio.timeout(TIMEOUT):
            await closing.wait()
            await asyncio.sleep(REPLY_DELAY / 5)  # the teardown waits for the rollback
            if hang_up == "before-the-rollback-fails":
                task.cancel()
                await asyncio.sleep(REPLY_DELAY / 5)
            assert proxy.cut() == 1  # the connection breaks: the rollback fails
            await asyncio.wait({task})
        proxy.delay(0)

        assert task.cancelled(), "the hang-up's cancellation was swallowed"
        [failure] = library_records(caplog, logging.WARNING)
        assert failure.levelno == logging.ERROR
        message = failure.getMessage()
        assert "Closing a session failed while the request was being cancelled" in message
        assert failure.exc_info is not None
        error = failure.exc_info[1]
        assert isinstance(error, DBAPIError) and error.connection_invalidated, error
        assert len(scoped.registry) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with app.app_context():
            assert (await scoped.execute(text("select 1"))).scalar_one() == 1
    finally:
        proxy.delay(0)
        await engine.dispose()


# --- a task still using the session ignores its cancellation -----------------------------------


@needs_quart
@pytest.mark.postgres
@pytest.mark.parametrize("async_backend", ["asyncpg"])
async def test_straggler_ignoring_its_cancellations_is_waited_for_and_its_error_logged(
    async_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A task still in a query when its context ends, which finishes a clean-up of its own
    through every cancellation and then fails: the teardown gives it close_timeout, cancels
    it, cancels it again a grace later, then waits for it (at most a second more) and logs
    its error at DEBUG instead of raising it or leaving it unretrieved. The session is then
    closed, and nothing stays checked out."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    cleanup = 3 * _GRACE  # outlives both cancellations, which come a grace apart
    app = Quart(__name__)
    scoped = async_scoped_session(
        async_sessionmaker(async_engine), app, close_timeout=CLOSE_TIMEOUT
    )
    cancel_requests: list[int] = []  # how many cancellations the straggler was sent
    stragglers: list[asyncio.Task[None]] = []

    async def straggler(started: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await scoped.execute(text("select pg_sleep(5)"))
        done_at = loop.time() + cleanup
        while (left := done_at - loop.time()) > 0:  # a clean-up that will not be interrupted
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(left)
        task = asyncio.current_task()
        assert task is not None
        cancel_requests.append(task.cancelling())
        raise LookupError("the straggler's clean-up failed")

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        async with app.app_context():
            session = scoped()
            started = asyncio.Event()
            stragglers.append(asyncio.create_task(straggler(started)))
            await started.wait()
            await asyncio.sleep(0.2)  # the query reaches the server
            ended = loop.time()
        took = loop.time() - ended

    [task] = stragglers
    assert task.done() and isinstance(task.exception(), LookupError)
    assert cancel_requests == [2]
    assert CLOSE_TIMEOUT + cleanup <= took < CLOSE_TIMEOUT + cleanup + 1.0, took
    [debug] = [r for r in caplog.records if "cancelled close ended with an error" in r.message]
    assert debug.levelno == logging.DEBUG
    assert debug.exc_info is not None and isinstance(debug.exc_info[1], LookupError)
    assert not session.in_transaction()
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- sync closes that fail in a teardown ---------------------------------------------------------


def terminate_backend_of(scoped: t.Any) -> None:
    """Terminate the PostgreSQL backend of *scoped*'s session (it is in a transaction)."""
    pid = scoped.execute(text("select pg_backend_pid()")).scalar_one()
    with connect_admin(autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", (pid,))


def assert_failure_logged(caplog: pytest.LogCaptureFixture, scoped: t.Any) -> None:
    """One error was logged: *scoped*'s close failed, on its invalidated connection."""
    [failure] = library_records(caplog, logging.WARNING)
    assert failure.levelno == logging.ERROR
    message = failure.getMessage()
    kind = "async" if scoped.is_async else "sync"
    what = f"the {kind} scoped session {scoped.name!r}"
    assert f"Closing the session of {what} failed during app-context teardown" in message
    assert "The remaining teardown steps still run" in message
    assert failure.exc_info is not None
    error = failure.exc_info[1]
    assert isinstance(error, DBAPIError) and error.connection_invalidated, error


@pytest.mark.postgres
def test_flask_teardown_logs_a_failing_sync_close_and_closes_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Flask's sync teardown closes the sessions ``remove()`` does not reach (here those of
    an ``EngineRegistry``) one after another: the first one's close fails (its backend was
    terminated mid-transaction) and is logged with the cause; the next one is still closed;
    the teardown itself does not raise."""
    require_postgres()
    app = Flask(__name__)
    registry = EngineRegistry(app=app)
    failing_url, healthy_url = postgres_url("psycopg"), f"sqlite:///{tmp_path / 'ok.db'}"
    try:
        with app.app_context():
            failing = registry[failing_url]  # its session is opened (and so closed) first
            healthy = registry[healthy_url]
            healthy_session = healthy()
            healthy.execute(text("select 1"))
            terminate_backend_of(failing)
        assert_failure_logged(caplog, failing)
        assert not healthy_session.in_transaction(), "the teardown stopped halfway"
        assert bind_of(failing).pool.checkedout() == 0  # type: ignore[attr-defined]
        assert bind_of(healthy).pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        registry.close()


@needs_quart
@pytest.mark.postgres
async def test_quart_teardown_closes_sync_sessions_in_a_thread_and_never_stops_halfway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Quart's teardown closes the sync sessions ``remove()`` does not reach (an
    ``EngineRegistry``'s) in a worker thread, off the event loop: one whose close fails is
    logged with the cause, and the next one is still closed."""
    require_postgres()
    app = Quart(__name__)
    registry = EngineRegistry(app=app)
    failing_url, healthy_url = postgres_url("psycopg"), f"sqlite:///{tmp_path / 'ok.db'}"
    closed_in: list[threading.Thread] = []
    try:
        async with app.app_context():  # no request: sync sessions may be used (a CLI command)
            failing = registry[failing_url]
            healthy = registry[healthy_url]
            healthy_session = healthy()
            healthy.execute(text("select 1"))
            event.listen(
                bind_of(healthy), "checkin", lambda *a: closed_in.append(threading.current_thread())
            )
            terminate_backend_of(failing)
        assert_failure_logged(caplog, failing)
        assert not healthy_session.in_transaction(), "the teardown stopped halfway"
        assert len(closed_in) == 1 and closed_in[0] is not threading.current_thread()
        assert bind_of(failing).pool.checkedout() == 0  # type: ignore[attr-defined]
        assert bind_of(healthy).pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await registry.aclose()


# --- a session that holds no connection --------------------------------------------------------


async def test_session_without_a_connection_is_closed_at_once_even_when_cancelled(
    tmp_path: Path,
) -> None:
    """A session that never began a transaction holds no connection: its close does no I/O,
    so it runs at once in the caller, with no task to shield and no timer to bound it. A
    cancellation already pending in the caller does not stop it; the caller is cancelled
    only when it next waits."""
    from async_scoped_session_ext._close import close_to_completion

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'idle.db'}")
    try:
        session = async_sessionmaker(engine)()
        closed: list[bool] = []

        async def close_then_wait() -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # pending: delivered at the next suspension
            await close_to_completion(session, timeout=5)
            closed.append(True)  # the close did not suspend, so no cancellation yet
            await asyncio.sleep(0)

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(close_then_wait())
        assert closed == [True]
        assert not session.in_transaction() and len(session.identity_map) == 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


# --- a cancellation deferred past a framework's teardown (Quart 0.23) ---------------------------


@pytest.mark.parametrize("suspends_again", [True, False])
async def test_a_deferred_cancellation_still_cancels_the_task(suspends_again: bool) -> None:
    """``defer_cancellation()`` re-delivers a caught cancellation at the task's next
    suspension; a task that ends without suspending again still ends cancelled."""
    reached: list[str] = []

    async def teardown_then_more() -> None:
        try:
            await asyncio.sleep(10)  # cancelled here, as a teardown's close would be
        except asyncio.CancelledError as cancelled:
            defer_cancellation(cancelled)
        reached.append("after the teardown")
        if suspends_again:
            await asyncio.sleep(0)
            reached.append("never")

    task = asyncio.create_task(teardown_then_more())
    await asyncio.sleep(0)
    task.cancel("hung up")
    await asyncio.wait({task})
    assert task.cancelled()
    assert reached == ["after the teardown"]


async def test_a_deferred_cancellation_keeps_a_timeout_a_timeout() -> None:
    """An ``asyncio.timeout()`` that cancelled the teardown still raises ``TimeoutError``:
    the deferral leaves the task's count of cancellations as it was."""

    async def teardown() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as cancelled:
            defer_cancellation(cancelled)
        await asyncio.sleep(0)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await teardown()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
