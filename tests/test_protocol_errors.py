"""A connection whose backend ended is invalidated, never left checked out or taken for an
outage.

When a backend ends (``pg_terminate_backend()``, a restart, a standby stopping), asyncpg
may read the server's last message (``FATAL: terminating connection``) before the
connection's close; its next operation then fails with ``InternalClientError: cannot
switch to state 15; another operation (2) is in progress``. The window is microseconds
wide; the fault proxy's ``hold_close`` widens it to a second, so every request here takes
it. SQLAlchemy before 2.0.50 passes the error on unwrapped and sees no disconnect in it
(sqlalchemy#13241). Before the fix (``_disconnects``), there:

- the teardown's rollback failed and left the connection checked out until the garbage
  collector terminated it ("The garbage collector is trying to clean up non-checked-in
  connection", in whichever test came next);
- a replica's pooled connection failed the pool's pre-ping with it, and the replica was
  taken for down: reads went to the primary for a back-off, with a warning.

SQLAlchemy 2.0.50 and later handle both themselves; the tests hold on every version (the
compat cells run this file on the oldest). Seen first as 1-3 failed reads in about 290,
and connections left checked out, when the streaming standby stopped, on SQLAlchemy 2.0.10.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import gc
import importlib
import logging
import typing as t
import uuid

import pytest
from flask import Flask
from sqlalchemy import event, func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_scoped_session_ext import async_scoped_session
from async_scoped_session_ext._runner import runner
from async_scoped_session_ext.replicas import async_replica_sessionmaker

from .support.databases import connect_admin, postgres_url
from .support.engines import checked_out
from .support.environment import needs_quart
from .support.faultproxy import FaultProxy, proxy

if t.TYPE_CHECKING:
    from quart import Quart

pytestmark = pytest.mark.postgres

__all__ = ["proxy"]  # the fixture

REQUESTS = 3
HOLD = 1.0  # seconds the proxy holds a backend's close after its last message
READ_IT = 0.05  # seconds for the client to read that message while its connection is idle
LIBRARY = "async_scoped_session_ext"
REPLICAS = "async_scoped_session_ext.replicas"


def terminate(application_name: str) -> int:
    """End every backend of *application_name* (from another connection); how many."""
    with connect_admin(autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


def engine_through(proxy: FaultProxy, application_name: str) -> AsyncEngine:
    """An asyncpg engine (with pre-ping) through *proxy*, its backends named as given."""
    url = make_url(postgres_url("asyncpg")).set(host=proxy.host, port=proxy.port)
    return create_async_engine(
        url,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": application_name}},
    )


def chain(error: BaseException | None) -> cabc.Iterator[BaseException]:
    """*error* and its causes (SQLAlchemy 2.0.50+ wraps asyncpg's error; older ones do not)."""
    while error is not None:
        yield error
        error = error.__cause__


def protocol_errors_logged(records: list[logging.LogRecord]) -> int:
    """How many failed closes were logged with asyncpg's ``InternalClientError`` as cause."""
    kind = importlib.import_module("asyncpg").InternalClientError
    return sum(
        any(isinstance(error, kind) for error in chain(record.exc_info[1]))
        for record in records
        if record.name == LIBRARY and record.exc_info
    )


@pytest.fixture
def no_gc() -> cabc.Iterator[None]:
    """No garbage collection meanwhile: only the library may return a connection."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def make_app(kind: str, engine: AsyncEngine, name: str) -> Flask | Quart:
    """A Flask (async view) or Quart app whose view ends its own connection's backend."""
    app: Flask | Quart
    if kind == "quart":
        from quart import Quart

        app = Quart(__name__)
    else:
        app = Flask(__name__)
    scoped = async_scoped_session(async_sessionmaker(engine), app)

    async def end() -> str:
        await scoped.execute(text("SELECT 1"))  # a transaction, idle on its connection
        assert terminate(name) == 1
        await asyncio.sleep(READ_IT)
        return "ended"

    app.add_url_rule("/end", view_func=end)
    return app


async def respond(app: Flask | Quart, path: str) -> int:
    """The status of a GET of *path* (Quart's client is awaited, Flask's is not)."""
    response: t.Any = app.test_client().get(path)
    if hasattr(response, "__await__"):
        response = await response
    return int(response.status_code)


@pytest.mark.parametrize("kind", ["flask-async", pytest.param("quart", marks=needs_quart)])
async def test_the_teardown_invalidates_a_connection_whose_backend_ended(
    kind: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture, no_gc: None
) -> None:
    """Each request's backend ends before its teardown: the close fails (logged, with the
    cause), and its connection is back in the pool, invalidated, at once."""
    name = f"asse-end-{uuid.uuid4().hex[:8]}"
    proxy.hold_close(HOLD)
    engine = engine_through(proxy, name)
    app = make_app(kind, engine, name)
    try:
        for request in range(1, REQUESTS + 1):
            assert await respond(app, "/end") == 200
            assert checked_out(engine) == 0, f"left checked out after request {request}"
            assert protocol_errors_logged(caplog.records) == request
    finally:
        if kind == "quart":
            await engine.dispose()
        else:
            runner.run(engine.dispose())


def where_app(primary: AsyncEngine, replica: AsyncEngine) -> Quart:
    """A Quart app reading from *replica* (primary: *primary*) whose ``/where`` says which
    database answered (its ``application_name``)."""
    from quart import Quart

    app = Quart(__name__)
    scoped = async_scoped_session(async_replica_sessionmaker(primary, replica), app)

    @app.get("/where")
    async def where() -> str:
        return str(await scoped.scalar(select(func.current_setting("application_name"))))

    return app


@needs_quart
async def test_a_pooled_replica_connection_whose_backend_ended_is_not_an_outage(
    proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica's pooled connection loses its backend between requests: the next read
    still goes to the replica (on a new connection), with no warning, every time."""

    caplog.set_level(logging.INFO, logger=REPLICAS)
    tag = uuid.uuid4().hex[:8]
    proxy.hold_close(HOLD)
    primary = engine_through(proxy, f"asse-primary-{tag}")
    replica = engine_through(proxy, f"asse-replica-{tag}")
    app = where_app(primary, replica)
    try:
        client = app.test_client()
        for request in range(REQUESTS + 1):
            if request:
                assert terminate(f"asse-replica-{tag}") == 1  # the pooled one, idle
                await asyncio.sleep(READ_IT)
            response = await client.get("/where")
            assert response.status_code == 200, request
            assert (await response.get_data(as_text=True)) == f"asse-replica-{tag}", request
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == []
        assert checked_out(primary) == checked_out(replica) == 0
    finally:
        await primary.dispose()
        await replica.dispose()


class BrokenCheckouts:
    """A pool ``checkout`` listener that fails the next *count* checkouts with asyncpg's
    ``InternalClientError``, as SQLAlchemy < 2.0.50's pre-ping does for a pooled connection
    whose backend ended: the pool invalidates the connection and raises the error as it is.
    On every SQLAlchemy, so that the replica's passing over them is tested on each."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.failed = 0

    def __call__(self, *args: object) -> None:
        if self.left > 0:
            self.left -= 1
            self.failed += 1
            raise importlib.import_module("asyncpg").InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )


@needs_quart
@pytest.mark.parametrize("broken", [3, 100])
async def test_a_replica_read_passes_over_broken_pooled_connections(
    broken: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A few broken pooled connections are passed over: the read stays on the replica. A
    replica whose every checkout fails so is taken for down after ``STALE_CHECKOUTS + 1``
    tries: the read goes to the primary, with the outage's one warning."""

    from async_scoped_session_ext._replica_routing import STALE_CHECKOUTS

    caplog.set_level(logging.INFO, logger=REPLICAS)
    tag = uuid.uuid4().hex[:8]
    url = postgres_url("asyncpg")
    primary, replica = (
        create_async_engine(url, connect_args={"server_settings": {"application_name": name}})
        for name in (f"asse-primary-{tag}", f"asse-replica-{tag}")
    )
    checkouts = BrokenCheckouts(broken)
    event.listen(replica.sync_engine.pool, "checkout", checkouts)
    app = where_app(primary, replica)
    try:
        response = await app.test_client().get("/where")
        assert response.status_code == 200
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        if broken <= STALE_CHECKOUTS:
            assert await response.get_data(as_text=True) == f"asse-replica-{tag}"
            assert (checkouts.failed, warnings) == (broken, [])
        else:
            assert await response.get_data(as_text=True) == f"asse-primary-{tag}"
            assert checkouts.failed == STALE_CHECKOUTS + 1
            assert len(warnings) == 1 and "InternalClientError" in warnings[0], warnings
        assert checked_out(primary) == checked_out(replica) == 0
    finally:
        await primary.dispose()
        await replica.dispose()
