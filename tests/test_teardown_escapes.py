"""The teardown's escape paths on PostgreSQL (asyncpg): a straggler task still inside an
operation is cancelled, and a close that hangs past the cancellation grace is invalidated.

Both are bounded by ``close_timeout``: the request ends within a few seconds, well before the
database or the network would have let the session go, and nothing is left checked out.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import logging

import pytest
from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from async_scoped_session_ext import async_scoped_session
from async_scoped_session_ext._close import _GRACE

from .support.databases import postgres_url, require_postgres
from .support.environment import QUART_MISSING
from .support.faultproxy import FaultProxy

pytest.importorskip("quart", reason=QUART_MISSING)

from quart import Quart

pytestmark = pytest.mark.postgres

TIMEOUT = 10.0  # seconds a whole request (and the test around it) may take
LOGGER = "async_scoped_session_ext"
CLOSE_TIMEOUT = 0.5  # the scoped sessions' close_timeout here
ASYNCPG_GRACEFUL_CLOSE = 2.0  # seconds SQLAlchemy lets asyncpg close a connection gracefully


def count_invalidations(engine: AsyncEngine) -> list[object]:
    """A list that grows by one each time the pool invalidates a connection of *engine*."""
    invalidated: list[object] = []

    def on_invalidate(dbapi_connection: object, record: object, error: object) -> None:
        invalidated.append(error)

    event.listen(engine.sync_engine, "invalidate", on_invalidate)
    return invalidated


# --- a task still inside an operation on the request's session is cancelled ------------------


@pytest.mark.parametrize("async_backend", ["asyncpg"])
async def test_teardown_cancels_a_task_still_using_the_session(
    async_engine: AsyncEngine,
) -> None:
    """A task still in a query when the request ends gets close_timeout, then is cancelled."""
    app = Quart(__name__)
    scoped = async_scoped_session(
        async_sessionmaker(async_engine), app, close_timeout=CLOSE_TIMEOUT
    )
    invalidated = count_invalidations(async_engine)
    stragglers: list[asyncio.Task[None]] = []
    sessions: list[AsyncSession] = []

    @app.get("/")
    async def view() -> str:
        sessions.append(scoped())
        started = asyncio.Event()

        async def straggler() -> None:
            started.set()
            await scoped.execute(text("select pg_sleep(5)"))

        stragglers.append(asyncio.create_task(straggler()))
        await started.wait()
        await asyncio.sleep(0.2)  # the query reaches the server
        return "ok"

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        began = loop.time()
        response = await app.test_client().get("/")
        took = loop.time() - began
        [task] = stragglers
        await asyncio.wait({task}, timeout=TIMEOUT)

    assert response.status_code == 200
    assert task.cancelled(), task
    assert CLOSE_TIMEOUT < took < CLOSE_TIMEOUT + 2.0, f"the request took {took:.2f} s"
    assert len(invalidated) == 1, "the cancelled query's connection was not invalidated"
    assert not sessions[0].in_transaction()
    assert len(scoped.registry) == 0
    assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# --- a close still hanging after the cancellation grace is invalidated -----------------------


@pytest.fixture
async def stalling() -> cabc.AsyncIterator[tuple[FaultProxy, AsyncEngine]]:
    """An asyncpg engine through a fault proxy; afterwards no connection may be checked out."""
    require_postgres()
    target = make_url(postgres_url("asyncpg"))
    with FaultProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = target.set(host=proxy.host, port=proxy.port)
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=TIMEOUT)
        try:
            yield proxy, engine
            assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
        finally:
            proxy.resume()
            await engine.dispose()


async def stalled_request(
    proxy: FaultProxy, engine: AsyncEngine, session_class: type[AsyncSession]
) -> tuple[int, float, async_scoped_session[AsyncSession]]:
    """A Quart request whose session began a transaction, then the network stalls: the
    response's status, how long the request took (its teardown's close included), and the
    scoped session."""
    app = Quart(__name__)
    scoped = async_scoped_session(
        async_sessionmaker(engine, class_=session_class), app, close_timeout=CLOSE_TIMEOUT
    )

    @app.get("/")
    async def view() -> str:
        await scoped.execute(text("select 1"))  # in a transaction: the close must roll back
        proxy.stall()  # a network partition: neither data nor a close gets through
        return "ok"

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        began = loop.time()
        response = await app.test_client().get("/")
        return response.status_code, loop.time() - began, scoped


async def test_close_hanging_past_the_grace_is_invalidated(
    stalling: tuple[FaultProxy, AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """A close the network stalls past close_timeout and the grace is invalidated, logged."""
    proxy, engine = stalling
    steps: list[str] = []

    class ObservedSession(AsyncSession):
        async def close(self) -> None:
            try:
                await super().close()
            except asyncio.CancelledError:
                steps.append("close cancelled")
                raise

        async def invalidate(self) -> None:
            steps.append("invalidate")
            await super().invalidate()

    invalidated = count_invalidations(engine)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        status, took, scoped = await stalled_request(proxy, engine, ObservedSession)

    assert status == 200
    # A cancellation ends the close, then the session is invalidated. Where the driver's
    # graceful close outlives the bound's first cancellation (asyncpg 0.32 with SQLAlchemy
    # 2.1 waits 2 s more), the grace's second one ends it; older versions end at the first.
    assert CLOSE_TIMEOUT <= took < CLOSE_TIMEOUT + ASYNCPG_GRACEFUL_CLOSE, took
    assert steps == ["close cancelled", "invalidate"], steps
    [warning] = [record for record in caplog.records if record.name == LOGGER]
    assert "took longer than" in warning.getMessage(), warning.getMessage()
    assert len(invalidated) >= 1
    assert len(scoped.registry) == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_close_outliving_its_first_cancellation_ends_at_the_grace(
    stalling: tuple[FaultProxy, AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """A close that outlives the bound's cancellation is cancelled again after the grace."""
    proxy, engine = stalling
    steps: list[str] = []

    class GracefulSession(AsyncSession):
        """A close that hangs, and outlives one cancellation as a graceful close may."""

        async def close(self) -> None:
            try:
                await asyncio.sleep(TIMEOUT)
            except asyncio.CancelledError:
                steps.append("first cancellation")
            try:
                await asyncio.sleep(TIMEOUT)
            except asyncio.CancelledError:
                steps.append("second cancellation")
                raise

        async def invalidate(self) -> None:
            steps.append("invalidate")
            await super().invalidate()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        status, took, scoped = await stalled_request(proxy, engine, GracefulSession)

    assert status == 200
    assert CLOSE_TIMEOUT + _GRACE <= took < CLOSE_TIMEOUT + ASYNCPG_GRACEFUL_CLOSE, took
    assert steps == ["first cancellation", "second cancellation", "invalidate"], steps
    assert any("took longer than" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert len(scoped.registry) == 0
