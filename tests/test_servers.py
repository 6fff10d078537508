"""Real servers on loopback: a threaded werkzeug server for Flask, hypercorn for Quart.

Every request overlaps with all the others (a barrier inside the view), so these tests prove
that concurrent requests get distinct sessions, keep them for the whole view, cannot see each
other's uncommitted rows, and give every connection back once they are done.
"""

from __future__ import annotations

import asyncio
import collections.abc as cabc
import threading
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from flask import Flask
from sqlalchemy import Engine, func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from async_scoped_session_ext import (
    async_scoped_session,
    current_session,
    flask_scoped_session,
)

from .support.environment import HAS_QUART, needs_quart
from .support.models import Todo
from .support.servers import serving_asgi, serving_wsgi

if HAS_QUART:  # Flask 2.3's compat cell has none; its tests are skipped there
    from quart import Quart

SYNC_CONCURRENCY = 8
ASYNC_CONCURRENCY = 48
TIMEOUT = 10.0  # seconds any single wait (barrier, HTTP request, pool checkout) may take


# --- servers -------------------------------------------------------------------------------


def http_client(base_url: str) -> httpx.AsyncClient:
    """An async client for loopback: no proxies from the environment, room for every request."""
    room = ASYNC_CONCURRENCY + 16
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=TIMEOUT,
        trust_env=False,
        limits=httpx.Limits(max_connections=room, max_keepalive_connections=room),
    )


# --- sync Flask on a threaded werkzeug server ----------------------------------------------


def count_todos(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Todo)) or 0


def test_threaded_werkzeug_requests_overlap_in_isolation(
    sync_backend: str, sync_engine: Engine
) -> None:
    """Eight overlapping requests on a threaded server each get their own session, closed after."""
    # SQLite locks the database for concurrent writers, so only PostgreSQL writes.
    writes = sync_backend == "postgresql"
    app = Flask(__name__)
    scoped = flask_scoped_session(sessionmaker(bind=sync_engine), app)
    barrier = threading.Barrier(SYNC_CONCURRENCY, timeout=TIMEOUT)
    lock = threading.Lock()
    sessions: dict[int, Session] = {}  # strong refs, so no id() can be reused

    @app.get("/work/<int:n>")
    def work(n: int) -> dict[str, object]:
        session: Session = current_session()
        with lock:
            sessions[n] = session
        resolves_to_scoped = current_session._get_current_object() is scoped
        session.execute(text("select 1"))
        if writes:
            session.add(Todo(title=f"request {n}"))
            session.flush()
        began = session.in_transaction()
        barrier.wait()  # every request is now inside its view, holding its session
        same = current_session() is session and scoped() is session
        titles = list(session.scalars(select(Todo.title)).all())
        return {
            "resolves_to_scoped": resolves_to_scoped,
            "began": began,
            "same": same,
            "titles": titles,
            "thread": threading.get_ident(),
        }

    def fetch(n: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=TIMEOUT, trust_env=False) as client:
            return client.get(f"/work/{n}")

    try:
        with (
            serving_wsgi(app) as base_url,
            ThreadPoolExecutor(max_workers=SYNC_CONCURRENCY) as pool,
        ):
            responses = list(pool.map(fetch, range(SYNC_CONCURRENCY), timeout=3 * TIMEOUT))
        check_sync_results(writes, scoped, sync_engine, sessions, responses)
    finally:
        # Were a teardown broken, the sessions would still hold locks that make the engine
        # fixture's drop_all wait forever; closing them turns that hang into a failure.
        for session in sessions.values():
            session.close()


