"""Pooled connections and the shared loop keep no caller's context alive (DESIGN fact 10).

asyncio copies the current context into a transport's callbacks, so an asyncpg connection
opened in a request would keep that request's context (its app context and ``g``) alive for as
long as it stays pooled; the shared loop's self-pipe would keep its first caller's.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import contextvars
import gc
import socket
import time
import typing as t
import uuid
import weakref
from pathlib import Path

import pytest
from flask import Flask, g
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_scoped_session_ext import EngineRegistry, async_scoped_session, current_session
from async_scoped_session_ext._connect import _connect_in_empty_context, connect_outside_context
from async_scoped_session_ext._runner import LoopRunner, runner

from .support.databases import database_url, postgres_url, require_postgres
from .support.environment import HAS_QUART, needs_quart

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart
    from quart import g as quart_g


class Payload:
    """A megabyte, watched through a weak reference."""

    def __init__(self) -> None:
        self.data = bytearray(1 << 20)


payload: contextvars.ContextVar[Payload] = contextvars.ContextVar("payload")

#: The async drivers: aiosqlite, asyncpg, and psycopg's async connection.
DRIVERS = ["aiosqlite", "asyncpg", "psycopg"]
POSTGRES_DRIVERS = ["asyncpg", "psycopg"]


def driver_url(driver: str, tmp_path: Path) -> str:
    if driver == "psycopg":
        require_postgres()
        return postgres_url("psycopg")  # postgresql+psycopg: the async dialect in an AsyncEngine
    return database_url(driver, tmp_path)


def named(driver: str, app_name: str) -> dict[str, t.Any]:
    """Connect arguments that give a PostgreSQL connection the application_name *app_name*."""
    if driver == "asyncpg":
        return {"server_settings": {"application_name": app_name}}
    return {"application_name": app_name}


def backends(app_name: str) -> int:
    """How many PostgreSQL backends were opened with *app_name*."""
    engine = create_engine(postgres_url("psycopg"))
    try:
        with engine.connect() as conn:
            query = "select count(*) from pg_stat_activity where application_name = :name"
            count: int = conn.execute(text(query), {"name": app_name}).scalar_one()
            return count
    finally:
        engine.dispose()


async def until_freed(ref: weakref.ref[Payload], timeout: float = 2.0) -> bool:
    """Whether the payload of *ref* is garbage collected within *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)


async def connect_holding_payload(engine: AsyncEngine) -> weakref.ref[Payload]:
    """Open a connection while the context holds a payload; reset the value after."""
    held = Payload()
    token = payload.set(held)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
    finally:
        payload.reset(token)
    return weakref.ref(held)


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """An async driver."""
    return t.cast(str, request.param)


@pytest.fixture(params=POSTGRES_DRIVERS)
def pg_driver(request: pytest.FixtureRequest) -> str:
    """An async PostgreSQL driver."""
    return t.cast(str, request.param)


@pytest.fixture
def app_name() -> str:
    """A PostgreSQL application_name unique to the test, to find its backends."""
    return f"asse-{uuid.uuid4().hex[:12]}"


# -- (a) a pooled connection keeps no context alive ------------------------------------------


async def test_pooled_connection_keeps_no_context_alive(driver: str, tmp_path: Path) -> None:
    """A connection opened while the context held a megabyte does not keep it alive in the pool."""
    engine = create_async_engine(driver_url(driver, tmp_path))
    connect_outside_context(engine)
    try:
        ref = await connect_holding_payload(engine)
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        assert await until_freed(ref), "the pooled connection keeps the caller's context alive"
    finally:
        await engine.dispose()


async def test_without_it_asyncpg_pins_the_context() -> None:
    """The control: without connect_outside_context, asyncpg's pooled connection pins it.

    If this starts to fail, asyncpg no longer keeps the context, and the test above has
    stopped proving anything on asyncpg.
    """
    require_postgres()
    engine = create_async_engine(postgres_url("asyncpg"))
    try:
        ref = await connect_holding_payload(engine)
        assert not await until_freed(ref, timeout=0.2)
    finally:
        await engine.dispose()
    assert await until_freed(ref)  # disposing the pool closed the connection


