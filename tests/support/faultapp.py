"""The harness of the fault tests: a Quart app and PostgreSQL with a fault proxy between.

Each fault test (``tests/test_faults_*.py``) serves a Quart app with hypercorn on loopback;
its engine reaches PostgreSQL only through a :class:`~tests.support.faultproxy.FaultProxy`,
which delays, stalls, cuts or refuses the traffic. This module holds what they share:

- the fixtures ``proxy``, ``application_name``, ``admin`` and the autouse ``server_log``;
  a test module makes them available by importing them (``proxy = harness.proxy``);
- :func:`engine_through` (an asyncpg engine through the proxy), :func:`build_app` and
  :class:`FaultApp` (the app and its views), :func:`serving`, :func:`client` and
  :func:`hang_up` (a client that closes its socket early);
- the checks: :func:`backends`, :class:`Leftovers` and :func:`settle` (nothing left behind),
  :func:`assert_no_garbage_collected_connections`, :func:`assert_next_request_succeeds`,
  :func:`app_errors` and :func:`library_records`;
- the bounds ``TIMEOUT``, ``SETTLE`` and ``TEST_BOUND``, and ``CLOSE_DELAY``.

Every wait is bounded: each test runs under ``asyncio.timeout(TEST_BOUND)``, each HTTP call
and pool checkout under ``TIMEOUT``, and each settle poll under ``SETTLE``.

Quart is imported here unconditionally: a test module calls
``pytest.importorskip("quart", reason=QUART_MISSING)`` before it imports this module.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextlib
import gc
import logging
import os
import socket
import sys
import time
import typing as t
import uuid
import warnings
from dataclasses import dataclass, field

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart
from sqlalchemy import NullPool, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from async_scoped_session_ext import async_scoped_session

from . import faultproxy
from .databases import postgres_url, require_postgres
from .faultproxy import FaultProxy

TIMEOUT = 10.0  # seconds one HTTP request, pool checkout or connect may take
SETTLE = 5.0  # seconds the app may take to clean up after a fault
#: Seconds a whole test may take. Under coverage's tracing (``nox -s tests``) the sweeps
#: take several times longer: measured, the cancel-on-every-iteration sweep of
#: test_faults_cancellation ran 47-52 s there (1 s without), and hit the 40 s bound 3 runs
#: in 5, on this session's code and the last session's alike.
TEST_BOUND = 40.0 * (4 if "coverage" in sys.modules else 1)
LIBRARY_LOGGER = "async_scoped_session_ext"


# --- fixtures ------------------------------------------------------------------------------

proxy = faultproxy.proxy  # a fault proxy in front of the test database's server


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