def check_sync_results(
    writes: bool,
    scoped: flask_scoped_session[Session],
    sync_engine: Engine,
    sessions: dict[int, Session],
    responses: list[httpx.Response],
) -> None:
    """Every request overlapped in its own thread and session, now closed and returned."""
    assert [response.status_code for response in responses] == [200] * SYNC_CONCURRENCY
    bodies = [response.json() for response in responses]
    assert len({body["thread"] for body in bodies}) == SYNC_CONCURRENCY
    for n, body in enumerate(bodies):
        assert body["resolves_to_scoped"] is True
        assert body["began"] is True
        assert body["same"] is True, f"request {n} saw its session change"
        assert body["titles"] == ([f"request {n}"] if writes else [])
    assert sorted(sessions) == list(range(SYNC_CONCURRENCY))
    assert len({id(session) for session in sessions.values()}) == SYNC_CONCURRENCY
    for session in sessions.values():
        assert not session.in_transaction(), "a session was not closed at teardown"
        assert len(session.identity_map) == 0
    assert len(scoped.registry) == 0
    assert sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert count_todos(sync_engine) == 0


# --- Quart on hypercorn and on the test client ---------------------------------------------


class Gate:
    """An asyncio barrier for one batch: opens once *parties* callers have arrived."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.opened = asyncio.Event()

    async def arrive(self) -> None:
        """Wait (at most ``TIMEOUT`` seconds) until every party has arrived."""
        self.arrived += 1
        if self.arrived == self.parties:
            self.opened.set()
        await asyncio.wait_for(self.opened.wait(), TIMEOUT)


@dataclass
class QuartHarness:
    """A Quart app whose ``/work/<n>`` view records its session and waits at a gate."""

    app: Quart
    scoped: async_scoped_session[AsyncSession]
    engine: AsyncEngine
    writes: bool
    gate: Gate = field(default_factory=lambda: Gate(ASYNC_CONCURRENCY))
    sessions: dict[int, AsyncSession] = field(default_factory=dict)


@pytest.fixture
def application_name() -> str:
    """A PostgreSQL application_name unique to this test, to find its backends."""
    return f"asse-servers-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def wide_engine(
    async_backend: str, async_engine: AsyncEngine, application_name: str
) -> cabc.AsyncIterator[AsyncEngine]:
    """An engine on the fixture's database whose pool can lend every request a connection.

    Each request holds its connection across the gate, so the pool must hold
    ``ASYNC_CONCURRENCY`` at once; a short pool timeout turns a mistake into a failure, not
    a hang.
    """
    connect_args: dict[str, t.Any] = {}
    if async_backend == "asyncpg":
        connect_args = {"server_settings": {"application_name": application_name}}
    engine = create_async_engine(
        async_engine.url,
        pool_size=ASYNC_CONCURRENCY,
        max_overflow=0,
        pool_timeout=TIMEOUT,
        connect_args=connect_args,
    )
    try:
        yield engine
        assert engine.pool.checkedout() == 0, "a connection was left checked out"  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


@pytest.fixture
async def harness(async_backend: str, wide_engine: AsyncEngine) -> cabc.AsyncIterator[QuartHarness]:
    """The Quart app for the concurrency tests; only PostgreSQL writes (SQLite would lock).

    Afterwards every recorded session is closed, so a broken teardown fails the test instead
    of leaving locks that make the engine fixture's drop_all wait forever.
    """
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(wide_engine), app)
    harness = QuartHarness(app, scoped, wide_engine, writes=async_backend == "asyncpg")

    @app.get("/work/<int:n>")
    async def work(n: int) -> dict[str, object]:
        session: AsyncSession = current_session()
        harness.sessions[n] = session
        resolves_to_scoped = current_session._get_current_object() is scoped
        await session.execute(text("select 1"))
        if harness.writes:
            session.add(Todo(title=f"request {n}"))
            await session.flush()
        began = session.in_transaction()
        await harness.gate.arrive()  # every request is now inside its view
        same = current_session() is session and scoped() is session
        titles = list((await session.scalars(select(Todo.title))).all())
        return {
            "resolves_to_scoped": resolves_to_scoped,
            "began": began,
            "same": same,
            "titles": titles,
        }

    yield harness
    left_checked_out = wide_engine.pool.checkedout()  # type: ignore[attr-defined]
    for session in harness.sessions.values():
        await session.close()
    assert left_checked_out == 0, "a connection was left checked out"


async def get_all(transport: str, app: Quart, paths: list[str]) -> list[tuple[int, t.Any]]:
    """GET every path at once through hypercorn or Quart's test client: (status, JSON)."""
    async with asyncio.timeout(3 * TIMEOUT):
        if transport == "hypercorn":
            async with serving_asgi(app) as base_url, http_client(base_url) as client:
                responses = await asyncio.gather(*(client.get(path) for path in paths))
                return [(response.status_code, response.json()) for response in responses]
        test_client = app.test_client()
        test_responses = await asyncio.gather(*(test_client.get(path) for path in paths))
        return [(response.status_code, await response.get_json()) for response in test_responses]