def payload_view(
    request_g: t.Any, refs: list[weakref.ref[Payload]]
) -> t.Callable[[], t.Awaitable[str]]:
    """An async view that puts a payload on *request_g* (Flask's or Quart's ``g``), watched
    through *refs*, and queries through ``current_session``."""

    async def view() -> str:
        request_g.payload = Payload()
        refs.append(weakref.ref(request_g.payload))
        await current_session.execute(text("select 1"))
        return "ok"

    return view


def test_flask_request_g_is_not_kept_by_the_pool() -> None:
    """Flask async view on asyncpg: after the request its ``g`` is freed, the connection pooled."""
    require_postgres()
    engine = create_async_engine(postgres_url("asyncpg"))
    app = Flask(__name__)
    async_scoped_session(async_sessionmaker(engine), app)
    refs: list[weakref.ref[Payload]] = []
    app.get("/")(payload_view(g, refs))

    try:
        assert app.test_client().get("/").text == "ok"
        assert runner.run(until_freed(refs[0])), "the pooled connection keeps the request's g"
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        runner.run(engine.dispose())


@needs_quart
async def test_quart_request_g_is_not_kept_by_the_pool() -> None:
    """Quart view on asyncpg: after the request its ``g`` is freed, the connection pooled."""
    require_postgres()
    engine = create_async_engine(postgres_url("asyncpg"))
    app = Quart(__name__)
    async_scoped_session(async_sessionmaker(engine), app)
    refs: list[weakref.ref[Payload]] = []
    app.get("/")(payload_view(quart_g, refs))

    try:
        response = await app.test_client().get("/")
        assert await response.get_data(as_text=True) == "ok"
        assert await until_freed(refs[0]), "the pooled connection keeps the request's g"
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


@needs_quart
async def test_every_async_engine_of_the_library_is_covered(tmp_path: Path) -> None:
    """A given bind, an engine made from config and an EngineRegistry engine all get it."""
    given = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'given.db'}")
    app = Quart(__name__)
    async_scoped_session(async_sessionmaker(given), app)
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"configured": f"sqlite+aiosqlite:///{tmp_path}/c.db"}
    from_config = async_scoped_session(app=app, name="configured")
    registry = EngineRegistry(lambda key: f"sqlite+aiosqlite:///{tmp_path / key}.db", is_async=True)
    async with app.app_context():
        configured = from_config.session_factory.kw["bind"]
    tenant = registry["tenant"].session_factory.kw["bind"]
    try:
        for engine in (given, configured, tenant):
            assert event.contains(engine.sync_engine, "do_connect", _connect_in_empty_context)
    finally:
        await registry.aclose()
        await configured.dispose()


# -- the listener itself ---------------------------------------------------------------------


