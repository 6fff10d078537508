"""Faults between a Quart app and PostgreSQL (asyncpg), injected by a TCP proxy.

Each test serves a Quart app with hypercorn on loopback; its engine reaches PostgreSQL only
through a :class:`~tests.support.faultproxy.FaultProxy`, which delays, stalls, cuts or refuses the
traffic. Clients hang up mid-query and mid-teardown, the close path is cancelled at every
loop iteration, a close is stalled, connections are cut, and the database goes down and
comes back. Afterwards nothing may be left behind: no connection checked out, no session
registered, no backend of the test running or idle in a transaction, no connection left to
the garbage collector, and the next request must succeed.

Every wait is bounded: each test runs under ``asyncio.timeout(TEST_BOUND)``, each HTTP call
and pool checkout under ``TIMEOUT``, and each settle poll under ``SETTLE``.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import gc
import logging
import os
import socket
import time
import typing as t
import uuid
import warnings
from dataclasses import dataclass, field

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from sqlalchemy import NullPool, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from async_scoped_session_ext import async_scoped_session
from async_scoped_session_ext._close import close_to_completion

from .support.databases import postgres_url, require_postgres
from .support.environment import QUART_MISSING
from .support.faultproxy import FaultProxy

pytest.importorskip("quart", reason=QUART_MISSING)

from quart import Quart

pytestmark = pytest.mark.postgres

TIMEOUT = 10.0  # seconds one HTTP request, pool checkout or connect may take
SETTLE = 5.0  # seconds the app may take to clean up after a fault
TEST_BOUND = 40.0  # seconds a whole test may take
LIBRARY_LOGGER = "async_scoped_session_ext"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> cabc.Iterator[FaultProxy]:
    """A fault proxy in front of the test database's server."""
    require_postgres()
    target = make_url(postgres_url("asyncpg"))
    with FaultProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def application_name() -> str:
    """A PostgreSQL application_name unique to this test, to find its backends."""
    return f"asse-faults-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin() -> cabc.AsyncIterator[AsyncEngine]:
    """A direct engine (no proxy, no pool) to watch ``pg_stat_activity``."""
    require_postgres()
    engine = create_async_engine(postgres_url("asyncpg"), poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
def server_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture warnings and errors of every logger (app, library, SQLAlchemy, hypercorn)."""
    caplog.set_level(logging.WARNING)
    return caplog


@contextlib.asynccontextmanager
async def engine_through(
    proxy: FaultProxy, application_name: str, *, pool_size: int, pre_ping: bool = False
) -> cabc.AsyncIterator[AsyncEngine]:
    """An asyncpg engine that reaches the test database through *proxy*.

    Afterwards the proxy's faults are lifted and the engine disposed; no connection may be
    left checked out.
    """
    url = make_url(postgres_url("asyncpg")).set(host=proxy.host, port=proxy.port)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=TIMEOUT,
        pool_pre_ping=pre_ping,
        connect_args={
            "server_settings": {"application_name": application_name},
            "timeout": TIMEOUT,
        },
    )
    try:
        yield engine
        assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
    finally:
        proxy.resume()
        proxy.refuse(False)
        proxy.delay(0)
        await engine.dispose()


# --- the app -------------------------------------------------------------------------------


@dataclass
class FaultApp:
    """A Quart app whose views use one scoped session, served by hypercorn on loopback."""

    app: Quart
    scoped: async_scoped_session[AsyncSession]
    engine: AsyncEngine
    proxy: FaultProxy
    port: int = 0
    #: views cancelled while awaiting the database (the client hung up)
    cancelled_views: int = 0
    #: backend pids the views used, in order
    pids: list[int] = field(default_factory=list)
    #: set by the views that arm a fault, once the fault is armed
    armed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def checkedout(self) -> int:
        return t.cast(int, self.engine.pool.checkedout())  # type: ignore[attr-defined]

    def checkedin(self) -> int:
        return t.cast(int, self.engine.pool.checkedin())  # type: ignore[attr-defined]


CLOSE_DELAY = 0.5  # seconds every server reply is delayed by /then-delay


def build_app(engine: AsyncEngine, proxy: FaultProxy, *, close_timeout: float = 10.0) -> FaultApp:
    """The app: ``/pid``, ``/sleep/<ms>``, and views that arm a fault for the teardown."""
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app, close_timeout=close_timeout)
    fa = FaultApp(app, scoped, engine, proxy)

    async def backend_pid() -> int:
        pid = t.cast(int, await scoped.scalar(text("select pg_backend_pid()")))
        fa.pids.append(pid)
        return pid

    @app.get("/pid")
    async def pid() -> dict[str, int]:
        return {"pid": await backend_pid()}

    @app.get("/sleep/<int:ms>")
    async def sleep(ms: int) -> dict[str, int]:
        try:
            pid = await backend_pid()
            await scoped.execute(text("select pg_sleep(:s)"), {"s": ms / 1000})
        except asyncio.CancelledError:
            fa.cancelled_views += 1
            raise
        return {"pid": pid}

    @app.get("/then-delay")
    async def then_delay() -> dict[str, int]:
        """Leave a transaction open, then make every server reply late: a slow close."""
        pid = await backend_pid()
        proxy.delay(CLOSE_DELAY, "to_client")
        fa.armed.set()
        return {"pid": pid}

    @app.get("/then-stall")
    async def then_stall() -> dict[str, int]:
        """Leave a transaction open, then stop all traffic: a close that cannot finish."""
        pid = await backend_pid()
        proxy.stall()
        fa.armed.set()
        return {"pid": pid}

    return fa


@contextlib.asynccontextmanager
async def serving(fa: FaultApp) -> cabc.AsyncIterator[FaultApp]:
    """Serve *fa* with hypercorn on this loop, on a pre-bound free loopback port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    try:
        fa.port = listener.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{os.dup(listener.fileno())}"]
        config.graceful_timeout = 5.0
        config.accesslog = None
        shutdown = asyncio.Event()
        server = asyncio.create_task(serve(fa.app, config, shutdown_trigger=shutdown.wait))
        try:
            yield fa
        finally:
            shutdown.set()
            await asyncio.wait_for(server, TIMEOUT)
    finally:
        listener.close()


def client(fa: FaultApp) -> httpx.AsyncClient:
    """An HTTP client for loopback (no proxies from the environment)."""
    return httpx.AsyncClient(base_url=fa.base_url, timeout=TIMEOUT, trust_env=False)


async def hang_up(
    fa: FaultApp, path: str, *, after: float, armed: asyncio.Event | None = None
) -> bytes:
    """Send ``GET path`` on a raw socket and close it *after* seconds (counted from *armed*).

    Returns what arrived before the hang-up: ``b""`` when the client hung up first.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", fa.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        if armed is not None:
            async with asyncio.timeout(TIMEOUT):
                await armed.wait()
        try:
            async with asyncio.timeout(after):
                return await reader.read(1)
        except TimeoutError:
            return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- checks --------------------------------------------------------------------------------


async def backends(admin: AsyncEngine, application_name: str) -> list[tuple[int, str]]:
    """(pid, state) of the test's backends, by application_name."""
    async with admin.connect() as conn:
        rows = await conn.execute(
            text(
                "select pid, coalesce(state, '') from pg_stat_activity"
                " where application_name = :name order by pid"
            ),
            {"name": application_name},
        )
        return [(int(pid), str(state)) for pid, state in rows]


@dataclass(frozen=True)
class Leftovers:
    """What a fault may have left behind; all empty when the app is clean."""

    checked_out: int
    registered: int
    busy_backends: tuple[tuple[int, str], ...]  # not 'idle': active, idle in transaction…

    @property
    def clean(self) -> bool:
        return self.checked_out == 0 and self.registered == 0 and not self.busy_backends


async def settle(fa: FaultApp, admin: AsyncEngine, application_name: str) -> Leftovers:
    """Poll (at most ``SETTLE`` seconds) until nothing is left behind; return the last look."""
    deadline = time.monotonic() + SETTLE
    while True:
        busy = tuple(
            (pid, state)
            for pid, state in await backends(admin, application_name)
            if state != "idle"
        )
        left = Leftovers(fa.checkedout(), len(fa.scoped.registry), busy)
        if left.clean or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


def assert_no_garbage_collected_connections(caplog: pytest.LogCaptureFixture) -> None:
    """No connection was left for the garbage collector (SQLAlchemy logs and warns then).

    Earlier collections are covered by ``filterwarnings = error`` (a warning raised in a
    finaliser fails the test) and by the log; this one records its warnings itself.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught] == []
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "non-checked-in" in m or "garbage collector" in m]


async def assert_next_request_succeeds(fa: FaultApp) -> int:
    """A plain request after the fault answers 200; return its backend pid."""
    async with client(fa) as http:
        response = await http.get("/pid")
    assert response.status_code == 200, response.text
    return t.cast(int, response.json()["pid"])


def app_errors(caplog: pytest.LogCaptureFixture, fa: FaultApp) -> list[logging.LogRecord]:
    """Quart's "Exception on request …" records (logged with the exception)."""
    return [r for r in caplog.records if r.name == fa.app.name and r.levelno >= logging.ERROR]


def library_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LIBRARY_LOGGER]