async def idle_in_transaction(engine: AsyncEngine, application_name: str) -> tuple[int, int]:
    """(backends named *application_name*, those of them idle in transaction)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "select count(*), count(*) filter (where state = 'idle in transaction')"
                    " from pg_stat_activity where application_name = :name"
                ),
                {"name": application_name},
            )
        ).one()
    return int(row[0]), int(row[1])


@needs_quart
@pytest.mark.parametrize("transport", ["hypercorn", "test_client"])
async def test_quart_requests_overlap_in_isolation(
    transport: str,
    async_backend: str,
    async_engine: AsyncEngine,
    harness: QuartHarness,
    application_name: str,
) -> None:
    """48 overlapping Quart requests each keep their own session; all are closed after."""
    results = await get_all(
        transport, harness.app, [f"/work/{n}" for n in range(ASYNC_CONCURRENCY)]
    )

    assert [status for status, _ in results] == [200] * ASYNC_CONCURRENCY
    assert harness.gate.arrived == ASYNC_CONCURRENCY
    for n, (_, body) in enumerate(results):
        assert body["resolves_to_scoped"] is True
        assert body["began"] is True
        assert body["same"] is True, f"request {n} saw its session change"
        assert body["titles"] == ([f"request {n}"] if harness.writes else [])
    sessions = harness.sessions
    assert sorted(sessions) == list(range(ASYNC_CONCURRENCY))
    assert len({id(session) for session in sessions.values()}) == ASYNC_CONCURRENCY
    for session in sessions.values():
        assert not session.in_transaction(), "a session was not closed at teardown"
        assert len(session.sync_session.identity_map) == 0
    assert len(harness.scoped.registry) == 0
    assert harness.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    async with AsyncSession(async_engine) as check:
        assert await check.scalar(select(func.count()).select_from(Todo)) == 0
    if async_backend == "asyncpg":
        named, stuck = await idle_in_transaction(async_engine, application_name)
        if transport == "hypercorn":  # after serving, the app disposed the engine
            assert named == 0, f"{named} backends left open after serving"
        else:
            assert named > 0, "the application_name filter matched no backend"
        assert stuck == 0, f"{stuck} backends left idle in transaction"


@needs_quart
async def test_quart_view_error_over_hypercorn_rolls_back(async_engine: AsyncEngine) -> None:
    """A view that raises after flushing answers 500, commits nothing and returns its connection."""
    app = Quart(__name__)
    scoped = async_scoped_session(async_sessionmaker(async_engine), app)
    flushed: list[AsyncSession] = []

    @app.post("/boom")
    async def boom() -> str:
        current_session.add(Todo(title="half done"))
        await current_session.flush()
        flushed.append(current_session())
        raise ValueError("boom")

    try:
        async with (
            asyncio.timeout(3 * TIMEOUT),
            serving_asgi(app) as base_url,
            http_client(base_url) as client,
        ):
            response = await client.post("/boom")

        assert response.status_code == 500
        assert len(flushed) == 1, "the view did not reach its flush"
        assert not flushed[0].in_transaction()
        assert len(scoped.registry) == 0
        assert async_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        for session in flushed:  # see the harness fixture: no hang on a broken teardown
            await session.close()
    async with AsyncSession(async_engine) as check:
        assert await check.scalar(select(func.count()).select_from(Todo)) == 0