def test_idempotent_and_holds_no_engine(tmp_path: Path) -> None:
    """A second call adds nothing, and the engine can still be garbage collected."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    connect_outside_context(engine)
    connect_outside_context(engine)
    assert list(engine.sync_engine.dialect.dispatch.do_connect) == [_connect_in_empty_context]
    ref = weakref.ref(engine.sync_engine)
    del engine
    gc.collect()
    assert ref() is None


async def test_later_do_connect_listeners_still_run_in_the_callers_context() -> None:
    """A do_connect listener added afterwards runs, sees the caller's context, and its
    connect arguments are used."""
    require_postgres()
    engine = create_async_engine(postgres_url("asyncpg"))
    connect_outside_context(engine)
    seen: list[Payload | None] = []

    @event.listens_for(engine.sync_engine, "do_connect")
    def name_the_connection(
        dialect: object, record: object, cargs: list[t.Any], cparams: dict[str, t.Any]
    ) -> None:
        seen.append(payload.get(None))
        cparams["server_settings"] = {"application_name": "named-late"}

    held = Payload()
    token = payload.set(held)
    try:
        async with engine.connect() as conn:
            name = await conn.scalar(text("select current_setting('application_name')"))
    finally:
        payload.reset(token)
        await engine.dispose()
    assert (name, seen) == ("named-late", [held])


# -- (b) the shared loop keeps no context of its first caller -------------------------------


def test_shared_loop_keeps_no_context_of_its_first_caller() -> None:
    """Starting the loop from a context holding a megabyte does not keep that megabyte alive."""
    loop_runner = LoopRunner()
    held = Payload()
    ref = weakref.ref(held)
    token = payload.set(held)
    try:
        loop_runner.run(asyncio.sleep(0))  # starts the loop in this context
    finally:
        payload.reset(token)
    del held
    try:
        assert asyncio.run(until_freed(ref)), "the shared loop keeps its first caller's context"
    finally:
        loop_runner.stop()


# -- (c) cancellation still cancels the connect ----------------------------------------------


@pytest.fixture
def silent_server() -> cabc.Iterator[socket.socket]:
    """A listening socket that never answers: a connect attempt to it hangs."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def closed_by_client(server: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the (one) client connection waiting on *server* was closed by the client."""
    server.settimeout(timeout)
    accepted, _ = server.accept()
    with accepted:
        accepted.settimeout(timeout)
        try:
            while accepted.recv(1024):  # the driver's first message, then the end of stream
                pass
        except TimeoutError:
            return False
    return True


async def times_out(engine: AsyncEngine, timeout: float) -> bool:
    """Whether a connect of *engine* within ``asyncio.timeout(timeout)`` timed out.

    Its frames (and the driver's, in the traceback) are gone once this returns.
    """
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect():
                return False
    except TimeoutError:
        return True


async def test_timeout_cancels_a_hanging_connect(
    pg_driver: str, silent_server: socket.socket
) -> None:
    """``asyncio.timeout`` around a connect to a server that never answers raises promptly,
    closes the socket and leaves no task behind."""
    port = silent_server.getsockname()[1]
    engine = create_async_engine(f"postgresql+{pg_driver}://user@127.0.0.1:{port}/db")
    connect_outside_context(engine)
    started = time.monotonic()
    try:
        assert await times_out(engine, 0.5)
        assert time.monotonic() - started < 3
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert asyncio.all_tasks() == {asyncio.current_task()}
        # psycopg closes its socket when its connect generator is collected, after the loop
        # has run the callbacks of the cancelled wait (one iteration); asyncpg closes it itself.
        await asyncio.sleep(0)
        gc.collect()
        assert await asyncio.to_thread(closed_by_client, silent_server)
    finally:
        await engine.dispose()


async def test_connection_made_as_the_caller_is_cancelled_is_closed(
    pg_driver: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect that succeeds just as its caller is cancelled closes the new connection."""
    require_postgres()
    engine = create_async_engine(postgres_url(pg_driver), connect_args=named(pg_driver, app_name))
    connect_outside_context(engine)
    dialect = engine.sync_engine.dialect
    connect = dialect.connect
    caller: asyncio.Task[None] | None = None

    def connect_then_cancel_the_caller(*cargs: t.Any, **cparams: t.Any) -> t.Any:
        connection = connect(*cargs, **cparams)
        assert caller is not None
        # Runs after the connecting task has finished, before the caller resumes.
        asyncio.get_running_loop().call_soon(caller.cancel)
        return connection

    monkeypatch.setattr(dialect, "connect", connect_then_cancel_the_caller)

    async def open_connection() -> None:
        async with engine.connect():
            pytest.fail("the caller was not cancelled")

    try:
        caller = asyncio.create_task(open_connection())
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while backends(app_name) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert backends(app_name) == 0, "the connection made for a cancelled caller was left open"
    finally:
        await engine.dispose()