# --- a. the client hangs up mid-query ------------------------------------------------------

SEQUENTIAL_HANG_UPS = 10
CONCURRENT_HANG_UPS = 10


async def test_hang_up_mid_query_leaves_nothing_behind(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """20 clients hang up 0.2 s into ``pg_sleep(2)``: every view is cancelled, nothing leaks."""
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=CONCURRENT_HANG_UPS) as engine,
        serving(build_app(engine, proxy)) as fa,
    ):
        for _ in range(SEQUENTIAL_HANG_UPS):
            assert await hang_up(fa, "/sleep/2000", after=0.2) == b""
        started = time.monotonic()
        got = await asyncio.gather(
            *(hang_up(fa, "/sleep/2000", after=0.2) for _ in range(CONCURRENT_HANG_UPS))
        )
        assert got == [b""] * CONCURRENT_HANG_UPS

        left = await settle(fa, admin, application_name)
        settled_after = time.monotonic() - started
        assert left == Leftovers(0, 0, ()), left
        assert fa.cancelled_views == SEQUENTIAL_HANG_UPS + CONCURRENT_HANG_UPS
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        assert app_errors(server_log, fa) == []
        accepted = proxy.accepted
        await assert_next_request_succeeds(fa)
        print(
            f"FACT a: {fa.cancelled_views} views cancelled mid-query; clean"
            f" {settled_after:.2f} s after the concurrent hang-ups; proxy accepted"
            f" {accepted} connections for {fa.cancelled_views} hang-ups"
            f" (+{proxy.accepted - accepted} for the next request)"
        )


CONNECT_DELAY = 0.2  # seconds each server reply is delayed: connecting takes about 0.42 s


async def test_hang_up_while_connecting_leaves_nothing_behind(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """Hang-ups that land while the pool is still opening the request's connection."""
    hang_ups = (0.05, 0.15, 0.25, 0.3)  # during the handshake's two delayed round trips
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
        serving(build_app(engine, proxy)) as fa,
    ):
        connected: list[object] = []

        @event.listens_for(engine.sync_engine, "connect")
        def on_connect(dbapi_connection: object, record: object) -> None:
            connected.append(dbapi_connection)

        await assert_next_request_succeeds(fa)  # the dialect is initialised
        connected.clear()
        for after in hang_ups:
            await engine.dispose()  # an empty pool: the request has to connect
            proxy.delay(CONNECT_DELAY, "to_client")
            assert await hang_up(fa, "/sleep/2000", after=after) == b""
            left = await settle(fa, admin, application_name)
            proxy.delay(0)
            assert left == Leftovers(0, 0, ()), (after, left)
        assert fa.cancelled_views == len(hang_ups)
        assert connected == [], "a hang-up landed after the connection was made"
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        await assert_next_request_succeeds(fa)


# --- b. the client hangs up while the teardown is closing the session ----------------------


async def test_hang_up_during_a_slow_close_still_returns_the_connection(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The close outlives the hang-up: the connection goes back to the pool and is reused."""
    closes: list[tuple[str, float]] = []  # (how the close ended, how long it took)

    async def recording_close(*args: t.Any, **kwargs: t.Any) -> None:
        started = time.monotonic()
        try:
            await close_to_completion(*args, **kwargs)
        except asyncio.CancelledError:
            closes.append(("cancelled", time.monotonic() - started))
            raise
        closes.append(("closed", time.monotonic() - started))

    # remove() calls the close it imported; record how each close ends.
    monkeypatch.setattr("async_scoped_session_ext._async.close_to_completion", recording_close)

    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
        serving(build_app(engine, proxy)) as fa,
    ):
        outcomes = []
        for _ in range(3):
            fa.armed.clear()
            closes.clear()
            got = await hang_up(fa, "/then-delay", after=0.1, armed=fa.armed)
            assert got == b"", "the response came before the hang-up"
            async with asyncio.timeout(TIMEOUT):
                while not closes:
                    await asyncio.sleep(0.01)
            proxy.delay(0)

            how, took = closes[0]
            outcomes.append(f"{how} after {took:.2f} s")
            assert how == "cancelled", f"the hang-up did not land during the close: {closes}"
            assert took >= CLOSE_DELAY * 0.8, "the close did not wait for the slow rollback"
            left = await settle(fa, admin, application_name)
            assert left == Leftovers(0, 0, ()), left
            assert fa.checkedin() == 1, "the connection did not go back to the pool"
            view_pid = fa.pids[-1]
            assert await backends(admin, application_name) == [(view_pid, "idle")]
            accepted = proxy.accepted
            assert await assert_next_request_succeeds(fa) == view_pid, "not reused"
            assert proxy.accepted == accepted, "the next request opened a new connection"

        assert proxy.accepted == 1, "a connection was discarded"
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        print(f"FACT b: closes under a hang-up: {outcomes}")


# --- c. cancellation at every loop iteration of the close path -----------------------------

MAX_ITERATIONS = 500


@dataclass
class SweepStep:
    """One step of the sweep: how a request whose ``remove()`` was cancelled ended."""

    task: asyncio.Task[None]
    session: AsyncSession
    cancelled: bool  # whether a cancel() landed before remove() finished
    finished_first: bool  # whether remove() finished before the k-th iteration


async def cancel_remove_after(
    app: Quart, scoped: async_scoped_session[AsyncSession], k: int, cancels: str
) -> SweepStep:
    """Run a request-like task that queries then removes; cancel it *k* iterations in."""
    reached = asyncio.Event()
    removed = asyncio.Event()
    sessions: list[AsyncSession] = []

    async def request() -> None:
        async with app.app_context():
            session = scoped()
            sessions.append(session)
            await session.execute(text("select 1"))
            assert session.in_transaction()
            reached.set()  # no await between this and remove(): k counts from its start
            await scoped.remove()
            removed.set()

    task = asyncio.create_task(request())
    async with asyncio.timeout(TIMEOUT):
        await reached.wait()
    for _ in range(k):
        await asyncio.sleep(0)
    finished_first = removed.is_set()
    cancelled = False
    if not finished_first:
        cancelled = task.cancel()
        assert cancelled, f"k={k}: the task ended without finishing remove()"
        async with asyncio.timeout(TIMEOUT):
            while cancels == "every_iteration" and not task.done():
                task.cancel()
                await asyncio.sleep(0)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.wait({task})
    return SweepStep(task, sessions[0], cancelled, finished_first)


@pytest.mark.parametrize("cancels", ["once", "every_iteration"])
async def test_cancellation_sweep_over_remove(
    proxy: FaultProxy, application_name: str, cancels: str
) -> None:
    """Cancel ``remove()`` after k = 0, 1, 2, … loop iterations, until it finishes first.

    For every k: the session left the registry and its transaction, the connection went
    back to the pool (never discarded: the proxy sees one connection throughout), and a
    cancellation that landed is re-raised. ``every_iteration`` cancels again on every
    iteration until the task ends, as repeated hang-ups would.
    """
    app = Quart(__name__)
    landed = 0
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
    ):
        scoped = async_scoped_session(async_sessionmaker(engine), app)
        for k in range(MAX_ITERATIONS + 1):
            step = await cancel_remove_after(app, scoped, k, cancels)

            assert step.task.cancelled() == step.cancelled, f"k={k}: cancellation swallowed"
            if not step.cancelled:
                step.task.result()
            assert len(scoped.registry) == 0, f"k={k}: the session is still registered"
            assert not step.session.in_transaction(), f"k={k}: the session was not closed"
            assert engine.pool.checkedout() == 0, f"k={k}: the connection is checked out"  # type: ignore[attr-defined]
            assert proxy.accepted == 1, f"k={k}: the connection was discarded, not returned"
            landed += step.cancelled
            if step.finished_first:
                break
        else:
            pytest.fail(f"remove() did not finish within {MAX_ITERATIONS} loop iterations")
    print(f"FACT c ({cancels}): {landed} cancellations landed (k=0..{k - 1}), done first at k={k}")


# --- d. a stalled close is bounded by close_timeout ----------------------------------------

STALL_CLOSE_TIMEOUT = 0.5


async def test_stalled_close_is_bounded_and_the_connection_invalidated(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """A close that cannot finish gives way after close_timeout; the response still comes.

    When the timeout cancels the close, SQLAlchemy first tries asyncpg's graceful close,
    which would wait up to 2 s on a stalled network; the library cancels it a second time
    after a short grace, which makes SQLAlchemy force-close the connection at once.
    """
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=2) as engine,
    ):
        fa = build_app(engine, proxy, close_timeout=STALL_CLOSE_TIMEOUT)
        async with serving(fa), client(fa) as http:
            started, started_wall = time.monotonic(), time.time()
            response = await http.get("/then-stall")
            took = time.monotonic() - started

            assert response.status_code == 200
            assert fa.armed.is_set(), "the view did not stall the proxy"
            assert STALL_CLOSE_TIMEOUT <= took < STALL_CLOSE_TIMEOUT + 1.0, f"took {took:.2f} s"
            assert fa.checkedout() == 0
            assert len(fa.scoped.registry) == 0
            (warning,) = library_records(server_log)
            assert warning.levelno == logging.WARNING
            assert "invalidated" in warning.getMessage(), warning.getMessage()
            warned_after = warning.created - started_wall

            proxy.resume()
            await assert_next_request_succeeds(fa)
            left = await settle(fa, admin, application_name)
            assert left == Leftovers(0, 0, ()), left
            assert_no_garbage_collected_connections(server_log)
        print(
            f"FACT d: close_timeout={STALL_CLOSE_TIMEOUT}, stalled: warning logged after"
            f" {warned_after:.2f} s, response after {took:.2f} s"
        )


# --- e. cut connections give clean 500s ----------------------------------------------------

IN_FLIGHT = 4


def failure_kind(record: logging.LogRecord) -> str:
    """The kind of error a record was logged with: ``disconnect`` or ``connect``.

    ``disconnect``: a SQLAlchemy ``DBAPIError`` that invalidated its connection (a pooled
    or in-use connection was found dead). ``connect``: the ``ConnectionError`` asyncpg
    raises when a new connection is reset (``Connect call failed`` or ``Connection reset by
    peer``, depending on when the reset arrives); SQLAlchemy passes it through unwrapped.
    """
    assert record.exc_info is not None and record.exc_info[1] is not None
    error = record.exc_info[1]
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return "disconnect"
    if isinstance(error, ConnectionError):
        return "connect"
    raise AssertionError(f"unexpected cause: {error!r}")


def cause(record: logging.LogRecord) -> str:
    """The driver's message of a logged ``DBAPIError``."""
    assert record.exc_info is not None and isinstance(record.exc_info[1], DBAPIError)
    return f"{type(record.exc_info[1]).__name__}: {record.exc_info[1].orig}"


async def test_cut_connections_give_500s_with_the_cause_logged(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """Cut in flight: every request answers 500 at once; cut between: one 500, then 200."""
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=IN_FLIGHT) as engine,
        serving(build_app(engine, proxy)) as fa,
        client(fa) as http,
    ):
        # In flight: every request is inside pg_sleep when the proxy cuts.
        requests = [asyncio.ensure_future(http.get("/sleep/2000")) for _ in range(IN_FLIGHT)]
        async with asyncio.timeout(TIMEOUT):
            while (
                sum(s == "active" for _, s in await backends(admin, application_name)) < IN_FLIGHT
            ):
                await asyncio.sleep(0.02)
        cut_at = time.monotonic()
        assert proxy.cut() == IN_FLIGHT
        responses = await asyncio.gather(*requests)
        answered_after = time.monotonic() - cut_at
        assert [r.status_code for r in responses] == [500] * IN_FLIGHT
        assert answered_after < 1.0, f"the 500s took {answered_after:.2f} s"
        errors = app_errors(server_log, fa)
        assert [failure_kind(r) for r in errors] == ["disconnect"] * IN_FLIGHT
        causes = {cause(r) for r in errors}
        assert library_records(server_log) == [], "the teardown failed to close"
        assert fa.checkedout() == 0 and len(fa.scoped.registry) == 0

        # Between requests: the pooled connections are dead. The first request that checks
        # one out fails; SQLAlchemy then invalidates the whole pool, so the others reconnect.
        warm = await asyncio.gather(*(http.get("/sleep/100") for _ in range(IN_FLIGHT)))
        assert [r.status_code for r in warm] == [200] * IN_FLIGHT
        server_log.clear()
        assert proxy.cut() == IN_FLIGHT
        statuses = [(await http.get("/pid")).status_code for _ in range(IN_FLIGHT + 1)]
        assert statuses == [500] + [200] * IN_FLIGHT
        (error,) = app_errors(server_log, fa)
        assert failure_kind(error) == "disconnect"
        idle_cause = cause(error)

        left = await settle(fa, admin, application_name)
        settled_after = time.monotonic() - cut_at
        assert left == Leftovers(0, 0, ()), left
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        print(
            f"FACT e: backends idle {settled_after:.2f} s after the in-flight cut;"
            f" cut in flight -> {IN_FLIGHT}x500 after {answered_after:.3f} s,"
            f" causes {sorted(causes)}; cut while pooled -> {statuses}, cause {idle_cause!r}"
        )


async def test_cut_during_the_close_is_logged_and_the_response_still_sent(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """A cut while the teardown's rollback is in flight: the close fails, is logged, and the
    response (sent after the teardown) is still the view's 200; the connection is discarded.
    """
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(proxy, application_name, pool_size=1) as engine,
        serving(build_app(engine, proxy)) as fa,
        client(fa) as http,
    ):
        pending = asyncio.ensure_future(http.get("/then-delay"))
        async with asyncio.timeout(TIMEOUT):
            await fa.armed.wait()
        await asyncio.sleep(CLOSE_DELAY / 2)  # the rollback's reply is on its way
        assert proxy.cut() == 1
        response = await pending
        proxy.delay(0)

        assert response.status_code == 200
        assert app_errors(server_log, fa) == []
        (failure,) = library_records(server_log)
        assert failure.levelno == logging.ERROR
        assert "failed" in failure.getMessage(), failure.getMessage()
        assert failure_kind(failure) == "disconnect"
        left = await settle(fa, admin, application_name)
        assert left == Leftovers(0, 0, ()), left
        assert_no_garbage_collected_connections(server_log)
        accepted = proxy.accepted
        await assert_next_request_succeeds(fa)
        assert proxy.accepted == accepted + 1, "the cut connection was not replaced"
        print(f"FACT e2: cut during close -> {response.status_code}, logged {cause(failure)!r}")


# --- f. the database goes down and comes back ----------------------------------------------

RECOVERY_POOL = 3


@pytest.mark.parametrize("requests_while_down", [3, 0], ids=["requests-while-down", "quiet"])
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
async def test_recovery_after_the_database_comes_back(
    proxy: FaultProxy,
    admin: AsyncEngine,
    application_name: str,
    server_log: pytest.LogCaptureFixture,
    pre_ping: bool,
    requests_while_down: int,
) -> None:
    """Down (refuse + cut): requests get 500s; back up: the app recovers without a restart.

    The pool is full (three connections) when the database goes down. Without pre-ping, a
    request after the outage may still check out a dead connection: SQLAlchemy then
    invalidates the whole pool, so only that one request fails.
    """
    async with (
        asyncio.timeout(TEST_BOUND),
        engine_through(
            proxy, application_name, pool_size=RECOVERY_POOL, pre_ping=pre_ping
        ) as engine,
        serving(build_app(engine, proxy)) as fa,
        client(fa) as http,
    ):
        warm = await asyncio.gather(*(http.get("/sleep/200") for _ in range(RECOVERY_POOL)))
        assert [r.status_code for r in warm] == [200] * RECOVERY_POOL
        assert fa.checkedin() == RECOVERY_POOL and proxy.open == RECOVERY_POOL

        proxy.refuse(True)
        assert proxy.cut() == RECOVERY_POOL
        down = [(await http.get("/pid")).status_code for _ in range(requests_while_down)]
        assert down == [500] * requests_while_down
        # With pre-ping the dead connection is replaced before use, and connecting fails;
        # without, the first request uses it and fails, which invalidates the whole pool.
        down_kinds = [failure_kind(r) for r in app_errors(server_log, fa)]
        if requests_while_down:
            first = "connect" if pre_ping else "disconnect"
            assert down_kinds == [first] + ["connect"] * (requests_while_down - 1)
        assert fa.checkedout() == 0 and len(fa.scoped.registry) == 0

        proxy.refuse(False)
        server_log.clear()
        after = [(await http.get("/pid")).status_code for _ in range(RECOVERY_POOL + 1)]
        failed = after.count(500)
        assert set(after) <= {200, 500}
        assert after[failed:] == [200] * (len(after) - failed), "a failure after a success"
        expected_failures = 1 if not pre_ping and requests_while_down == 0 else 0
        assert failed == expected_failures, after
        assert [failure_kind(r) for r in app_errors(server_log, fa)] == ["disconnect"] * failed

        left = await settle(fa, admin, application_name)
        assert left == Leftovers(0, 0, ()), left
        assert_no_garbage_collected_connections(server_log)
        assert library_records(server_log) == []
        print(
            f"FACT f (pre_ping={pre_ping}, requests while down={requests_while_down}):"
            f" down {down} ({down_kinds}), after recovery {after}; refused {proxy.refused}"
        )
